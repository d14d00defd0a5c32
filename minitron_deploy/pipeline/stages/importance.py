"""The `importance` stage: activation importance of the parent model over the calibration data
(one forward pass; on several ranks under a launcher)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.importance import compute_importance
from minitron_deploy.compress.scores import save_scores
from minitron_deploy.data.refs import SplitName
from minitron_deploy.errors import ConfigError
from minitron_deploy.fsutil import sha256_tree
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import PROVENANCE, load_llama
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
    world_size-th row and the fp32 accumulators are summed over ranks (all-reduce)."""
    # torch.distributed at its module top: imported when the stage runs, not with the table
    from minitron_deploy.distill import distributed as dd

    c = ctx.config
    imp = c.importance
    model_dir = ctx.model_dir("model")
    calib = ctx.text("calibration")
    batches = calib.rows(imp.num_samples, imp.seq_len, imp.seed)
    val = None
    if c.validation is not None:
        val = ctx.text("validation").rows(imp.val_samples, imp.seq_len, imp.seed)
    if batches.shape[0] < ctx.world_size:
        raise ConfigError(
            f"{batches.shape[0]} calibration rows for {ctx.world_size} ranks",
            where="importance.num_samples",
            fix="raise num_samples, or run importance with fewer ranks (launcher.stages)",
        )
    d = dd.setup()
    try:
        all_reduce = None
        if d.enabled:
            import torch.distributed as dist

            def all_reduce(tensors):
                for t in tensors:
                    dist.all_reduce(t)

        dtype = compute_dtype("auto", d.device.type)
        model = load_llama(model_dir, dtype=dtype, device=str(d.device))
        mine = batches[d.rank :: d.world_size]
        scores = compute_importance(
            model, mine, imp, val_batches=val, progress=ctx.progress, all_reduce=all_reduce
        )
    finally:
        dd.teardown(d)
    if ctx.rank == 0:
        meta = {  # the same provenance as `minitron-deploy importance` writes
            "model": {
                "path": str(model_dir),
                "sha256": sha256_tree(model_dir, exclude=(PROVENANCE,)),
            },
            "calibration": calib.describe(),
            "validation": ctx.text("validation").describe() if c.validation is not None else None,
            "config": imp.model_dump(mode="json"),
            "rows": int(batches.shape[0]),
        }
        save_scores(scores, ctx.out, meta)
    return {
        "outputs": {"scores": "."},
        "metrics": {
            "samples": int(batches.shape[0]),
            "seq_len": int(batches.shape[1]),
            "ranks": d.world_size,
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


STAGE = Stage(
    "importance",
    ImportanceNode,
    run,
    "Activation importance over the calibration data (one forward pass).",
    compute=here_auto,
    estimate=estimate,
    distributed=True,
    defaults="fill",
)
