"""Deployment exports: HF BF16, HF FP8 (Model-Optimizer format), legacy TensorRT-LLM, ONNX.

Each format's writer and reader live in one module (`hf`, `hf_fp8`, `trtllm_ckpt`, `onnx`);
`FORMATS` maps format names to writers. `export_model` validates everything first, writes into a
temporary folder, reads the result back and compares its logits with the source (`verify`), and
only then moves the folder into place: on any failure nothing is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.errors import InputError

FORMAT_HELP = {
    "hf": "Hugging Face checkpoint, bf16 safetensors (TensorRT-LLM PyTorch backend, vLLM, ...)",
    "hf-fp8": "Hugging Face checkpoint, FP8 E4M3 in NVIDIA Model-Optimizer's format",
    "trtllm-ckpt": "legacy TensorRT-LLM checkpoint (config.json + rank{r}.safetensors)",
    "onnx": "ONNX graph with KV-cache inputs/outputs (onnxruntime, TensorRT)",
}


class ExportConfig(BaseModel):
    """Settings of the export stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    formats: list[Literal["hf", "hf-fp8", "trtllm-ckpt", "onnx"]] = Field(
        default=["hf", "hf-fp8", "trtllm-ckpt"],
        description="formats to write, each into its own folder named after the format",
    )
    trtllm_dtype: Literal["bf16", "fp8"] = Field(
        default="fp8", description="weight dtype of the legacy TensorRT-LLM checkpoint"
    )
    calib_data: str | None = Field(
        default=None,
        description="FP8 calibration text (path or builtin:<name>); None: the pipeline's data",
    )
    calib_samples: int = Field(
        default=512, ge=1, description="calibration sequences for FP8 activation scales"
    )
    calib_seq_len: int = Field(default=512, ge=2, description="tokens per calibration sequence")
    kv_cache_fp8: bool = Field(default=False, description="also calibrate FP8 KV-cache scales")
    tp_size: int = Field(
        default=1, ge=1, description="tensor-parallel ranks of the TensorRT-LLM checkpoint"
    )
    seed: int = Field(default=0, description="seed of the calibration sample order")
    verify: bool = Field(
        default=True, description="read every export back and compare its logits with the source"
    )


def _write_hf(src: Path, dest: Path, **kw: Any) -> dict[str, Any]:
    from minitron_deploy.export.hf import export_hf

    return {"files": export_hf(src, dest, record=kw["record"])}


def _write_hf_fp8(src: Path, dest: Path, **kw: Any) -> dict[str, Any]:
    from minitron_deploy.export.hf_fp8 import export_hf_fp8

    return export_hf_fp8(
        src,
        dest,
        calib_data=kw["calib_data"],
        calib_samples=kw["calib_samples"],
        calib_seq_len=kw["calib_seq_len"],
        kv_cache_fp8=kw["kv_cache_fp8"],
        seed=kw["seed"],
        record=kw["record"],
    )


def _write_trtllm(src: Path, dest: Path, **kw: Any) -> dict[str, Any]:
    import tempfile

    from minitron_deploy.export.hf import read_hf_tensors
    from minitron_deploy.export.hf_fp8 import read_fp8_state
    from minitron_deploy.export.trtllm_ckpt import write_trtllm_checkpoint
    from minitron_deploy.fsutil import atomic_write_json

    info: dict[str, Any] = {}
    if kw["dtype"] == "fp8":
        with tempfile.TemporaryDirectory(prefix=".fp8-hf.", dir=dest.parent) as tmp:
            info = _write_hf_fp8(src, Path(tmp), **kw)
            cfg, tensors = read_fp8_state(tmp)
    else:
        cfg, tensors = read_hf_tensors(src)
    files = write_trtllm_checkpoint(cfg, tensors, dest, tp=kw["tp"])
    atomic_write_json(dest / "provenance.json", kw["record"])
    return {**info, "files": [*files, "provenance.json"]}


def _write_onnx(src: Path, dest: Path, **kw: Any) -> dict[str, Any]:
    from minitron_deploy.export.onnx import export_onnx
    from minitron_deploy.fsutil import atomic_write_json

    files = export_onnx(src, dest)
    atomic_write_json(dest / "provenance.json", kw["record"])
    return {"files": [*files, "provenance.json"]}


