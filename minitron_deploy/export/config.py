"""Settings of the export stage (profile section) and of one format's export. Torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.export.format import ExportSettings
from minitron_deploy.model.layerwise import LAYER_SEQUENTIAL_HELP, LayerSequential


class ExportConfig(BaseModel):
    """Settings of the export stage: which formats, and how FP8 exports are calibrated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    formats: list[str] = Field(
        default=["hf", "hf-fp8", "trtllm-ckpt"],
        description="formats to write, each into its own folder named after the format "
        "(see `minitron-deploy export --help`)",
    )
    trtllm_dtype: Literal["bf16", "fp8"] = Field(
        default="fp8", description="weight dtype of the legacy TensorRT-LLM checkpoint"
    )
    calib_data: str | None = Field(
        default=None,
        description="FP8 calibration text (path or builtin:<name>); None: the profile's "
        "data.calibration",
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
    layer_sequential: LayerSequential = Field(
        default="auto", exclude=True, description=f"FP8 calibration: {LAYER_SEQUENTIAL_HELP}"
    )

    @field_validator("formats")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from minitron_deploy.export.registry import FORMATS

        bad = [f for f in v if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown export format(s) {bad}; use some of {sorted(FORMATS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"formats {v} name one format twice")
        return v

    @model_validator(mode="after")
    def _kv_scales_need_fp8(self) -> ExportConfig:
        if self.kv_cache_fp8 and "trtllm-ckpt" in self.formats and self.trtllm_dtype == "bf16":
            raise ValueError(
                "FP8 KV-cache scales with a BF16 TensorRT-LLM checkpoint: a BF16 checkpoint "
                "carries no KV-cache scales; use FP8 weights (trtllm_dtype / --dtype fp8) or "
                "drop kv_cache_fp8 (--kv-cache-fp8)"
            )
        return self

    def settings(self, fmt: str) -> ExportSettings:
        """The settings format `fmt` reads, the rest None."""
        from minitron_deploy.export.registry import FORMATS

        spec = FORMATS[fmt]
        dtype = self.trtllm_dtype if "trtllm_dtype" in spec.options else spec.dtypes[0]
        used = spec.fields(dtype)
        values = {f: getattr(self, f) for f in used if f in type(self).model_fields}
        return ExportSettings(dtype=dtype, **values)
