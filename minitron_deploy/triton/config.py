"""Settings of a Triton model repository (`package` stage and command). Torch-free."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GPUS = re.compile(r"^\d+(,\d+)*(;\d+(,\d+)*)*$")


class PackageConfig(BaseModel):
    """How to package a checkpoint as a Triton model repository."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["trtllm", "torch", "vllm"] = Field(
        "torch",
        description="torch: our python-backend model on the built-in engine (runs anywhere); "
        "trtllm: TensorRT-LLM's Triton model (GPU, NGC container); vllm: Triton's vLLM "
        "backend (model.json of engine arguments; NGC <yy.mm>-vllm-python-py3 container)",
    )
    max_batch_size: int = Field(8, gt=0, description="largest batch Triton/the engine forms")
    decoupled: bool = Field(False, description="decoupled transaction policy (streaming)")
    model_name: str | None = Field(
        None,
        description="Triton model name; default 'minitron_llm' (torch), 'tensorrt_llm', "
        "'vllm_model'",
    )
    max_tokens: int = Field(
        32,
        gt=0,
        description="torch: output tokens when a request gives none (32 = TensorRT-LLM "
        "SamplingParams' default, what the llmapi model uses)",
    )
    kv_cache_free_gpu_mem_fraction: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="GPU memory share for the KV cache (trtllm), or for vLLM as a whole (vllm)",
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="tensor parallelism (TensorRT-LLM, vLLM)"
    )
    engine_dir: str | None = Field(
        None, description="legacy: a trtllm-build engine folder -> inflight_batcher_llm ensemble"
    )
    legacy_templates: str | None = Field(
        None,
        description="legacy: TensorRT-LLM's triton_backend/all_models/inflight_batcher_llm "
        "(same tag as the engine); its templates are filled and re-rendered",
    )
    llmapi_src: str | None = Field(
        None, description="folder with TensorRT-LLM's llmapi model.py and helpers.py to copy in"
    )
    served_model_path: str | None = Field(
        None, description="checkpoint path as the server sees it (default: absolute --model)"
    )
    served_engine_dir: str | None = Field(
        None, description="engine path as the server sees it (default: absolute engine_dir)"
    )
    copy_model: bool = Field(
        True,
        description="torch: put the checkpoint into the repository (hard links where it is on "
        "the same file system, else a copy)",
    )
    dtype: str = Field(
        "auto", description="torch, vllm: engine compute dtype (auto = checkpoint's)"
    )
    device: str = Field("cpu", description="torch: engine device")
    num_threads: int = Field(0, ge=0, description="torch: torch threads per instance (0=default)")
    instance_count: int = Field(1, gt=0, description="model instances")
    gpu_device_ids: str | None = Field(
        None,
        description="trtllm llmapi, instance_count > 1: GPUs of each instance, e.g. '0,1;2,3' "
        "(default: consecutive blocks of tensor_parallel_size)",
    )
    max_queue_delay_us: int = Field(
        2000, ge=0, description="dynamic batcher: longest wait to fill a batch"
    )

    @field_validator("gpu_device_ids")
    @classmethod
    def _check_gpus(cls, v: str | None) -> str | None:
        if v is not None and not _GPUS.match(v):
            raise ValueError(f"gpu_device_ids {v!r} must look like '0,1;2,3'")
        return v

    @model_validator(mode="after")
    def _check_gpu_instances(self) -> PackageConfig:
        if self.gpu_device_ids and len(self.gpu_device_ids.split(";")) != self.instance_count:
            raise ValueError(
                f"gpu_device_ids {self.gpu_device_ids!r} names "
                f"{len(self.gpu_device_ids.split(';'))} instances, instance_count is "
                f"{self.instance_count}"
            )
        return self

    @field_validator("model_name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"model_name {v!r} must match {_NAME.pattern}")
        return v

    def name(self) -> str:
        """The Triton model name (explicit or the backend's default)."""
        if self.model_name:
            return self.model_name
        return {"trtllm": "tensorrt_llm", "vllm": "vllm_model"}.get(self.backend, "minitron_llm")
