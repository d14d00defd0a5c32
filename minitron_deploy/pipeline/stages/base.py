"""The stage record: what the graph builder, `plan`, `run`, the profile and the launcher read of
a stage. Each stage module in this package ends in one `STAGE = Stage(...)`; `__init__.py`
builds the table from them.

A record names the stage's typed node config, its run function (the code whose digest enters
its keys is computed from it, see `pipeline/codehash.py`), the dtype it computes in, what it
needs to run, how its outputs are linked under a run's `outputs/` folder, its cost estimate,
whether a launcher runs it on several ranks, and how the profile's `defaults:` section of its
name reaches the variants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from minitron_deploy.hardware import lacking, resolved_dtype
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline.estimate import Estimate

TORCH_LIBS = ("torch", "transformers", "safetensors")


class NodeConfig(BaseModel):
    """Base of every node config: frozen, no unknown field (its dump is hashed into the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def no_needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (), ()


def cpu_auto(config: Any, device: str) -> dict[str, str]:
    """Stages that load the model on the CPU in `auto` (prune's layer ranking, FP8
    calibration, lm-eval), wherever `run` is."""
    return {"cpu": resolved_dtype("auto", "cpu")}


def here_auto(config: Any, device: str) -> dict[str, str]:
    """Stages that compute on the device of the process that runs them (importance)."""
    return {device: resolved_dtype("auto", device)}


def model_link(node: Any, out: dict[str, Any]) -> dict[str, str]:
    """`<variant>/model` (and `<variant>/curves.png`) for a model-producing stage."""
    links = {f"{node.variant}/model": "model"} if "model" in out else {}
    if "curves" in out:
        links[f"{node.variant}/curves.png"] = "curves"
    return links


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the stage's name (node ids end in it).
        config: the pydantic class of its node config (a `NodeConfig`).
        run: `run(ctx) -> {"outputs": {...}, "metrics": {...}}`; `outputs["model"]` (relative
            to the artifact's content, or absolute) marks a model-producing stage.
        doc: one line for `plan`.
        libraries: packages whose versions enter the key.
        hardware_dependent: the machine enters the key (measurements).
        compute: (config, device the stage's process computes on: "cpu" or "cuda") -> the
            dtypes it computes in, which enter the key (its numbers depend on them); None for
            stages whose output does not depend on a dtype.
        needs: config -> (Python modules, programs on PATH) it needs to run.
        probe: config -> other needs it lacks, worded (e.g. an engine's own venv).
        links: (node, outputs) -> {link name under outputs/: output key naming a path}.
        gate: (node, metrics) -> failures that fail the run after every stage ran.
        keyed: (config, hash cache) -> what of the config enters the key, when not all of it
            (a path is replaced by the content it names).
        estimate: (node, probe GFLOP/s, compute dtype) -> `Estimate` (seconds, bytes, FLOPs)
            for `plan`; None: the fixed time of an unknown stage and a small artifact.
        peak: (node, the model's `LlamaShape`) -> the least host memory in bytes its run needs
            (streamed / one layer at a time: `model/footprint.py`), which `plan`, `run` and
            `validate` check against the machine's; None: not counted (the stage sizes its own
            device, or its memory is not known).
        distributed: runs on every rank when the profile's launcher runs it (torchrun, SLURM);
            its run function reads `ctx.rank` / `ctx.world_size` and writes on rank 0 only.
            The launcher's `stages` choices and default are these stages.
        defaults: how the profile's `defaults:` section named like the stage reaches the
            variants: "merge" (into a variant that has the section), "fill" (also into one that
            has none), None (no such section).
    """

    name: str
    config: type[BaseModel]
    run: Callable[[Any], dict[str, Any]]
    doc: str
    libraries: tuple[str, ...] = TORCH_LIBS
    hardware_dependent: bool = False
    compute: Callable[[Any, str], dict[str, str]] | None = cpu_auto
    needs: Callable[[Any], tuple[tuple[str, ...], tuple[str, ...]]] = no_needs
    probe: Callable[[Any], list[str]] = lambda config: []
    links: Callable[[Any, dict[str, Any]], dict[str, str]] = lambda node, out: {}
    gate: Callable[[Any, dict[str, Any]], list[str]] | None = None
    keyed: Callable[[Any, Any], dict[str, Any]] | None = None
    estimate: Callable[[Any, float, str], Estimate] | None = None
    peak: Callable[[Any, LlamaShape], int | None] | None = None
    distributed: bool = False
    defaults: Literal["merge", "fill"] | None = None

    def missing(self, config: Any) -> str | None:
        """Why this stage cannot run here, or None."""
        lacks = lacking(*self.needs(config)) + self.probe(config)
        if not lacks:
            return None
        return "needs " + ", ".join(lacks) + " (see `minitron-deploy doctor`)"
