"""Settings of the throughput matrix. Torch-free."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.engines.registry import ENGINES
from minitron_deploy.errors import InputError

GRIDS = {
    "gpu": ((128, 128), (128, 2048), (2048, 128), (2048, 2048)),
    "cpu": ((128, 128), (128, 512), (512, 128)),
}


def parse_matrix(spec: str | list | tuple | None, device: str = "cpu") -> list[tuple[int, int]]:
    """ISL/OSL pairs from "128/128,128/2048", a named grid ("gpu", "cpu"), or pairs.

    None or "default" gives the GPU grid on CUDA devices and the scaled-down CPU grid otherwise.

    Raises:
        InputError: a malformed pair or a non-positive length.
    """
    if spec is None or spec == "default":
        spec = "gpu" if str(device).startswith("cuda") else "cpu"
    if isinstance(spec, str):
        if spec in GRIDS:
            return [tuple(p) for p in GRIDS[spec]]
        pairs = []
        for part in spec.replace(" ", "").split(","):
            try:
                isl, osl = (int(x) for x in part.split("/"))
            except ValueError as e:
                raise InputError(
                    f"bad ISL/OSL pair {part!r}", where="--matrix", fix="write pairs like 128/128"
                ) from e
            pairs.append((isl, osl))
    else:
        pairs = [(int(a), int(b)) for a, b in spec]
    if not pairs or any(i < 1 or o < 1 for i, o in pairs):
        raise InputError(f"ISL/OSL pairs must be ≥ 1: {pairs}", where="--matrix")
    return pairs


class BenchConfig(BaseModel):
    """Settings of one throughput matrix run. Every request yields exactly OSL tokens (EOS
    ignored), as `trtllm-bench --eos_id -1` does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field("torch", description="engine name (see `minitron-deploy doctor`)")
    dtype: str = Field("auto", description="compute dtype; auto = each checkpoint's own")
    device: str = Field("cpu", description="cpu or cuda[:N]")
    isl_osl: tuple[tuple[int, int], ...] | None = Field(
        None,
        description="ISL/OSL pairs (or a spec string like '128/128,2048/128' / 'gpu' / 'cpu'); "
        "None = GPU grid on CUDA, scaled-down CPU grid otherwise",
    )
    batch: tuple[int, ...] | None = Field(
        None,
        description="batch per model (one value for all, or one per model); None = 32 for the "
        "base (first model) and 64 for every other (the blog's 8B vs 4B setting)",
    )
    warmup: int = Field(1, ge=0, description="untimed warm-up runs per variant and pair")
    repeats: int = Field(3, ge=3, description="timed runs per variant and pair (median reported)")
    gate_max_repeats: int = Field(
        9,
        ge=3,
        description="with a speedup gate (a variant's min_speedup): add interleaved rounds up to "
        "this many while a gated cell's 95% interval straddles its threshold (6 rounds are the "
        "fewest whose order-statistic interval of a median reaches 95%)",
    )
    engine_opts: dict[str, Any] = Field(
        default_factory=dict,
        description="engine options, e.g. {'compile': True}: fields of the engine's options "
        "model (its EngineSpec.options)",
    )
    num_requests: int | None = Field(
        None,
        ge=1,
        description="trtllm and vllm: requests handed over at once per run (default: 4 x batch "
        "for trtllm, batch for vllm)",
    )
    seed: int = Field(0, description="seed of the random prompt token ids")

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; use one of {sorted(ENGINES)}")
        return v

    @model_validator(mode="after")
    def _engine_opts(self) -> BenchConfig:
        # typed options, from the engine's record: a typo fails here, not after the engine starts
        problems = ENGINES[self.engine].option_problems(self.engine_opts)
        if problems:
            raise ValueError(f"engine_opts for {self.engine}: {'; '.join(problems)}")
        return self

    @field_validator("isl_osl", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        try:
            return None if v is None else tuple(parse_matrix(v))
        except InputError as e:
            raise ValueError(e.what) from None

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        if v is None:
            return None
        v = (v,) if isinstance(v, int) else tuple(int(b) for b in v)
        if not v or any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be ≥ 1, got {v} (batch 0 has nothing to run)")
        return v

    def pairs(self) -> list[tuple[int, int]]:
        """The ISL/OSL pairs to run (resolving the device default)."""
        return list(self.isl_osl) if self.isl_osl else parse_matrix(None, self.device)

    def batches(self, n_models: int) -> list[int]:
        """Batch size per model."""
        if self.batch is None:
            return [32] + [64] * (n_models - 1)
        if len(self.batch) == 1:
            return list(self.batch) * n_models
        if len(self.batch) != n_models:
            raise InputError(
                f"{len(self.batch)} batch sizes for {n_models} models",
                where="--batch",
                fix="give one batch size, or one per --model",
            )
        return list(self.batch)
