"""Text in, text out on top of an engine that streams (`EngineSpec.streams`; the built-in
`torch` engine by default): what the `torch` Triton model runs.

Kept outside the Triton model file so it can be tested without a server. A `Request` carries
what TensorRT-LLM's llmapi model reads from a request (prompt, max tokens, temperature, top-k,
top-p, seed, stop strings); `TextGenerator.complete` runs a batch of them in one engine call
(each row with its own seeded sampler, greedy when temperature is 0; with `echo` the text
starts with the prompt, as llmapi's default `exclude_input_from_output=False` gives), `steps`
and `stream` yield one request's text deltas (never the prompt, as TensorRT-LLM streams). Stop
strings end a completion before them, as TensorRT-LLM does by default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minitron_deploy.engines.base import Sampling, Streams
from minitron_deploy.engines.registry import ENGINES, get_engine
from minitron_deploy.errors import InputError

DEFAULT_ENGINE = "torch"


def load_engine(
    model_dir: str | Path, dtype: str = "auto", device: str = "cpu", engine: str = DEFAULT_ENGINE
) -> Streams:
    """The engine `engine` for `model_dir` (`auto`: the device's native dtype); its record
    must declare that it streams (samples token by token).

    Raises:
        InputError: an unknown engine, or one that does not stream.
    """
    streaming = sorted(n for n, s in ENGINES.items() if s.streams)
    if engine not in ENGINES or not ENGINES[engine].streams:
        raise InputError(
            f"engine {engine!r} cannot serve the Triton text model: it does not stream",
            where="engine",
            fix=f"use one of {streaming}",
        )
    return get_engine(engine, model_dir, dtype=dtype, device=device)


@dataclass
class Request:
    """One completion request."""

    prompt: str
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    echo: bool = False  # the text starts with the prompt (non-streaming only)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InputError(f"sampling_param_max_tokens={self.max_tokens} must be >= 1")
        self.stop = tuple(s for s in self.stop if s)


@dataclass
class Result:
    """A finished completion: text (prompt + completion when the request asked for the echo),
    why it ended ("stop" or "length"), the stop string that ended it ("" when none did), and
    the cumulative log-probability of its tokens."""

    text: str
    finish_reason: str
    stop_reason: str
    cumulative_logprob: float


@dataclass
class Step:
    """One streamed step: the new text, the cumulative log-probability so far, and whether it
    is the last step."""

    delta: str
    cumulative_logprob: float
    done: bool


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str]:
    """(text before the earliest stop string, that string) or (text, "")."""
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text, ""
    pos, s = min(hits)
    return text[:pos], s


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of `text` that could start a stop string (not yet sendable)."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


class TextGenerator:
    """Text generation for Triton requests: batched, or streamed as text deltas.

    Args:
        model_dir: HF Llama checkpoint folder (with tokenizer files).
        dtype: engine compute dtype ("auto": the device's fastest native dtype).
        device: "cpu" or "cuda[:N]".
        engine: an engine whose record declares `streams` (default: the built-in one).
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "auto",
        device: str = "cpu",
        engine: str = DEFAULT_ENGINE,
    ):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.engine = load_engine(model_dir, dtype=dtype, device=device, engine=engine)
        self.eos_ids = _eos_ids(self.tokenizer, self.model_dir)

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids (the tokenizer's default special tokens).

        Raises:
            InputError: the prompt encodes to no tokens.
        """
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise InputError("empty prompt: text_input encodes to no tokens")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _result(
        self, tokens: list[int], logprob: float, req: Request, prompt_ids: Sequence[int] = ()
    ) -> Result:
        text, hit = _cut_at_stop(self.decode(tokens), req.stop)
        ended = hit or (tokens and tokens[-1] in self.eos_ids)
        reason = "stop" if ended or len(tokens) < req.max_tokens else "length"
        if req.echo:
            text = self._echo(prompt_ids, tokens, req.stop)
        return Result(text, reason, hit, logprob)

    def _echo(self, prompt_ids: Sequence[int], tokens: list[int], stop: Sequence[str]) -> str:
        """Prompt + completion as TensorRT-LLM returns it with `exclude_input_from_output`
        false: the prompt and output ids detokenized together, cut before a stop string found
        in the completion part."""
        whole = self.decode([*prompt_ids, *tokens])
        head = self.decode(list(prompt_ids))
        start = len(head) if whole.startswith(head) else 0
        cut, _ = _cut_at_stop(whole[start:], stop)
        return whole[:start] + cut

    def complete(self, requests: Sequence[Request]) -> list[Result]:
        """One engine call for a whole batch; each row runs to its own `max_tokens`.

        A row's first k tokens are the same whatever else is in the batch and however long it
        runs (its sampler draws one sample per step), so shorter rows are cut from the batch.
        """
        if not requests:
            return []
        rows = [self.encode(r.prompt) for r in requests]
        longest = max(r.max_tokens for r in requests)
        out = self.engine.sample(rows, longest, [r.sampling for r in requests])
        results = []
        for (toks, lps), req, ids in zip(out, requests, rows, strict=True):
            n = _until_eos(toks[: req.max_tokens], self.eos_ids)
            results.append(self._result(toks[:n], sum(lps[:n]), req, ids))
        return results

    def generate(
        self,
        prompts: Sequence[str],
        max_tokens: Sequence[int],
        sampling: Sequence[Sampling] | None = None,
        stop: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """Texts of `complete` for plain lists (greedy unless `sampling` says otherwise)."""
        if len(prompts) != len(max_tokens):
            raise InputError(f"{len(prompts)} prompts but {len(max_tokens)} max_tokens values")
        sampling = sampling or [Sampling()] * len(prompts)
        stop = stop or [()] * len(prompts)
        reqs = [
            Request(p, m, s, tuple(x))
            for p, m, s, x in zip(prompts, max_tokens, sampling, stop, strict=True)
        ]
        return [r.text for r in self.complete(reqs)]

    def steps(
        self,
        prompt: str,
        max_tokens: int,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[Step]:
        """One request's text deltas as they become known, each with the log-probability of the
        tokens so far; the last step has `done` set (its delta may be empty) and `self.last`
        then holds the finished `Result`. The deltas concatenate to `complete`'s text.

        A delta that would end inside a multi-byte character, or in what may be the start of a
        stop string, is held back until it is known.
        """
        self.last: Result | None = None  # the finished stream's Result, once it ends
        req = Request(prompt, max_tokens, sampling or Sampling(), tuple(stop))
        ids = self.encode(prompt)
        gen: list[int] = []
        sent, lp = "", 0.0
        for tok, step_lp in self.engine.stream(ids, max_tokens, req.sampling):
            gen.append(tok)
            lp += step_lp
            text = self.decode(gen)
            cut, hit = _cut_at_stop(text, req.stop)
            if hit:
                self.last = self._result(gen, lp, req)
                yield Step(cut[len(sent) :], lp, True)
                return
            if tok in self.eos_ids or len(gen) >= max_tokens:
                break
            ready = len(text) - _held_back(text, req.stop)
            if not text[:ready].endswith("\ufffd") and ready > len(sent):
                yield Step(text[len(sent) : ready], lp, False)
                sent = text[:ready]
        self.last = self._result(gen, lp, req)
        rest = self.last.text[len(sent) :] if self.last.text.startswith(sent) else ""
        yield Step(rest, lp, True)

    def stream(
        self,
        prompt: str,
        max_tokens: int,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """The non-empty text deltas of `steps`; their concatenation is `complete`'s text."""
        for step in self.steps(prompt, max_tokens, sampling, stop):
            if step.delta:
                yield step.delta


def _until_eos(tokens: list[int], eos_ids: set[int]) -> int:
    """How many tokens to keep: up to and including the first EOS."""
    return next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))


def _eos_ids(tokenizer: Any, model_dir: Path) -> set[int]:
    import json

    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        p = model_dir / name
        if p.is_file():
            eos = json.loads(p.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
