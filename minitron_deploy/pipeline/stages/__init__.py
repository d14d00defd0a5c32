"""The stage table: one module per stage, each ending in one `STAGE = Stage(...)` record
(`base.py`), read by the graph builder, `plan`, `run`, the worker, the profile (its `defaults:`
sections) and the launcher (its `stages` choices).

A stage module holds the stage's typed node config, its `run(ctx)` and optional hooks (`keyed`,
`needs`, `probe`, `gate`, `compute`), its `estimate(node, gflops, dtype)` and `peak(node,
shape)`, and its record. The
runner knows no stage by name. To add a stage: a module in this package, its name in
`STAGE_MODULES`, its node(s) in `graph.build_graph`, and its section in `profile/schema.py`.
Importing this package imports the stage modules, which import nothing heavy (torch) at module
level: `validate` and `--help` stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline.estimate import Estimate, timed
from minitron_deploy.pipeline.stages.base import Stage

# Full module names, in the order `plan` lists stages of the same rank.
STAGE_MODULES = (
    "minitron_deploy.pipeline.stages.source",
    "minitron_deploy.pipeline.stages.data",
    "minitron_deploy.pipeline.stages.importance",
    "minitron_deploy.pipeline.stages.prune",
    "minitron_deploy.pipeline.stages.search",
    "minitron_deploy.pipeline.stages.distill",
    "minitron_deploy.pipeline.stages.export",
    "minitron_deploy.pipeline.stages.package",
    "minitron_deploy.pipeline.stages.eval",
    "minitron_deploy.pipeline.stages.bench",
)


def table(modules: Iterable[ModuleType | str]) -> dict[str, Stage]:
    """name -> record of each stage module (a module or its full name), in order."""
    out: dict[str, Stage] = {}
    for m in modules:
        stage = (importlib.import_module(m) if isinstance(m, str) else m).STAGE
        if stage.name in out:
            raise ValueError(f"two stage modules declare the stage {stage.name!r}")
        out[stage.name] = stage
    return out


STAGES: dict[str, Stage] = table(STAGE_MODULES)


def distributed_stages(stages: dict[str, Stage] | None = None) -> tuple[str, ...]:
    """Stages a launcher can run on several ranks (the launcher's `stages` choices)."""
    return tuple(n for n, s in (stages or STAGES).items() if s.distributed)


def default_sections(
    stages: dict[str, Stage] | None = None, how: tuple[str, ...] = ("merge", "fill")
) -> tuple[str, ...]:
    """Sections the profile's `defaults:` may set (those merged into variants `how`)."""
    return tuple(n for n, s in (stages or STAGES).items() if s.defaults in how)


def estimate(node, gflops: float, dtype: str = "float32") -> Estimate:
    """(seconds, bytes, FLOPs) of a node on a machine doing `gflops` GEMM GFLOP/s in `dtype`,
    the compute dtype the run will use (a stage without an estimate: its fixed time)."""
    spec = STAGES[node.stage]
    if spec.estimate is None:
        return timed(node.stage, 0.0, 1e6, gflops, dtype)
    return spec.estimate(node, gflops, dtype)


def node_peak_bytes(node) -> int | None:
    """Least host memory (bytes) of a node (its stage's `peak`), None when the model's shape is
    unknown or the stage's memory is not counted."""
    spec = STAGES[node.stage]
    shape = (node.meta.get("shapes") or {}).get("model")
    if spec.peak is None or not shape:
        return None
    return spec.peak(node, LlamaShape.from_config(shape))


def peak_needs(nodes, launched: set[str] = frozenset()) -> dict[str, int | None]:
    """{node id: least host memory} of the nodes that run on this host (not `launched`)."""
    return {n.id: node_peak_bytes(n) for n in nodes if n.id not in launched}


__all__ = [
    "STAGES",
    "STAGE_MODULES",
    "Stage",
    "default_sections",
    "distributed_stages",
    "node_peak_bytes",
    "peak_needs",
    "table",
]