FORMATS: dict[str, Callable[..., dict[str, Any]]] = {
    "hf": _write_hf,
    "hf-fp8": _write_hf_fp8,
    "trtllm-ckpt": _write_trtllm,
    "onnx": _write_onnx,
}


def check_request(
    model_dir: str | Path, fmt: str, *, dtype: str, calib_data: str | None, tp: int
) -> dict[str, Any]:
    """Validate an export request before any work; returns the source config dict.

    Raises:
        InputError: unknown format/dtype, FP8 without calibration data, a bad tp, or an
            incomplete source checkpoint.
    """
    from minitron_deploy.export.hf import check_complete
    from minitron_deploy.export.trtllm_ckpt import check_tp

    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", fix=f"use one of {sorted(FORMATS)}")
    if dtype not in ("bf16", "fp8"):
        raise InputError(f"unknown dtype {dtype!r}", where="--dtype", fix="use bf16 or fp8")
    if fmt in ("hf", "onnx") and dtype != "bf16":
        raise InputError(
            f"--dtype {dtype} does not apply to format {fmt}",
            fix="use --format hf-fp8 for an FP8 HF checkpoint",
        )
    fp8 = fmt == "hf-fp8" or (fmt == "trtllm-ckpt" and dtype == "fp8")
    if fp8 and not calib_data:
        raise InputError(
            "FP8 export needs calibration data for its static activation scales",
            where="--calib-data",
            fix="pass --calib-data PATH or --calib-data builtin:python-stdlib",
        )
    if tp != 1 and fmt != "trtllm-ckpt":
        raise InputError(f"--tp {tp} applies only to --format trtllm-ckpt", where="--tp")
    cfg = check_complete(model_dir)  # complete, readable, safetensors-only source
    check_tp(cfg, tp)
    return cfg


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    fmt: str,
    *,
    dtype: str = "bf16",
    calib_data: str | None = None,
    calib_samples: int = 512,
    calib_seq_len: int = 512,
    tp: int = 1,
    kv_cache_fp8: bool = False,
    seed: int = 0,
    verify: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the HF Llama checkpoint `model_dir` to `out_dir` in format `fmt`, atomically.

    Args:
        model_dir: source HF checkpoint (safetensors).
        out_dir: output folder (must not exist or be empty unless `overwrite`).
        fmt: "hf", "hf-fp8", "trtllm-ckpt" or "onnx".
        dtype: "bf16" or "fp8" (trtllm-ckpt only; hf-fp8 is always FP8).
        calib_data: calibration text source, required for FP8.
        calib_samples: calibration sequences.
        calib_seq_len: tokens per calibration sequence.
        tp: tensor-parallel ranks (trtllm-ckpt only).
        kv_cache_fp8: add FP8 KV-cache scales (FP8 formats).
        seed: calibration sample order.
        verify: read the export back and compare logits with the source before committing.
        overwrite: replace an existing `out_dir`.

    Returns:
        Summary: format, out, files, seconds, calibration counts, and `verify` metrics.
    """
    from minitron_deploy.fsutil import atomic_dir
    from minitron_deploy.model.io import provenance

    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if fmt == "hf-fp8":
        dtype = "fp8"
    check_request(model_dir, fmt, dtype=dtype, calib_data=calib_data, tp=tp)
    settings = {
        "format": fmt,
        "dtype": "fp32" if fmt == "onnx" else dtype,  # the ONNX graph is float32
        "calib_data": calib_data,
        "calib_samples": calib_samples,
        "calib_seq_len": calib_seq_len,
        "tp": tp,
        "kv_cache_fp8": kv_cache_fp8,
        "seed": seed,
    }
    record = provenance(model_dir, extra={"export": settings})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        summary = FORMATS[fmt](model_dir, tmp, record=record, **settings)
        if verify:
            from minitron_deploy.export.verify import verify_export

            summary["verify"] = verify_export(model_dir, tmp, fmt)
    return {**settings, "out": str(out_dir), **summary, "seconds": round(time.time() - t0, 2)}


__all__ = ["FORMATS", "FORMAT_HELP", "ExportConfig", "check_request", "export_model"]
