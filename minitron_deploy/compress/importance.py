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

from typing import TYPE_CHECKING

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.layers import layer_loss_ranking
from minitron_deploy.compress.metrics import METRICS
from minitron_deploy.console import track
from minitron_deploy.errors import InputError
from minitron_deploy.model.shapes import LlamaShape

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM


def compute_importance(
    model: LlamaForCausalLM,
    batches: torch.Tensor,
    cfg: ImportanceConfig | None = None,
    val_batches: torch.Tensor | None = None,
    *,
    progress: bool = False,
    all_reduce=None,
) -> dict[str, torch.Tensor]:
    """Score every prunable unit of `model` in one forward-only pass over `batches`.

    Args:
        model: a `LlamaForCausalLM` (any dtype/device; scores are accumulated in fp32).
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
    shape = LlamaShape.from_config(model.config)
    dev = next(model.parameters()).device
    metrics = [m(shape, cfg, dev) for m in METRICS]
    hooks = []
    try:
        for m in metrics:
            hooks += m.attach(model)
        chunks = batches.split(cfg.micro_batch)
        if progress:
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
