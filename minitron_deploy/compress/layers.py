"""Depth: rank layers by validation loss with blocks removed, and choose the layers to drop.

`layer_loss_ranking` gives the validation LM loss with every contiguous block of K layers removed
(P2 removes the contiguous block that hurts least); `choose_drop_layers` turns a `PruneConfig`
into layer indices from explicit `drop_layers`, at random, or by a depth metric of the table
`DEPTH_METRICS` (each declared once: name, help, what it reads, how it selects). The setting's
Literal, the CLI choices, the schema text and the checks are derived from that table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from minitron_deploy.console import track
from minitron_deploy.errors import InputError
from minitron_deploy.evaluation.harness import evaluate_tasks, resolve_tasks
from minitron_deploy.evaluation.loss import evaluate_loss

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM


class PruneConfig(Protocol):
    """What the depth choice reads of `compress.config.PruneConfig` (which imports this
    module's table, so it is named here by its shape)."""

    drop_layers: tuple[int, ...] | None
    num_layers: int | None
    layer_metric: str
    selection: str
    seed: int

    @property
    def task_ranking(self) -> tuple[str, int]: ...


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

    n = len(model.model.layers)
    for k in block_sizes:
        if not 1 <= k < n:
            raise InputError(f"layer block size {k} must be between 1 and {n - 1}")
    jobs = [(k, start) for k in block_sizes for start in range(n - k + 1)]
    out = {"base_loss": torch.tensor(evaluate_loss(model, val_batches, micro_batch)["loss"])}
    losses: dict[int, list[float]] = {k: [] for k in block_sizes}
    it: Any = jobs
    if progress:
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

    n = len(model.model.layers)
    if not 1 <= k < n:
        raise InputError(f"layer block size {k} must be between 1 and {n - 1}")
    resolved = resolve_tasks([task])
    starts: Any = range(n - k + 1)
    if progress:
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


# -- the depth-metric table ------------------------------------------------------------------
@dataclass
class DepthChoice:
    """What a depth metric's `select` reads: the source model, the importance scores (or None),
    how many layers to drop, the prune settings, validation rows (or None), the tokenizer."""

    model: Any
    scores: dict[str, torch.Tensor]
    k: int
    cfg: PruneConfig
    val_batches: torch.Tensor | None
    micro_batch: int
    progress: bool
    tokenizer: Any

    def losses(self, metric: DepthMetric) -> torch.Tensor:
        """The validation-loss ranking `metric` reads: stored with the scores when there, else
        computed here on the validation rows."""
        key = metric.key(self.k)
        if key in self.scores:
            return self.scores[key]
        if self.val_batches is None:
            raise InputError(
                f"layer_metric {metric.name} needs validation losses ({key}) in the scores "
                "or validation data",
                fix="pass --data SRC (or compute scores with --layer-loss-blocks), or use "
                "--layer-metric block_importance",
            )
        block = metric.loss_block(self.k)
        return layer_loss_ranking(
            self.model, self.val_batches, (block,), self.micro_batch, progress=self.progress
        )[key]


@dataclass(frozen=True)
class DepthMetric:
    """One way to choose the layers to drop (`PruneConfig.layer_metric`).

    Attributes:
        name: the setting's value (`--layer-metric NAME`, profiles' `prune.layer_metric`).
        help: one line for `--help`, the schema and the README.
        reads: "scores" (an importance score key, computed by `importance`), "validation" (a
            loss ranking: stored by `importance --layer-loss-blocks`, else computed on
            validation text while pruning) or "task" (runs an lm-eval task while pruning).
        select: `select(choice) -> layer indices to drop` (`DepthChoice`).
        key: `key(k) -> the score key read when dropping k layers` (None: reads none).
        loss_block: `loss_block(k) -> block size of the loss ranking` (loss metrics; for the
            cost estimate and for ranking here).
    """

    name: str
    help: str
    reads: Literal["scores", "validation", "task"]
    select: Callable[[DepthChoice], list[int]]
    key: Callable[[int], str | None] = lambda k: None
    loss_block: Callable[[int], int] = lambda k: k

    @property
    def ranks_by_loss(self) -> bool:
        return self.reads == "validation"


def _lowest(values: torch.Tensor, k: int) -> list[int]:
    """The k indices with the lowest values, sorted."""
    return sorted(values.argsort()[:k].tolist())


def _best_block(values: torch.Tensor, k: int) -> list[int]:
    """Layers start..start+k-1 of the block whose entry is lowest (ties: the earliest)."""
    start = int(values.argmin())
    return list(range(start, start + k))


def _select_block_loss(c: DepthChoice) -> list[int]:
    return _best_block(c.losses(BLOCK_LOSS), c.k)


def _select_single_loss(c: DepthChoice) -> list[int]:
    return _lowest(c.losses(SINGLE_LOSS), c.k)


def _select_block_importance(c: DepthChoice) -> list[int]:
    if "block_importance" not in c.scores:
        raise InputError("layer_metric block_importance needs importance scores (--scores)")
    return _lowest(c.scores["block_importance"], c.k)


def _select_task_accuracy(c: DepthChoice) -> list[int]:
    if c.tokenizer is None:
        raise InputError("layer_metric task_accuracy needs the model's tokenizer")
    task, limit = c.cfg.task_ranking
    accs = layer_task_ranking(c.model, c.tokenizer, task, limit, c.k, progress=c.progress)
    start = max(range(len(accs)), key=lambda i: (accs[i], -i))  # ties: the earliest block
    return list(range(start, start + c.k))


BLOCK_LOSS = DepthMetric(
    "block_loss",
    "the contiguous block whose removal hurts validation loss least (P2)",
    "validation",
    _select_block_loss,
    key=loss_key,
)
SINGLE_LOSS = DepthMetric(
    "single_loss",
    "the individually least harmful layers (validation loss with one layer removed)",
    "validation",
    _select_single_loss,
    key=lambda k: loss_key(1),
    loss_block=lambda k: 1,
)
DEPTH_METRICS: dict[str, DepthMetric] = {
    m.name: m
    for m in (
        BLOCK_LOSS,
        SINGLE_LOSS,
        DepthMetric(
            "block_importance",
            "the lowest Block Importance layers, 1 - cos(layer input, output) (reference code)",
            "scores",
            _select_block_importance,
            key=lambda k: "block_importance",
        ),
        DepthMetric(
            "task_accuracy",
            "the contiguous block whose removal keeps `layer_task`'s accuracy highest (P2's "
            "Winogrande choice, through lm-evaluation-harness)",
            "task",
            _select_task_accuracy,
        ),
    )
}


def depth_score_key(cfg: PruneConfig, n_layers: int) -> str | None:
    """The score key the depth choice reads, or None when it reads none."""
    k = drop_count(cfg, n_layers)
    if cfg.drop_layers is not None or k == 0 or cfg.selection == "random":
        return None
    return DEPTH_METRICS[cfg.layer_metric].key(k)


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
    """The layer indices to remove, from `cfg.drop_layers` or `cfg.num_layers` + the depth
    metric `cfg.layer_metric` (`DEPTH_METRICS`; `tokenizer`: the model's, for task_accuracy).

    Loss rankings come from the scores when they hold them (`importance --layer-loss-blocks`),
    else they are computed here on `val_batches`.
    """
    n = model.config.num_hidden_layers
    planned = planned_drop(cfg, n, scores)
    if planned is not None:
        return planned
    k = drop_count(cfg, n)
    choice = DepthChoice(model, scores or {}, k, cfg, val_batches, micro_batch, progress, tokenizer)
    return DEPTH_METRICS[cfg.layer_metric].select(choice)


def planned_drop(
    cfg: PruneConfig, n: int, scores: dict[str, torch.Tensor] | None
) -> list[int] | None:
    """The layers to drop when no forward pass decides them (explicit `drop_layers`, nothing
    to drop, random, a metric that reads the scores, or a loss ranking the scores hold); None
    when they must be ranked on the model (loss on validation text, or a task). Streaming
    pruning (`stream_prune`) needs no model for these."""
    import torch

    if cfg.drop_layers is not None:
        return list(cfg.drop_layers)
    k = drop_count(cfg, n)
    if k == 0:
        return []
    if cfg.selection == "random":
        g = torch.Generator().manual_seed(cfg.seed + 7)
        return sorted(torch.randperm(n, generator=g)[:k].tolist())
    metric = DEPTH_METRICS[cfg.layer_metric]
    stored = metric.reads == "validation" and bool(scores) and metric.key(k) in scores
    if metric.reads != "scores" and not stored:
        return None
    choice = DepthChoice(None, scores or {}, k, cfg, None, 1, False, None)
    return metric.select(choice)
