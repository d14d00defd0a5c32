"""The `search` stage: architecture search under the profile's budget (measure, rank zero-shot,
re-rank after short distillations); its model is the winner, pruned."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.bench.matrix import request_flops
from minitron_deploy.compress.scores import load_scores
from minitron_deploy.data.refs import SplitName
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.hardware import resolved_dtype
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, jsonable
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage
from minitron_deploy.search.config import SearchConfig
from minitron_deploy.search.run import run_search


class SearchNode(NodeConfig):
    """Architecture search under the profile's budget; its model is the winner, pruned."""

    search: SearchConfig
    bench: BenchConfig | None = Field(None, description="the engine min_speedup is measured on")
    distill: DistillConfig = Field(description="settings of the short distillations")
    training: SplitName
    validation: SplitName
    # held-out domains the re-rank also scores; inputs "holdout:<name>"
    holdout: tuple[str, ...] = ()


def compute(config: Any, device: str) -> dict[str, str]:
    """Short distillations where `run` is, zero-shot ranking in float32 on the CPU, speed on
    the bench device."""
    out = {"distill": resolved_dtype(config.distill.dtype, device)}
    if config.bench is not None:
        out["bench"] = resolved_dtype(config.bench.dtype, config.bench.device)
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    scores, _ = load_scores(ctx.inputs["scores"].content)
    # finished candidates are shared by runs (a larger top_k reuses them): keyed by content
    # and, like the store, by the code digest, library versions and compute dtypes
    cache_env = {k: v for k, v in ctx.env.items() if k != "hardware"}
    summary = run_search(
        ctx.model_dir("model"),
        scores,
        c.search,
        c.bench,
        c.distill,
        ctx.text("training"),
        ctx.text("validation"),
        ctx.out,
        ctx.cache("search"),
        progress=ctx.progress,
        log=ctx.log,
        cache_env=cache_env,
        holdout=ctx.holdout(),  # held-out domains scored by the re-rank
    )
    outputs = {
        "model": "model",
        "report": "report.md",
        "candidates": "candidates.json",
        "pareto": "pareto.png",
    }
    return {"outputs": outputs, "metrics": jsonable(summary)}


def _flops(c: Any, s: Any) -> float | None:
    """Zero-shot losses, speed measurements and the short distillations of a search, with
    every candidate counted at `UNKNOWN_STUDENT` of the source."""
    if s is None:
        return None
    sc, h = c.search, E.UNKNOWN_STUDENT
    flops = sc.max_candidates * h * E.fwd(s, sc.val_samples * sc.val_seq_len, sc.val_seq_len / 2)
    if sc.budget.min_speedup is not None and c.bench is not None:
        (b0, b1), measure, calib = sc.speed
        # top_k per family (3 families) + 2 seed shapes re-ranked
        shapes = calib + 3 * sc.top_k + 2 if measure == "model" else sc.max_candidates * 2
        runs = c.bench.warmup + c.bench.repeats
        for isl, osl in c.bench.pairs():
            one = runs * request_flops(s, isl, osl)
            flops += 2 * b0 * one + shapes * b1 * h * one  # the source twice, each candidate
    d = c.distill
    # the short distillations, and the agreement check's longer ones
    train = (sc.steps + (sc.agreement_steps or 0)) * d.global_batch * d.seq_len
    evals = 2 * 2 * h * E.fwd(s, d.eval_samples * d.seq_len, d.seq_len / 2)
    flops += (3 * sc.top_k + 2) * (E.fwd(s, train, d.seq_len / 2) * (1 + 3 * h) + evals)
    return flops


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    return E.timed("search", _flops(node.config, s), 1e6, gflops, dtype)


STAGE = Stage(
    "search",
    SearchNode,
    run,
    "Architecture search under a budget: measure, rank zero-shot, re-rank after short KD.",
    compute=compute,
    hardware_dependent=True,
    links=lambda node, out: {"search/report.md": "report", "search/pareto.png": "pareto"},
    estimate=estimate,
)
