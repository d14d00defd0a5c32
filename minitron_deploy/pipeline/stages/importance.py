"""The `importance` stage: activation importance of the parent model over the calibration data
(one forward pass; on several ranks under a launcher)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.importance import score_checkpoint
from minitron_deploy.compress.scores import save_scores
from minitron_deploy.data.refs import SplitName
from minitron_deploy.model.footprint import layer_sequential_peak_bytes
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage, here_auto


class ImportanceNode(NodeConfig):
    """Importance scores of the parent model."""

    importance: ImportanceConfig
    calibration: SplitName
    validation: SplitName | None = Field(
        None, description="held-out text for layer_loss_blocks rankings (None when unused)"
    )


def run(ctx: StageContext) -> dict[str, Any]:
    """Scores over the calibration rows; on several ranks (a launcher), each rank scores every
    world_size-th row and the fp32 accumulators are summed over ranks (all-reduce). The
    orchestration is `compress.importance.score_checkpoint`, shared with the `importance`
    command (one scores.json shape); this stage only sets up the ranks."""
    # torch.distributed at its module top: imported when the stage runs, not with the table
    from minitron_deploy.distill import distributed as dd

    c = ctx.config
    d = dd.setup()
    try:
        all_reduce = None
        if d.enabled:
            import torch.distributed as dist

            def all_reduce(tensors):
                for t in tensors:
                    dist.all_reduce(t)

        res = score_checkpoint(
            ctx.model_dir("model"),
            ctx.text("calibration"),
            c.importance,
            validation=ctx.text("validation") if c.validation is not None else None,
            device=str(d.device),
            rank=d.rank,
            world_size=d.world_size,
            all_reduce=all_reduce,
            progress=ctx.progress,
        )
    finally:
        dd.teardown(d)
    if ctx.rank == 0:  # an artifact's content is what it computed: its wall time goes to metrics
        save_scores(res.scores, ctx.out, {**res.meta, "seconds": None})
    return {
        "outputs": {"scores": "."},
        "metrics": {
            "samples": res.meta["samples"],
            "seq_len": res.meta["seq_len"],
            "ranks": d.world_size,
            "layer_sequential": res.meta["layer_sequential"],
        },
    }


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    """One forward over the calibration rows, and one per block position for each
    `layer_loss_blocks` k (with the LM head: a loss)."""
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    if s is None:
        return E.timed("importance", None, 1e6, gflops, dtype)
    imp = node.config.importance
    flops = E.fwd(s, imp.num_samples * imp.seq_len, imp.seq_len / 2, lm_head=False)
    for k in imp.layer_loss_blocks:
        runs = s.num_hidden_layers - k + 2
        flops += runs * E.fwd(s, imp.val_samples * imp.seq_len, imp.seq_len / 2)
    return E.timed("importance", flops, 1e6, gflops, dtype)


def peak(node: Any, shape: LlamaShape) -> int:
    """Least memory: the pass one decoder layer at a time over the calibration rows."""
    imp = node.config.importance
    return layer_sequential_peak_bytes(shape, imp.num_samples, imp.seq_len, imp.micro_batch)


STAGE = Stage(
    "importance",
    ImportanceNode,
    run,
    "Activation importance over the calibration data (one forward pass).",
    compute=here_auto,
    estimate=estimate,
    peak=peak,
    distributed=True,
    defaults="fill",
)
