"""Running one stage application, the same way in `run`'s process and on a launched rank.

A job is the JSON-able description of one node to run (the runner writes it for a launcher;
`pipeline/worker.py` reads it on every rank): its stage, node id, config, input artifacts (by
stage and key in the store), where the content goes and the caches' folder. `open_context`
is the one place a `StageContext` is made from a job; `execute` is the one place a run
function is called (stdout, where results go, redirected to stderr).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from minitron_deploy.errors import MinitronError
from minitron_deploy.pipeline.context import StageContext
from minitron_deploy.pipeline.stages.base import Stage
from minitron_deploy.pipeline.store import Artifact, ArtifactStore


def make_job(
    node: Any,
    inputs: dict[str, Artifact],
    store: ArtifactStore,
    out: Path,
    scratch: Path,
    progress: bool,
    env: dict[str, Any],
    caches: Path,
) -> dict[str, Any]:
    """The job of `node` (a graph node) with its finished `inputs` (role -> artifact)."""
    return {
        "stage": node.stage,
        "node": node.id,
        "config": node.config.model_dump(mode="json"),
        "inputs": {r: [a.stage, a.key] for r, a in inputs.items()},
        "store": str(store.root.resolve()),
        "out": str(out),
        "scratch": str(scratch.resolve()),
        "progress": progress,
        "env": env,
        "caches": str(caches.resolve()),
    }


def job_inputs(job: dict[str, Any]) -> dict[str, Artifact]:
    """The input artifacts a job names, read from its store."""
    store = ArtifactStore(Path(job["store"]))
    inputs = {}
    for role, (stage, key) in job["inputs"].items():
        art = store.get(stage, key)
        if art is None:
            raise MinitronError(f"input {role} ({stage} {key[:16]}) is not in the store")
        inputs[role] = art
    return inputs


def open_context(
    job: dict[str, Any],
    config: Any,
    inputs: dict[str, Artifact],
    log: Any,
    rank: int = 0,
    world_size: int = 1,
) -> StageContext:
    """The context of a job's run function (its typed `config` and resolved `inputs`); only
    rank 0 shows progress and makes the content folder."""
    out = Path(job["out"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    return StageContext(
        job["node"],
        config,
        out,
        Path(job["scratch"]),
        inputs,
        progress=bool(job.get("progress")) and rank == 0,
        log=log if rank == 0 else (lambda msg: None),
        rank=rank,
        world_size=world_size,
        env=job.get("env", {}),
        caches=Path(job["caches"]) if job.get("caches") else None,
    )


def execute(spec: Stage, ctx: StageContext) -> dict[str, Any]:
    """Call the stage's run function; stdout is for results (`--json`), so what libraries
    print goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        return spec.run(ctx) or {}
