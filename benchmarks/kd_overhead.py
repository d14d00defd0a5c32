"""Overhead of a KD training step, and peak memory of the chunked KL vs full logits.

1. Time. Variants interleaved in one process, warmed up, repeated (medians reported):
       student_step   student(ids, labels=ids).loss -> backward -> AdamW step (stock HF CE)
       teacher_fwd    teacher(ids).logits under no_grad (stock HF forward with lm_head)
       kd_step        teacher body + KDModule (fused chunked KL) -> backward -> AdamW step
   ratio = kd_step / (student_step + teacher_fwd). Target <= 1.10.
2. Memory of the logit loss alone at vocab 49152 (SmolLM2), forward + backward, fused chunked
   vs naive full-logit autograd. Each variant runs in a fresh subprocess and reports the rise
   of peak RSS (ru_maxrss) over its inputs (or torch.cuda peak bytes on a GPU). Target <= 0.5.

Shapes: teacher = SmolLM2-135M, student = its width-pruned shape (hidden 384, FFN 1024,
6 heads / 3 KV); random weights (timing and memory do not depend on the values). By default both
keep 6 of the 30 layers so a run fits in ~3 minutes on 2 CPU cores; fewer layers make the
logit loss a larger share of the step, so the time ratio is a harsher test.

    .venv/bin/python benchmarks/kd_overhead.py                 # 2x128 tokens, 6 layers, 5 reps
    .venv/bin/python benchmarks/kd_overhead.py --layers 0 --batch 4 --seq-len 256 --reps 7

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitron_deploy.model.shapes import KNOWN_SHAPES  # noqa: E402

TEACHER = {**KNOWN_SHAPES["smollm2-135m"], "rope_scaling": None}
STUDENT = {**TEACHER, "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6}


def _mem_child(variant: str, tokens: int, chunk: int) -> None:
    """Run one logit loss fwd+bwd and print the peak memory rise in bytes."""
    import resource

    import torch

    from minitron_deploy.distill.losses import fused_logit_loss, naive_logit_loss

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    v, hs, ht = TEACHER["vocab_size"], STUDENT["hidden_size"], TEACHER["hidden_size"]
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(tokens, hs, generator=g).to(dev).requires_grad_()
    w_s = (0.02 * torch.randn(v, hs, generator=g)).to(dev).requires_grad_()
    h_t = torch.randn(tokens, ht, generator=g).to(dev)
    w_t = (0.02 * torch.randn(v, ht, generator=g)).to(dev)
    small = [x[:8].detach() for x in (h_s, h_t)]  # warm up kernels/allocator on a tiny input
    fused_logit_loss(small[0], w_s.detach(), small[1], w_t, chunk_tokens=4)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # resident now (not the setup's peak): every block >= 64 KiB is mmapped, see parent
        import os

        with open("/proc/self/statm") as f:
            base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if variant == "fused":
        loss = fused_logit_loss(h_s, w_s, h_t, w_t, chunk_tokens=chunk).total
    else:
        loss = naive_logit_loss(h_s, w_s, h_t, w_t).total
    loss.backward()
    if dev == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"variant": variant, "peak_rise_bytes": peak - base, "loss": loss.item()}))


def _memory(tokens: int, chunk: int) -> dict:
    import os

    # Make glibc return every freed block >= 64 KiB to the OS, so RSS tracks live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = {}
    for variant in ("naive", "fused"):
        r = subprocess.run(
            [sys.executable, __file__, "--mem-child", variant, "--tokens", str(tokens),
             "--chunk", str(chunk)],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        out[variant] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def _timing(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.distill.student import KDModule, teacher_forward
    from minitron_deploy.testing import tiny_config

    torch.manual_seed(0)
    layers = {"num_hidden_layers": args.layers} if args.layers else {}
    teacher = LlamaForCausalLM(tiny_config(**{**TEACHER, **layers})).eval().requires_grad_(False)
    student = LlamaForCausalLM(tiny_config(**{**STUDENT, **layers})).train()
    kd = KDModule(student, None, [], False, dict(chunk_tokens=args.chunk))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, foreach=False)
    ids = torch.randint(0, TEACHER["vocab_size"], (args.batch, args.seq_len))

    def student_step():
        student(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_fwd():
        with torch.no_grad():
            teacher(input_ids=ids, use_cache=False).logits.sum()

    def kd_step():
        to = teacher_forward(teacher, ids, [], False, False)
        kd(ids, None, teacher.lm_head.weight, to)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fns = {"student_step": student_step, "teacher_fwd": teacher_fwd, "kd_step": kd_step}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(args.warmup + args.reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--layers", type=int, default=6, help="decoder layers of both models (0 = SmolLM2's 30)"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=256, help="tokens per KL chunk")
    ap.add_argument("--mem-tokens", type=int, default=2048, help="tokens for the memory test")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--only", choices=["time", "memory"], help="run one of the two parts")
    ap.add_argument("--mem-child", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        return _mem_child(args.mem_child, args.tokens, args.chunk)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"benchmark": "kd_overhead", "device": "cpu"}
    if torch.cuda.is_available():
        result["device"] = "cuda"
    if args.only != "memory":
        med = _timing(args)
        ratio = med["kd_step"] / (med["student_step"] + med["teacher_fwd"])
        for k, v in med.items():
            print(f"{k:<13} median {v * 1e3:8.1f} ms")
        print(f"time ratio kd_step / (student_step + teacher_fwd) = {ratio:.3f}  (target <= 1.10)")
        result.update(
            tokens_per_step=args.batch * args.seq_len,
            layers=args.layers or TEACHER["num_hidden_layers"],
            median_s=med,
            time_ratio=round(ratio, 4),
        )
    if args.only != "time":
        mem = _memory(args.mem_tokens, args.chunk)
        mratio = mem["fused"]["peak_rise_bytes"] / mem["naive"]["peak_rise_bytes"]
        for k, v in mem.items():
            print(f"logit loss {k:<6} peak rise {v['peak_rise_bytes'] / 2**20:8.1f} MiB")
        print(f"memory ratio fused chunked / naive at vocab 49152 = {mratio:.3f}  (target <= 0.5)")
        result.update(
            mem_tokens=args.mem_tokens,
            kl_chunk_tokens=args.chunk,
            mem_peak_rise_bytes={k: v["peak_rise_bytes"] for k, v in mem.items()},
            mem_ratio=round(mratio, 4),
            loss_abs_diff=abs(mem["fused"]["loss"] - mem["naive"]["loss"]),
        )
    from minitron_deploy.hardware import processor

    result["processor"] = processor()
    print(f"processor: {result['processor']['summary']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
