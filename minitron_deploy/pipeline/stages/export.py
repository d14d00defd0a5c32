"""The `export` stage: one deployment format (HF BF16 / HF FP8 / TensorRT-LLM checkpoint / ONNX)
of a variant's final model, through the format table (`export/registry.py`)."""

from __future__ import annotations

from typing import Any

from minitron_deploy.data.refs import SplitName
from minitron_deploy.export import export_model
from minitron_deploy.export.format import ExportSettings
from minitron_deploy.export.registry import FORMATS
from minitron_deploy.model.footprint import (
    BASE_BYTES,
    layer_sequential_peak_bytes,
    streamed_peak_bytes,
)
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext, jsonable
from minitron_deploy.pipeline.stages.base import TORCH_LIBS, NodeConfig, Stage


class ExportNode(NodeConfig):
    """One deployment format of the variant's final model."""

    format: str
    settings: ExportSettings
    calibration: SplitName | None = None


def needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    spec = FORMATS[config.format]
    return ("minitron_deploy.export", *spec.modules(config.settings.dtype)), ()


def run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    fmt = c.format
    summary = export_model(
        ctx.model_dir("model"),
        ctx.out / fmt,
        fmt,
        c.settings,
        ctx.text("calibration") if c.calibration is not None else None,
        command=f"pipeline {ctx.node_id}",
    )
    outputs: dict[str, Any] = {"export": fmt, "format": fmt}
    if FORMATS[fmt].hf_model:
        outputs["model"] = fmt
    return {"outputs": outputs, "metrics": jsonable(summary)}


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    """The read-back (and FP8 calibration); ONNX in float32, FP8 weights at one byte with
    bf16 embeddings."""
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    if s is None:
        return E.Estimate(None, None)
    fmt, st = node.config.format, node.config.settings
    flops = E.fwd(s, 48, 12)  # the read-back
    if st.dtype == "fp8":
        # defaults from ExportOptions (one model), not a second `or 512`
        n, seq = st.get("calib_samples"), st.get("calib_seq_len")
        flops += E.fwd(s, n * seq, seq / 2)  # calibration
    params = s.num_parameters
    if fmt == "onnx":
        size = 4.0 * params
    elif st.dtype == "fp8":
        emb = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
        size = 1.0 * (params - emb) + 2.0 * emb
    else:
        size = 2.0 * params
    return E.timed("export", flops, size, gflops, dtype)


def peak(node: Any, shape: LlamaShape) -> int:
    """Least memory: ONNX traces the whole float32 model; FP8 calibrates one layer at a time;
    the bf16 formats stream and read back layer by layer."""
    c = node.config
    if c.format == "onnx":
        return BASE_BYTES + 3 * 4 * shape.num_parameters  # traced float32 graph + model
    if c.settings.dtype == "fp8":
        st = c.settings
        return layer_sequential_peak_bytes(
            shape, st.get("calib_samples"), st.get("calib_seq_len"), 1
        )
    return streamed_peak_bytes(shape, read_back=True)


STAGE = Stage(
    "export",
    ExportNode,
    run,
    "A deployment format (HF BF16 / HF FP8 / TensorRT-LLM checkpoint / ONNX).",
    libraries=(*TORCH_LIBS, "nvidia-modelopt", "onnx"),
    needs=needs,
    links=lambda node, out: {f"{node.variant}/{node.config.format}": "export"},
    estimate=estimate,
    peak=peak,
    defaults="fill",
)
