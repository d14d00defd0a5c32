"""The pipeline: graph (`graph.py`, node configs in `nodes.py`), the stage table (`stages.py`)
with one run function per stage (`adapters.py`), the runner (`runner.py`: keys, plan, run),
the content-addressed store (`store.py`) and run summaries (`summary.py`)."""

from minitron_deploy.pipeline.runner import Pipeline

__all__ = ["Pipeline"]
