"""Test helpers: the tiny, deliberately odd-shaped Llama models and tokenizer (which live in
`model/tiny.py`, re-exported here), Llama-3.1 rope settings, a stand-in engine and tolerances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.model.io import read_config
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.model.tiny import (
    TINY_DEFAULTS,
    make_tiny_checkpoint,
    tiny_config,
    tiny_llama,
    tiny_tokenizer,
)

__all__ = [
    "LLAMA31_ROPE",
    "TINY_DEFAULTS",
    "FlopsStandInEngine",
    "make_tiny_checkpoint",
    "rel_tolerance",
    "tiny_config",
    "tiny_llama",
    "tiny_tokenizer",
]

# Llama-3.1's rope scaling, with a context short enough for tiny test models.
LLAMA31_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


class FlopsStandInEngine:
    """A STAND-IN for an inference engine, for tests where timing is not the point: it does
    not run the model; `generate` sleeps for the checkpoint's forward FLOPs per token x the
    tokens of the call x `SECONDS_PER_FLOP`, so measured speedups follow the compute ratio
    (batch-independent) within timer noise, in milliseconds."""

    name = "flops-stand-in"
    SECONDS_PER_FLOP = 2e-10

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", device: str = "cpu", **_):
        self.shape = LlamaShape.from_config(read_config(model_dir))
        self.model_dir = str(model_dir)

    def generate(self, input_ids, max_new_tokens: int, ignore_eos: bool = False):
        import time

        rows = [list(r) for r in input_ids]
        tokens = sum(len(r) for r in rows) + len(rows) * max_new_tokens
        time.sleep(self.shape.forward_flops_per_token() * tokens * self.SECONDS_PER_FLOP)
        return [[0] * max_new_tokens for _ in rows]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_dir, "dtype": "none", "device": "cpu"}

    def close(self) -> None:
        pass


def rel_tolerance(dtype: Any, steps: int = 1, factor: float = 4.0) -> float:
    """Relative tolerance for two runs of one computation that differ only in reduction order.

    Each reduction rounds at the dtype's unit epsilon, and a training step feeds its rounded
    update into the next, so a difference grows about linearly in steps: the bound is
    `factor x eps(dtype) x (steps + 1)`. Measured on the tiny test models (2 KD steps, chunked
    vs unchunked KL with gradient checkpointing): float32 runs differ by 1.5e-7 (about 1 eps),
    bf16-autocast runs by 5.3e-4 (eps / 15: products are rounded to bf16, then averaged over
    many tokens in fp32). `factor` = 4 leaves a margin of 10x for float32 and more for bf16:
    with 2 steps float32 allows 1.4e-6, bfloat16 9.4e-2.
    A test using it must also show its compared value is sensitive: e.g. that every loss term is
    far larger than this tolerance, so dropping one or flipping its sign fails the comparison.

    Args:
        dtype: a torch dtype or its torch name ("float32", "bfloat16").
        steps: optimizer steps between the start and the compared value (0 for a forward).
        factor: multiples of epsilon per step.
    """
    import torch

    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, str(dtype).removeprefix("torch."))
    eps = torch.finfo(dtype).eps
    return factor * eps * (steps + 1)
