"""The `package` stage: a Triton model repository of a variant's model (or its HF export)."""

from __future__ import annotations

from typing import Any

from minitron_deploy.model.footprint import BASE_BYTES
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, jsonable
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage
from minitron_deploy.triton import package_triton
from minitron_deploy.triton.config import PackageConfig


class PackageNode(NodeConfig):
    """A Triton model repository of the variant's model (or its HF export)."""

    package: PackageConfig


def run(ctx: StageContext) -> dict[str, Any]:
    model_dir = ctx.model_dir("export") if "export" in ctx.inputs else ctx.model_dir("model")
    summary = package_triton(model_dir, ctx.out / "repo", ctx.config.package)
    return {"outputs": {"repo": "repo"}, "metrics": jsonable(summary)}


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    size = None if s is None else E.checkpoint_bytes(s)
    if s is not None and not node.config.package.copy_model:
        size = 0.0
    return E.timed("package", 0.0, size, gflops, dtype)


def peak(node: Any, shape: LlamaShape) -> int:
    """Least memory: it copies files and holds no tensor."""
    return BASE_BYTES


STAGE = Stage(
    "package",
    PackageNode,
    run,
    "Triton model repository.",
    compute=None,
    links=lambda node, out: {f"{node.variant}/triton": "repo"},
    estimate=estimate,
    peak=peak,
    defaults="fill",
)
