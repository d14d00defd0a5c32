"""The `bench` stage: the ISL/OSL x batch throughput matrix over the benchmarked variants, and
the speedup gate on its results."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from minitron_deploy.bench import gate as speed_gate
from minitron_deploy.bench import run_matrix, write_reports
from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.bench.matrix import request_flops
from minitron_deploy.engines.registry import ENGINES
from minitron_deploy.hardware import resolved_dtype
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, jsonable
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage


class BenchNode(NodeConfig):
    """The throughput matrix over the benchmarked variants (batch resolved per member)."""

    bench: BenchConfig
    members: tuple[str, ...]
    gate: dict[str, float] = Field(
        default_factory=dict,
        description="variants' min_speedup: the matrix adds rounds while one is inconclusive",
    )


def compute(config: Any, device: str) -> dict[str, str]:
    b = config.bench
    return {b.device: resolved_dtype(b.dtype, b.device)}


def needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    spec = ENGINES[config.bench.engine]
    return ("minitron_deploy.bench", *spec.modules), spec.executables


def probe(config: Any) -> list[str]:
    """What the bench engine lacks beyond modules and programs (vllm: its venv)."""
    return ENGINES[config.bench.engine].probed()


def run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    models = [(name, ctx.model_dir(name)) for name in c.members]
    results = run_matrix(models, c.bench, progress=ctx.progress, gate=c.gate)
    write_reports(results, ctx.out / "report")
    return {
        "outputs": {
            "report": "report/report.md",
            "results": "report/results.json",
            "report_dir": "report",
        },
        "metrics": jsonable(results),
    }


def speedup_gate(node: Any, metrics: dict[str, Any]) -> list[str]:
    """The speedup gate (`minitron_deploy.bench.gate`) on the bench results: one message per
    failing or inconclusive cell; inconclusive ones start with `gate.INCONCLUSIVE_PREFIX`."""
    res = speed_gate.evaluate(metrics.get("results", []), node.meta.get("min_speedup") or {})
    return [f"speedup gate: {f}" for f in res["failures"]] + [
        f"{speed_gate.INCONCLUSIVE_PREFIX}: {f}" for f in res["inconclusive"]
    ]


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    """Every request of every round, per member (a member of unknown shape counted at
    `UNKNOWN_STUDENT` of the largest known one)."""
    c, shapes = node.config, node.meta.get("shapes", {})
    b = c.bench
    total = 0.0
    known = [x for x in (E.shape_of(shapes.get(n)) for n in c.members) if x is not None]
    for name, batch in zip(c.members, b.batch or (), strict=False):
        s = E.shape_of(shapes.get(name))
        if s is None and not known:
            return E.timed("bench", None, 1e6, gflops, dtype)
        scale = 1.0 if s is not None else E.UNKNOWN_STUDENT
        s = s or max(known, key=lambda x: x.num_parameters)
        for isl, osl in b.pairs():
            total += (b.warmup + b.repeats) * batch * scale * request_flops(s, isl, osl)
    return E.timed("bench", total, 1e6, gflops, dtype)


STAGE = Stage(
    "bench",
    BenchNode,
    run,
    "ISL/OSL x batch throughput matrix over the variants.",
    compute=compute,
    hardware_dependent=True,
    needs=needs,
    probe=probe,
    links=lambda node, out: {"bench": "report_dir"},
    gate=speedup_gate,
    estimate=estimate,
    defaults="fill",
)
