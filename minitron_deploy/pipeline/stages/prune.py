"""The `prune` stage: width and depth pruning of the parent model to the target shape, with its
importance scores."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import DEPTH_METRICS, drop_count
from minitron_deploy.compress.plan import plan_prune
from minitron_deploy.compress.slicing import prune_checkpoint
from minitron_deploy.data.refs import SplitName
from minitron_deploy.model.footprint import streamed_peak_bytes
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage, model_link


class PruneNode(NodeConfig):
    """Width/depth pruning of the parent model with its importance scores."""

    prune: PruneConfig
    validation: SplitName | None = Field(
        None, description="held-out text to rank layers by loss (None when unused)"
    )


def run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    record = prune_checkpoint(
        ctx.model_dir("model"),
        ctx.out / "model",
        c.prune,
        scores_path=ctx.inputs["scores"].content,
        val_data=ctx.text("validation") if c.validation is not None else None,
        command=f"pipeline {ctx.node_id}",
        progress=ctx.progress,
    )
    keep = ("params_before", "params_after", "target_shape", "dropped_layers")
    return {"outputs": {"model": "model"}, "metrics": {k: record.get(k) for k in keep}}


def _flops(c: Any, s: LlamaShape | None) -> float | None:
    """Ranking layers by loss (when the node does it): one full forward, then one per block
    position with k layers left out."""
    if s is None or c.validation is None:
        return 0.0 if s is not None else None
    n, seq = c.prune.ranking_rows
    k = max(drop_count(c.prune, s.num_hidden_layers), 1)
    k = DEPTH_METRICS[c.prune.layer_metric].loss_block(k)  # the depth-metric table's block
    runs = s.num_hidden_layers - k + 1  # every block position, each without k layers
    kept = s.num_hidden_layers - k
    full = E.fwd(s, n * seq, seq / 2)
    body = E.fwd(s, n * seq, seq / 2, lm_head=False)
    head = full - body
    return full + runs * (kept * body / s.num_hidden_layers + head)


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    size = None
    if s is not None:
        target = s
        if node.config.prune is not None:
            target = plan_prune(s, node.config.prune).target  # the one PrunePlan
        size = E.checkpoint_bytes(target)
    return E.timed("prune", _flops(node.config, s), size, gflops, dtype)


def peak(node: Any, shape: LlamaShape) -> int:
    """Least memory: streamed tensor by tensor (no read-back)."""
    return streamed_peak_bytes(shape, read_back=False)


STAGE = Stage(
    "prune",
    PruneNode,
    run,
    "Width and depth pruning to the target shape.",
    links=model_link,
    estimate=estimate,
    peak=peak,
    defaults="merge",
)
