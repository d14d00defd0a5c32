"""Depth: rank layers by validation loss with blocks removed, and choose the layers to drop.

`layer_loss_ranking` gives the validation LM loss with every contiguous block of K layers removed
(P2 removes the contiguous block that hurts least); `choose_drop_layers` turns a `PruneConfig`
into layer indices from explicit `drop_layers`, Block Importance scores, stored or fresh loss
rankings, or at random.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.compress.config import PruneConfig


def loss_key(k: int) -> str:
    """Score key of the loss ranking for blocks of `k` layers."""
    return f"layer_loss_drop{k}"


@contextlib.contextmanager
def without_layers(model: LlamaForCausalLM, drop: list[int] | set[int]):
    """`model` with the decoder layers in `drop` removed, restored on exit.

    Forward with `use_cache=False` inside (layer_idx is not renumbered).
    """
    import torch

    layers = model.model.layers
    n = model.config.num_hidden_layers
    keep = [m for i, m in enumerate(layers) if i not in set(drop)]
    model.model.layers = torch.nn.ModuleList(keep)
    model.config.num_hidden_layers = len(keep)
    try:
        yield model
    finally:
        model.model.layers = layers
        model.config.num_hidden_layers = n


def layer_loss_ranking(
    model: LlamaForCausalLM,
    val_batches: torch.Tensor,
    block_sizes: tuple[int, ...] | list[int] = (1,),
    micro_batch: int = 8,
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Validation LM loss with each contiguous block of K layers removed, for each K.

    Returns:
        {"base_loss": scalar, "layer_loss_drop{K}": [layers - K + 1] (entry i: layers i..i+K-1
        removed)}. Lower loss = the block matters less (P2 picks the lowest).
    """
    import torch

    from minitron_deploy.evaluation.loss import evaluate_loss

    n = len(model.model.layers)
    for k in block_sizes:
        if not 1 <= k < n:
            raise InputError(f"layer block size {k} must be between 1 and {n - 1}")
    jobs = [(k, start) for k in block_sizes for start in range(n - k + 1)]
    out = {"base_loss": torch.tensor(evaluate_loss(model, val_batches, micro_batch)["loss"])}
    losses: dict[int, list[float]] = {k: [] for k in block_sizes}
    it: Any = jobs
    if progress:
        from minitron_deploy.console import track

        it = track(jobs, "layer ranking", total=len(jobs))
    for k, start in it:
        with without_layers(model, set(range(start, start + k))):
            losses[k].append(evaluate_loss(model, val_batches, micro_batch)["loss"])
    for k, v in losses.items():
        out[loss_key(k)] = torch.tensor(v, dtype=torch.float32)
    return out


def layer_task_ranking(
    model: LlamaForCausalLM,
    tokenizer: Any,
    task: str,
    limit: int,
    k: int,
    *,
    progress: bool = False,
) -> list[float]:
    """Accuracy of an lm-eval task with each contiguous block of `k` layers removed (entry i:
    layers i..i+k-1 removed). Higher = the block matters less (P2 drops the highest)."""
    from minitron_deploy.evaluation.harness import evaluate_tasks, resolve_tasks

    n = len(model.model.layers)
    if not 1 <= k < n:
        raise InputError(f"layer block size {k} must be between 1 and {n - 1}")
    resolved = resolve_tasks([task])
    starts: Any = range(n - k + 1)
    if progress:
        from minitron_deploy.console import track

        starts = track(starts, f"layer ranking by {task}", total=n - k + 1)
    use_cache = model.config.use_cache
    model.config.use_cache = False  # layer_idx is not renumbered inside without_layers
    out = []
    try:
        for start in starts:
            with without_layers(model, set(range(start, start + k))):
                res = evaluate_tasks(model, tokenizer, [task], limit=limit, resolved=resolved)
            metrics = {
                m: v for t in res["tasks"].values() for m, v in t["metrics"].items()
            }  # one task (or a group's aggregate)
            acc = metrics.get("acc", metrics.get("acc_norm"))
            if acc is None:
                raise InputError(
                    f"task {task!r} reports no accuracy (metrics: {sorted(metrics)})",
                    fix="use a multiple-choice task for layer_metric task_accuracy",
                )
            out.append(float(acc))
    finally:
        model.config.use_cache = use_cache
    return out


