"""The record types of the export table: `ExportFormat` (one format) and `ExportSettings`
(what one format's writer reads). Torch-free; format modules import only this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from minitron_deploy.model.layerwise import LAYER_SEQUENTIAL_HELP

# Settings that only FP8 exports read (calibration of the static scales).
CALIB_FIELDS = ("calib_samples", "calib_seq_len", "kv_cache_fp8", "seed", "layer_sequential")


class ExportSettings(BaseModel):
    """What one format's writer reads. Fields a format does not use stay None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: Literal["bf16", "fp8"] = Field("bf16", description="weight dtype of the export")
    calib_samples: int | None = Field(
        None, ge=1, description="calibration sequences for FP8 activation scales (default 512)"
    )
    calib_seq_len: int | None = Field(
        None, ge=2, description="tokens per calibration sequence (default 512)"
    )
    kv_cache_fp8: bool | None = Field(None, description="also calibrate FP8 KV-cache scales")
    tp_size: int | None = Field(
        None, ge=1, description="tensor-parallel ranks of a TensorRT-LLM checkpoint (default 1)"
    )
    seed: int | None = Field(None, description="seed of the calibration sample order")
    verify: bool = Field(
        True, description="read the export back and compare its logits with the source"
    )
    layer_sequential: Literal["auto", "true", "false"] | None = Field(
        None, exclude=True, description=f"FP8 calibration: {LAYER_SEQUENTIAL_HELP} (default auto)"
    )

    @field_validator("layer_sequential", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        return ("true" if v else "false") if isinstance(v, bool) else v


@dataclass(frozen=True)
class ExportFormat:
    """One deployment format.

    Attributes:
        name: the name used by `--format` and profiles; also the output folder's name.
        help: one line for `--help` and `doctor`.
        write: `write(src, dest, settings, calibration, record) -> summary dict`; `dest`
            exists and is empty; the summary lists the files written.
        read: `read(dest) -> logits function` (int64 tokens [b, s] -> float32 logits) for the
            read-back check, or None when the format cannot be read here.
        check: how the read-back compares with the source: "exact" (identical to the
            bf16-rounded source), "float32" (float32 graph: within ONNX_TOL) or "fp8".
        dtypes: weight dtypes the format takes; the first is its default.
        options: setting names it reads besides dtype and verify ("tp_size", "trtllm_dtype").
        modules: Python modules it needs, as a function of the dtype.
        hf_model: the output is an HF checkpoint folder (servable, benchable).
        rope: `rope(dest) -> (theta, scaling)` as the format's consumer reads them (for HF
            folders: the installed transformers' view of config.json, which is what
            TensorRT-LLM <= 1.2 reads through transformers 4.57); None when the rope is baked
            in (ONNX). The read-back check requires the source's own settings.
    """

    name: str
    help: str
    write: Callable[..., dict[str, Any]]
    read: Callable[[Any], Callable[[Any], Any]] | None
    check: Callable[[str], Literal["exact", "float32", "fp8"]]
    dtypes: tuple[str, ...] = ("bf16",)
    options: tuple[str, ...] = ()
    modules: Callable[[str], tuple[str, ...]] = lambda dtype: ()
    hf_model: bool = False
    rope: Callable[[Any], tuple[float, dict | None]] | None = None

    def fields(self, dtype: str) -> tuple[str, ...]:
        """The `ExportSettings` fields this format reads at `dtype`."""
        own = tuple(o for o in self.options if o != "trtllm_dtype")
        return ("dtype", "verify", *own, *(CALIB_FIELDS if dtype == "fp8" else ()))

    def needs_calibration(self, dtype: str) -> bool:
        return dtype == "fp8"
