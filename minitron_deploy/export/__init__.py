"""Deployment exports: HF BF16, HF FP8 (Model-Optimizer format), legacy TensorRT-LLM, ONNX.

Each format's writer and reader live in one module (`hf`, `hf_fp8`, `trtllm_ckpt`, `onnx`),
which declares its `FORMAT` record; `registry.FORMATS` is the table. `export_model` validates
everything first, writes into a temporary folder, reads the result back and compares its logits
with the source (`verify`), and only then moves the folder into place: on any failure nothing
is left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.data.refs import DataRef, as_split, check_source, describe
from minitron_deploy.errors import InputError
from minitron_deploy.export.config import ExportConfig
from minitron_deploy.export.format import ExportSettings
from minitron_deploy.fsutil import atomic_dir, check_output_dir
from minitron_deploy.model.io import provenance

if TYPE_CHECKING:
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split


def check_request(
    model_dir: str | Path,
    fmt: str,
    settings: ExportSettings,
    calibration: DataRef | Split | None,
    *,
    given: set[str] = frozenset(),
) -> dict[str, Any]:
    """Validate an export request before any work; returns the source config dict.

    Args:
        model_dir: the source checkpoint.
        fmt: format name.
        settings: the format's settings.
        calibration: calibration text (FP8 only).
        given: the settings the user set explicitly; one the format does not read is refused.

    Raises:
        InputError: unknown format, a dtype or setting the format does not take, FP8 without
            calibration data, a bad tp, or an incomplete source checkpoint.
    """
    from minitron_deploy.export.hf import check_complete
    from minitron_deploy.export.registry import FORMATS
    from minitron_deploy.export.trtllm_ckpt import check_tp

    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", fix=f"use one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    if settings.dtype not in spec.dtypes:
        raise InputError(
            f"--dtype {settings.dtype} does not apply to format {fmt} (it takes {spec.dtypes})",
            fix="use --format hf-fp8 for an FP8 HF checkpoint",
        )
    unused = sorted(set(given) - set(spec.fields(settings.dtype)))
    if unused:
        opts = ", ".join("--" + u.replace("_", "-").replace("tp-size", "tp") for u in unused)
        raise InputError(
            f"{opts}: does not apply to --format {fmt} with dtype {settings.dtype}",
            fix="drop them (calibration options apply to FP8 exports, --tp to trtllm-ckpt)",
        )
    if spec.needs_calibration(settings.dtype) and calibration is None:
        raise InputError(
            "FP8 export needs calibration data for its static activation scales",
            where="--calib-data",
            fix="pass --calib-data PATH or --calib-data builtin:python-stdlib",
        )
    cfg = check_complete(model_dir)  # complete, readable, safetensors-only source
    if settings.tp_size:
        check_tp(cfg, settings.tp_size)

    if isinstance(calibration, DataRef):
        check_source(calibration)
    return cfg


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    fmt: str,
    settings: ExportSettings | None = None,
    calibration: DataRef | Split | None = None,
    *,
    overwrite: bool = False,
    given: set[str] = frozenset(),
    command: str | None = None,
) -> dict[str, Any]:
    """Export the HF Llama checkpoint `model_dir` to `out_dir` in format `fmt`, atomically.

    Args:
        model_dir: source HF checkpoint (safetensors).
        out_dir: output folder (must not exist or be empty unless `overwrite`).
        fmt: a name of `registry.FORMATS` ("hf", "hf-fp8", "trtllm-ckpt", "onnx").
        settings: the format's settings (default: its defaults).
        calibration: calibration text, required for FP8.
        overwrite: replace an existing `out_dir`.
        given: settings the user set explicitly (refused when the format ignores them).
        command: the command line recorded in the provenance.

    Returns:
        Summary: format, settings, out, files, seconds, calibration counts, `verify` metrics.
    """
    from minitron_deploy.export.registry import FORMATS

    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_output_dir(out_dir, overwrite=overwrite)
    if settings is None and fmt in FORMATS:
        settings = ExportSettings(dtype=FORMATS[fmt].dtypes[0])
    settings = settings or ExportSettings()
    check_request(model_dir, fmt, settings, calibration, given=given)
    spec = FORMATS[fmt]

    if calibration is not None:  # prepared once here: writers and provenance see its content
        calibration = as_split(calibration, model_dir)

    meta = {
        "format": fmt,
        **settings.model_dump(exclude_none=True),
        "calibration": describe(calibration),
    }
    record = provenance(model_dir, command, extra={"export": meta})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        summary = spec.write(model_dir, tmp, settings, calibration, record)
        if settings.verify:
            from minitron_deploy.export.verify import verify_export

            summary["verify"] = verify_export(model_dir, tmp, spec, settings.dtype)
    return {**meta, "out": str(out_dir), **summary, "seconds": round(time.time() - t0, 2)}


__all__ = ["ExportConfig", "ExportSettings", "check_request", "export_model"]
