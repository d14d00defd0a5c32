"""The engine interface (`Engine`, and the capabilities `MeasuresItself` and `Streams`), and
input checks shared by back ends.

An engine is built from a local HF checkpoint folder and generates greedily, returning new
tokens only. Back ends are plain classes listed in `registry.ENGINES`, whose records declare
which capabilities each has; heavy packages are imported inside each back end, so importing
this module stays torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens: greedy (temperature 0, the default), or sampled from the
    softmax at `temperature`, restricted to the `top_k` most likely tokens (0: all) and to the
    smallest set whose probability reaches `top_p`, with a generator seeded by `seed` (None: a
    fresh random seed)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise InputError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise InputError(f"top_k={self.top_k} must be >= 0 (0: no limit)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@runtime_checkable
class Engine(Protocol):
    """What every back end offers."""

    name: str

    def generate(
        self,
        input_ids: torch.Tensor | Sequence[Sequence[int]],
        max_new_tokens: int,
        ignore_eos: bool = False,
    ) -> list[list[int]]:
        """Greedy generation; returns the new tokens of each row (up to and including EOS)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Name, dtype, device, model shape and options, for reports."""
        ...

    def close(self) -> None:
        """Free memory and external resources."""
        ...


@runtime_checkable
class MeasuresItself(Engine, Protocol):
    """An engine that times its own runs (an external benchmark tool): declared by
    `EngineSpec.measures_itself`; the matrix calls `prepare` once, then `throughput`."""

    def prepare(self, pairs: list[tuple[int, int]], batch: int) -> None:
        """Size the engine for all the (ISL, OSL) pairs to come at this batch."""
        ...

    def throughput(
        self, isl: int, osl: int, batch: int, num_requests: int | None = None
    ) -> dict[str, float]:
        """One timed run of `num_requests` synthetic ISL/OSL requests: at least `req_s` and
        `output_tok_s`."""
        ...


@runtime_checkable
class Streams(Engine, Protocol):
    """An engine that samples and streams token by token (what the Triton model runs):
    declared by `EngineSpec.streams`."""

    def sample(
        self,
        input_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sequence[Sampling] | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        """Each row's new tokens and their log-probabilities, row i drawn with `sampling[i]`
        (greedy by default)."""
        ...

    def stream(
        self, input_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None
    ) -> Iterator[tuple[int, float]]:
        """One prompt's (token, log-probability) one step at a time, until `max_new_tokens`
        or EOS (included)."""
        ...


def is_fp8_checkpoint(model_dir: str | Path) -> bool:
    """True when the folder holds a Model-Optimizer style FP8 export (config or side file)."""
    model_dir = Path(model_dir)
    side = model_dir / "hf_quant_config.json"
    if side.is_file():
        try:
            algo = json.loads(side.read_text()).get("quantization", {}).get("quant_algo")
        except (json.JSONDecodeError, AttributeError):
            algo = None
        if str(algo).upper() == "FP8":
            return True
    cfg_path = model_dir / "config.json"
    if cfg_path.is_file():
        try:
            q = json.loads(cfg_path.read_text()).get("quantization_config") or {}
        except json.JSONDecodeError:
            return False
        return str(q.get("quant_algo", "")).upper() == "FP8"
    return False


def refuse_fp8(model_dir: str | Path, engine: str) -> None:
    """Raise when `engine` (which has no FP8 path) is pointed at an FP8 checkpoint.

    Stock transformers loads Model-Optimizer FP8 weights but ignores their scales, so the logits
    would be garbage; failing loudly is the only safe answer.
    """
    if is_fp8_checkpoint(model_dir):
        raise InputError(
            f"{model_dir} is an FP8 checkpoint, and engine {engine!r} has no FP8 support "
            "(it would ignore the weight scales and produce garbage)",
            where="--engine",
            fix="use --engine torch or --engine trtllm, or pass the BF16 checkpoint",
        )


def as_rows(input_ids: Any) -> list[list[int]]:
    """Prompt token ids as a list of int lists, from a [B, L] tensor or nested sequences.

    Raises:
        InputError: an empty batch, an empty prompt, or a tensor that is not 2-D.
    """
    if hasattr(input_ids, "tolist") and hasattr(input_ids, "ndim"):
        if input_ids.ndim != 2:
            raise InputError(
                f"input_ids must be a 2-D [batch, length] tensor, got shape "
                f"{tuple(input_ids.shape)}",
                fix="add a batch dimension: input_ids[None]",
            )
        rows = input_ids.tolist()
    else:
        rows = [list(map(int, r)) for r in input_ids]
    if not rows:
        raise InputError("batch size is 0: there is nothing to generate", fix="pass ≥ 1 prompt")
    if any(len(r) == 0 for r in rows):
        raise InputError("a prompt has no tokens", fix="every prompt needs at least one token")
    return rows


def check_lengths(
    rows: list[list[int]], max_new_tokens: int, max_positions: int, vocab_size: int | None = None
) -> None:
    """Check that every prompt plus `max_new_tokens` fits the model's positions.

    Raises:
        InputError: `max_new_tokens` < 1, ISL + OSL beyond `max_positions`, or a token id
            outside the vocabulary.
    """
    if max_new_tokens < 1:
        raise InputError(
            f"max_new_tokens={max_new_tokens} must be ≥ 1", where="--max-new-tokens / osl"
        )
    longest = max(len(r) for r in rows)
    if longest + max_new_tokens > max_positions:
        raise InputError(
            f"input length {longest} + output length {max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds the model's max_position_embeddings "
            f"{max_positions}",
            where="isl/osl",
            fix="shorten the prompt or the output, or use a model with more positions",
        )
    if vocab_size is not None:
        bad = [t for r in rows for t in r if not 0 <= t < vocab_size]
        if bad:
            raise InputError(
                f"token id {bad[0]} is outside the vocabulary (size {vocab_size})",
                fix="tokenize with the model's own tokenizer",
            )


def truncate_at_eos(rows: list[list[int]], eos_ids: set[int]) -> list[list[int]]:
    """Cut each row after its first EOS token (the EOS itself is kept)."""
    out = []
    for r in rows:
        cut = next((i + 1 for i, t in enumerate(r) if t in eos_ids), len(r))
        out.append(r[:cut])
    return out


def eos_ids_of(model_dir: str | Path) -> set[int]:
    """EOS token ids from generation_config.json, else config.json (may be empty)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        p = Path(model_dir) / name
        if p.is_file():
            try:
                v = json.loads(p.read_text()).get("eos_token_id")
            except json.JSONDecodeError:
                continue
            if v is not None:
                ids.update(v if isinstance(v, list) else [v])
                break
    return {int(i) for i in ids}
