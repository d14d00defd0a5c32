"""Activation-based importance of heads, KV groups, MLP neurons, embedding channels and layers.

One forward-only pass of the decoder (no lm_head) over calibration sequences, with every metric
of `metrics.METRICS` attached as hooks. Scores (all float32, keys of the returned dict):

    head          [layers, heads]     L2 over head_dim of the o_proj-input channel scores
    kv_group      [layers, kv_heads]  L2 over all channels of the group's query heads
    mlp           [layers, ffn]       gate_proj output (paper) or down_proj input (reference code)
    hidden        [hidden]            RMSNorm output scores summed over layers
    block_importance [layers]         mean over tokens of 1 - cos(layer input, layer output)
    layer_loss_drop{K} [layers-K+1]   (optional) validation loss with layers i..i+K-1 removed
    base_loss     []                  (optional) validation loss of the unpruned model
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.scores import META_FORMAT
from minitron_deploy.console import info
from minitron_deploy.errors import ConfigError, InputError
from minitron_deploy.fsutil import sha256_tree
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import PROVENANCE, load_llama, read_config
from minitron_deploy.model.layerwise import LayerwiseLlama, choose, memory_estimate

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.shards import Split


def compute_importance(
    model: LlamaForCausalLM | LayerwiseLlama,
    batches: torch.Tensor,
    cfg: ImportanceConfig | None = None,
    val_batches: torch.Tensor | None = None,
    *,
    progress: bool = False,
    all_reduce=None,
) -> dict[str, torch.Tensor]:
    """Score every prunable unit of `model` in one forward-only pass over `batches`.

    Args:
        model: a `LlamaForCausalLM` (any dtype/device; scores are accumulated in fp32), or a
            `LayerwiseLlama` (one decoder layer in memory at a time; same scores bitwise).
        batches: int64 token ids [N, L] (this rank's share when data parallel).
        cfg: aggregation options; defaults to `ImportanceConfig()`.
        val_batches: validation token ids [M, L']; required when `cfg.layer_loss_blocks` is set
            (adds `base_loss` and `layer_loss_drop{K}`).
        progress: show a progress bar on stderr.
        all_reduce: sums a list of tensors over data-parallel ranks in place (None: one rank).

    Returns:
        dict of float32 CPU tensors, see the module docstring.
    """
    import torch

    from minitron_deploy.compress.layers import layer_loss_ranking
    from minitron_deploy.compress.metrics import METRICS
    from minitron_deploy.model.shapes import LlamaShape

    cfg = cfg or ImportanceConfig()
    if batches.ndim != 2 or batches.shape[0] == 0:
        raise InputError(
            f"calibration batches must be [N, L] with N > 0, got {tuple(batches.shape)}"
        )
    if cfg.layer_loss_blocks and val_batches is None:
        raise InputError(
            f"layer_loss_blocks={list(cfg.layer_loss_blocks)} needs validation data",
            fix="give validation data, or drop layer_loss_blocks",
        )
    layerwise = isinstance(model, LayerwiseLlama)
    if layerwise and cfg.layer_loss_blocks:
        raise InputError(
            f"layer_loss_blocks={list(cfg.layer_loss_blocks)} needs the whole model in memory "
            "(loss rankings are not computed layer-sequentially)",
            where="importance.layer_loss_blocks",
            fix="drop layer_loss_blocks (rank layers by block_importance, or let `prune` rank "
            "them), or set layer_sequential: false on a host where the model fits",
        )
    net = model.model if layerwise else model
    shape = LlamaShape.from_config(net.config)
    dev = torch.device("cpu") if layerwise else next(net.parameters()).device
    metrics = [m(shape, cfg, dev) for m in METRICS]
    hooks = []
    try:
        for m in metrics:
            hooks += m.attach(net)
        chunks = batches.split(cfg.micro_batch)
        if layerwise:
            # Same micro-batches, one decoder layer at a time: the hooks see the same tensors.
            model.decoder_pass(chunks, progress="importance (by layer)" if progress else None)
        else:
            if progress:
                from minitron_deploy.console import track

                chunks = track(chunks, "importance", total=len(chunks))
            with torch.inference_mode():
                for chunk in chunks:
                    # The base model only: logits are not needed for activation statistics.
                    model.model(input_ids=chunk.to(dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    n = None
    if all_reduce is not None:
        counts = torch.tensor([float(batches.shape[0])], dtype=torch.float64, device=dev)
        all_reduce([t for m in metrics for t in m.state()] + [counts])
        n = int(counts.item())
    scores: dict[str, torch.Tensor] = {}
    for m in metrics:
        scores.update(m.scores(n))
    if cfg.layer_loss_blocks:
        scores.update(
            layer_loss_ranking(
                model, val_batches, cfg.layer_loss_blocks, cfg.micro_batch, progress=progress
            )
        )
    return {k: v.detach().float().cpu().contiguous() for k, v in scores.items()}


@dataclass
class ScoredCheckpoint:
    """What `score_checkpoint` returns: the scores, their provenance, and for later whole-model
    work (sensitivity) the loaded model and the validation rows (None when layer-sequential)."""

    scores: dict[str, torch.Tensor]
    meta: dict[str, Any]
    model: LlamaForCausalLM | None = None
    val: torch.Tensor | None = None


def score_checkpoint(
    model_dir: str | Path,
    calibration: Split,
    cfg: ImportanceConfig,
    *,
    validation: Split | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    all_reduce=None,
    keep_model: bool = False,
    progress: bool = False,
    command: str | None = None,
) -> ScoredCheckpoint:
    """Importance scores of the checkpoint `model_dir`: the one orchestration behind
    `minitron-deploy importance` and the pipeline's importance stage.

    Reads `cfg.num_samples` x `cfg.seq_len` calibration rows (this rank scores every
    `world_size`-th row; `all_reduce` sums the accumulators over ranks), loads the model whole or
    runs it one decoder layer at a time (`cfg.layer_sequential`; auto: by `layerwise.choose`),
    and returns the scores with one provenance record (`meta`, format `META_FORMAT`).

    Raises:
        InputError: too few rows for the ranks; loss rankings or `keep_model` asked for
            layer-sequentially; a model that fits in memory not even layer by layer.
    """
    import torch

    rows = calibration.rows(cfg.num_samples, cfg.seq_len, cfg.seed)
    val = None
    if validation is not None and (cfg.layer_loss_blocks or keep_model):
        val = validation.rows(cfg.val_samples, cfg.seq_len, cfg.seed)
    if rows.shape[0] < world_size:
        raise ConfigError(
            f"{rows.shape[0]} calibration rows for {world_size} ranks",
            where="importance.num_samples",
            fix="raise num_samples, or run importance with fewer ranks (launcher.stages)",
        )
    torch_dtype = compute_dtype(dtype, torch.device(device).type)
    raw = read_config(model_dir)
    wbytes = torch.finfo(torch_dtype).bits // 8
    estimate = memory_estimate(
        raw,
        weight_bytes=wbytes,
        rows=-(-rows.shape[0] // world_size),
        seq_len=int(rows.shape[1]),
        micro_batch=cfg.micro_batch,
        state_bytes=wbytes,
    )
    layerwise, why = choose(cfg.layer_sequential, estimate)
    if layerwise and keep_model:
        raise InputError(
            "the sensitivity table needs the whole model in memory, but importance runs "
            f"layer-sequentially here ({why})",
            fix="drop --sensitivity, or set --layer-sequential false on a host where it fits",
        )
    if progress:
        info(f"importance: {why}")
    t0 = time.perf_counter()
    if layerwise:
        model: Any = LayerwiseLlama(model_dir, dtype=torch_dtype)
    else:
        model = load_llama(model_dir, dtype=torch_dtype, device=device)
    mine = rows[rank::world_size]
    scores = compute_importance(
        model, mine, cfg, val_batches=val, progress=progress, all_reduce=all_reduce
    )
    meta = {
        "format": META_FORMAT,
        "model": {  # hashed where the scores are written (rank 0): 16 GB take a while
            "path": str(model_dir),
            "sha256": sha256_tree(model_dir, exclude=(PROVENANCE,)) if rank == 0 else None,
        },
        "calibration": calibration.describe(),
        "validation": validation.describe() if val is not None else None,
        "samples": int(rows.shape[0]),
        "seq_len": int(rows.shape[1]),
        "val_samples": int(val.shape[0]) if val is not None else 0,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "config": cfg.model_dump(mode="json"),
        "layer_sequential": layerwise,
        "ranks": world_size,
        "seconds": round(time.perf_counter() - t0, 2),
        "command": command,
    }
    return ScoredCheckpoint(scores, meta, None if layerwise else model, val)