def drop_count(cfg: PruneConfig, n_layers: int) -> int:
    """How many layers `cfg` removes from a model with `n_layers`."""
    if cfg.drop_layers is not None:
        return len(cfg.drop_layers)
    return 0 if cfg.num_layers is None else n_layers - cfg.num_layers


def depth_score_key(cfg: PruneConfig, n_layers: int) -> str | None:
    """The score key the depth choice reads, or None when it reads none."""
    k = drop_count(cfg, n_layers)
    if cfg.drop_layers is not None or k == 0 or cfg.selection == "random":
        return None
    if cfg.layer_metric == "task_accuracy":
        return None  # ranked by running the task, not read from scores
    if cfg.layer_metric == "block_importance":
        return "block_importance"
    return loss_key(k if cfg.layer_metric == "block_loss" else 1)


def choose_drop_layers(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor] | None,
    cfg: PruneConfig,
    val_batches: torch.Tensor | None = None,
    *,
    micro_batch: int = 8,
    progress: bool = False,
    tokenizer: Any = None,
) -> list[int]:
    """The layer indices to remove, from `cfg.drop_layers` or `cfg.num_layers` + metric
    (`tokenizer`: the model's, for layer_metric task_accuracy).

    Loss rankings come from the scores when they hold them (`importance --layer-loss-blocks`),
    else they are computed here on `val_batches`.
    """
    n = model.config.num_hidden_layers
    planned = planned_drop(cfg, n, scores)
    if planned is not None:
        return planned
    k = drop_count(cfg, n)
    if cfg.layer_metric == "task_accuracy":
        if tokenizer is None:
            raise InputError("layer_metric task_accuracy needs the model's tokenizer")
        task, limit = cfg.task_ranking
        accs = layer_task_ranking(model, tokenizer, task, limit, k, progress=progress)
        start = max(range(len(accs)), key=lambda i: (accs[i], -i))  # ties: the earliest block
        return list(range(start, start + k))
    key = depth_score_key(cfg, n)
    scores = scores or {}
    if key == "block_importance":
        raise InputError("layer_metric block_importance needs importance scores (--scores)")
    if key not in scores:
        if val_batches is None:
            raise InputError(
                f"layer_metric {cfg.layer_metric} needs validation losses ({key}) in the scores "
                "or validation data",
                fix="pass --data SRC (or compute scores with --layer-loss-blocks), or use "
                "--layer-metric block_importance",
            )
        block = int(key.removeprefix("layer_loss_drop"))
        scores = layer_loss_ranking(model, val_batches, (block,), micro_batch, progress=progress)
    return _from_losses(cfg, scores[key], k)


def _from_losses(cfg: PruneConfig, losses: torch.Tensor, k: int) -> list[int]:
    if cfg.layer_metric == "block_loss":
        start = int(losses.argmin())
        return list(range(start, start + k))
    return sorted(losses.argsort()[:k].tolist())


def planned_drop(
    cfg: PruneConfig, n: int, scores: dict[str, torch.Tensor] | None
) -> list[int] | None:
    """The layers to drop when no forward pass decides them (explicit `drop_layers`, nothing
    to drop, random, or a ranking the scores hold); None when they must be ranked on the
    model (loss on validation text, or a task). Streaming pruning needs no model for these."""
    import torch

    if cfg.drop_layers is not None:
        return list(cfg.drop_layers)
    k = drop_count(cfg, n)
    if k == 0:
        return []
    if cfg.selection == "random":
        g = torch.Generator().manual_seed(cfg.seed + 7)
        return sorted(torch.randperm(n, generator=g)[:k].tolist())
    key = depth_score_key(cfg, n)
    if key is None or not scores or key not in scores:
        return None
    if key == "block_importance":
        return sorted(scores[key].argsort()[:k].tolist())
    return _from_losses(cfg, scores[key], k)
