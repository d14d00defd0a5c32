"""Per-GPU memory planner for distillation with an FSDP2 student and a layer-sharded teacher.

A first-order estimate meant to show an OOM before a cluster job hits it. It counts fp32
sharded master weights, gradients and AdamW moments (16 bytes per student parameter / world),
bf16 gathered copies of the units being computed, the bf16 teacher, saved activations (bf16,
flash/SDPA attention so no seq^2 term), the chunked-KL working set and a fixed CUDA overhead.
Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minitron_deploy.model.io import read_config
from minitron_deploy.model.shapes import KNOWN_SHAPES, LlamaShape

GIB = 1024**3
CUDA_OVERHEAD = int(1.5 * GIB)  # context, cuBLAS/NCCL workspaces
FRAGMENTATION = 0.10

# Shapes from the papers (method.md), so plans work without the checkpoints at hand.
PRESETS = {k: v for k, v in KNOWN_SHAPES.items() if k.startswith("llama-3.1")}


def as_shape(ref: LlamaShape | dict[str, Any] | str | Path) -> LlamaShape:
    """A shape from a LlamaShape, a config dict, a preset name or a checkpoint folder."""
    if isinstance(ref, LlamaShape):
        return ref
    if isinstance(ref, dict):
        return LlamaShape.from_config(ref)
    if str(ref) in PRESETS:
        return LlamaShape.from_config(PRESETS[str(ref)])

    return LlamaShape.from_config(read_config(ref))


def _activation_bytes_per_token_layer(s: LlamaShape) -> int:
    """bf16 tensors a decoder layer saves for backward, per token (SwiGLU, SDPA attention)."""
    h, q, kv, f = s.hidden_size, s.num_attention_heads * s.head_dim, s.num_key_value_heads, 0
    f = s.intermediate_size
    kv = kv * s.head_dim
    # norms in/out (4h), residuals (2h), q,k,v, attention out, o_proj in, gate, up, act, down in
    return 2 * (6 * h + 3 * q + 2 * kv + 4 * f)


def estimate_memory(
    teacher_shape: LlamaShape | dict[str, Any] | str | Path,
    student_shape: LlamaShape | dict[str, Any] | str | Path,
    world_size: int,
    micro_batch: int,
    seq_len: int,
    *,
    gpu_memory_gb: float = 80.0,
    gradient_checkpointing: bool = False,
    kl_chunk_tokens: int = 1024,
    teacher_sharded: bool = True,
) -> dict[str, Any]:
    """Estimate the peak memory of one GPU during a distillation step.

    Args:
        teacher_shape: teacher as LlamaShape, config dict, preset name or checkpoint folder.
        student_shape: student, same forms.
        world_size: number of GPUs (FSDP2 shards the student over all of them).
        micro_batch: sequences per forward on one GPU.
        seq_len: tokens per sequence.
        gpu_memory_gb: memory of one GPU in GB (as marketed: 80 means an 80 GB card).
        gradient_checkpointing: keep only each layer's input; recompute in backward.
        kl_chunk_tokens: token chunk of the fused logit loss.
        teacher_sharded: the teacher's decoder layers are sharded as the trainer does (its
            embeddings and lm_head stay whole; two gathered layers in flight); False = the
            whole bf16 teacher on every GPU.

    Returns:
        {"components": {name: bytes}, "total_bytes", "total_gib", "gpu_gib", "fits",
        "headroom_gib", "assumptions"}.
    """
    t, s = as_shape(teacher_shape), as_shape(student_shape)
    w = max(1, int(world_size))
    tokens = micro_batch * seq_len
    ps, pt = s.num_parameters, t.num_parameters
    emb_s = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
    emb_t = t.vocab_size * t.hidden_size * (1 if t.tie_word_embeddings else 2)
    act_layer = _activation_bytes_per_token_layer(s) * tokens
    if gradient_checkpointing:
        acts = s.num_hidden_layers * tokens * s.hidden_size * 2 + act_layer
    else:
        acts = s.num_hidden_layers * act_layer
    f32 = 4
    comp = {
        "student_master_fp32": f32 * ps // w,
        "student_grads_fp32": f32 * ps // w,
        "adamw_moments_fp32": 2 * f32 * ps // w,
        "student_gathered_bf16": 2 * (emb_s + 2 * s.params_per_layer),
        "teacher_bf16": 2 * (pt - emb_t) // w + 2 * emb_t + (4 * t.params_per_layer if w > 1 else 0)
        if teacher_sharded
        else 2 * pt,
        "student_activations_bf16": acts,
        "teacher_forward_bf16": tokens * 2 * (4 * t.hidden_size + 2 * t.intermediate_size),
        "kd_logit_chunk_fp32": 5 * f32 * min(kl_chunk_tokens, tokens) * s.vocab_size,
        "kd_lm_head_fp32": f32 * s.vocab_size * (2 * s.hidden_size + t.hidden_size),
        "cuda_overhead": CUDA_OVERHEAD,
    }
    subtotal = sum(comp.values())
    comp["fragmentation"] = int(FRAGMENTATION * subtotal)
    total = subtotal + comp["fragmentation"]
    gpu = gpu_memory_gb * 1e9 / GIB
    return {
        "teacher": t.as_dict(),
        "student": s.as_dict(),
        "world_size": w,
        "micro_batch": micro_batch,
        "seq_len": seq_len,
        "components": comp,
        "total_bytes": total,
        "total_gib": round(total / GIB, 2),
        "gpu_gib": round(gpu, 2),
        "fits": total / GIB <= gpu,
        "headroom_gib": round(gpu - total / GIB, 2),
        "assumptions": "FSDP2 student (fp32 master+grads+AdamW sharded, bf16 compute), "
        f"{'layer-sharded' if teacher_sharded else 'replicated'} bf16 teacher, SDPA attention, "
        f"{FRAGMENTATION:.0%} fragmentation, {CUDA_OVERHEAD / GIB:.1f} GiB CUDA overhead",
    }


def format_estimate(est: dict[str, Any]) -> str:
    """A short human-readable table of an estimate."""
    lines = [
        f"per-GPU memory, world_size={est['world_size']}, micro_batch={est['micro_batch']}, "
        f"seq_len={est['seq_len']}:"
    ]
    for k, v in est["components"].items():
        lines.append(f"  {k:<26} {v / GIB:8.2f} GiB")
    verdict = "fits" if est["fits"] else "DOES NOT FIT"
    lines.append(f"  {'total':<26} {est['total_gib']:8.2f} GiB of {est['gpu_gib']:.2f} ({verdict})")
    return "\n".join(lines)


def dumps(est: dict[str, Any]) -> str:
    """The estimate as one JSON line."""
    return json.dumps(est)
