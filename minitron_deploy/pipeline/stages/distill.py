"""The `distill` stage: knowledge distillation of the pruned student from the parent (teacher),
resumable from its scratch folder; on several ranks under a launcher."""

from __future__ import annotations

import shutil
from typing import Any

from minitron_deploy.data.refs import SplitName
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.hardware import resolved_dtype
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, jsonable
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage, model_link


class DistillNode(NodeConfig):
    """Knowledge distillation of the pruned student from the parent (teacher)."""

    distill: DistillConfig
    training: SplitName
    validation: SplitName
    holdout: tuple[str, ...] = ()  # held-out domain names; inputs "holdout:<name>"


def compute(config: Any, device: str) -> dict[str, str]:
    return {device: resolved_dtype(config.distill.dtype, device)}


def run(ctx: StageContext) -> dict[str, Any]:
    # the trainer imports torch at its module top: imported when the stage runs
    from minitron_deploy.distill.trainer import run_distillation

    c = ctx.config
    # The scratch folder outlives a killed run and belongs to this key alone: always resume
    # (from its newest checkpoint, or from scratch when it has none).
    metrics = run_distillation(
        ctx.model_dir("teacher"),
        ctx.model_dir("student"),
        ctx.scratch,
        c.distill,
        train_data=ctx.text("training"),
        val_data=ctx.text("validation"),
        holdout=ctx.holdout(),
        resume=True,
        progress=ctx.progress,
        title=ctx.node_id,
        final_checkpoint=False,
    )
    if ctx.rank == 0:
        for name in ("final", "metrics.jsonl", "curves.png", "summary.json"):
            src = ctx.scratch / name
            if src.is_dir():
                shutil.copytree(src, ctx.out / name)
            elif src.is_file():
                shutil.copy2(src, ctx.out / name)
    metrics["final"] = "final"  # the copy in this artifact, not the scratch folder
    return {"outputs": {"model": "final", "curves": "curves.png"}, "metrics": jsonable(metrics)}


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    """Teacher forwards and student forward+backward over every step's tokens, and the
    evaluations (validation and each held-out domain)."""
    shapes = node.meta.get("shapes", {})
    t, st = E.shape_of(shapes.get("teacher")), E.shape_of(shapes.get("student"))
    size = None if st is None else E.checkpoint_bytes(st)
    if t is None:
        return E.timed("distill", None, size, gflops, dtype)
    c = node.config
    d = c.distill
    seq = d.seq_len
    train = d.steps * d.global_batch * seq
    evals = (d.steps // d.eval_every if d.eval_every else 0) + 2
    if d.teacher_correction:  # the teacher itself trained on CE: no separate teacher forward
        st, ratio, step = t, 1.0, 3 * E.fwd(t, train, seq / 2)
    else:
        ratio = 1.0 if st is not None else E.UNKNOWN_STUDENT
        st = st or t
        step = E.fwd(t, train, seq / 2) + 3 * ratio * E.fwd(st, train, seq / 2)
    flops = step + evals * ratio * E.fwd(st, d.eval_samples * seq, seq / 2) * 2 * (
        1 + len(getattr(c, "holdout", ()))
    )
    return E.timed("distill", flops, size, gflops, dtype)


STAGE = Stage(
    "distill",
    DistillNode,
    run,
    "Knowledge distillation from the parent model.",
    compute=compute,
    links=model_link,
    estimate=estimate,
    distributed=True,
    defaults="merge",
)
