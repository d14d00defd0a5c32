"""The pipeline: graph (`graph.py`), the stage table (`stages/`, one module per stage: node
config, run, estimate, record), the runner (`runner.py`: keys, plan, run) and the worker of a
launched rank (`worker.py`), both running a stage through `execute.py`, the content-addressed
store (`store.py`) and run summaries (`summary.py`).

`Pipeline` is imported on first use: the profile reads the stage table (`pipeline.stages`), a
layer below the runner, without importing the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minitron_deploy.pipeline.runner import Pipeline

__all__ = ["Pipeline"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from minitron_deploy.pipeline.runner import Pipeline

        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
