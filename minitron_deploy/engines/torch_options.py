"""Options of the built-in `torch` engine, torch-free so `bench --help` stays light (the
engine module imports torch at its top)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TorchOptions(BaseModel):
    """Keyword options of `TorchEngine` (`get_engine("torch", dir, **options)`, profiles'
    `bench.engine_opts`, `bench --compile ...`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compile: bool = Field(False, description="torch.compile the decode step (CUDA)")
    cuda_graphs: bool = Field(False, description="CUDA graphs for decode steps (CUDA)")
    prepack: bool | None = Field(
        None,
        description="CPU: reorder dense weights once into oneDNN's blocked layout (default: "
        "for bfloat16 where supported; --prepack also for float32, --no-prepack never)",
    )
    max_prefill_tokens: int = Field(
        65536, ge=1, description="prefill in row chunks of at most this many tokens"
    )
    kv_cache_dtype: Literal["auto", "fp8", "compute"] = Field(
        "auto",
        description="KV cache: auto (FP8 when the checkpoint has KV-cache scales), fp8 (require "
        "them) or compute (the compute dtype)",
    )
    fp8_context_fmha: bool = Field(
        False, description="emulate TensorRT-LLM's FP8 context FMHA (needs an FP8 KV cache)"
    )
