"""Text in, text out on top of the built-in engine: what the `torch` Triton model runs.

Kept outside the Triton model file so it can be tested without a server. The engine contract
(`minitron_deploy.engines`): `get_engine("torch", model_dir, dtype=, device=)` returns an object
whose `generate(input_ids, max_new_tokens)` is greedy and returns the new tokens of each row (up
to and including EOS).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from minitron_deploy.errors import InputError


def load_engine(model_dir: str | Path, dtype: str = "auto", device: str = "cpu") -> Any:
    """The built-in `torch` engine for `model_dir` (`auto`: the device's native dtype)."""
    from minitron_deploy.engines.base import get_engine

    return get_engine("torch", model_dir, dtype=dtype, device=device)


class TextGenerator:
    """Greedy text generation for Triton requests: batched, or streamed as text deltas.

    Args:
        model_dir: HF Llama checkpoint folder (with tokenizer files).
        dtype: engine compute dtype ("auto": the device's fastest native dtype).
        device: "cpu" or "cuda[:N]".
    """

    def __init__(self, model_dir: str | Path, dtype: str = "auto", device: str = "cpu"):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.engine = load_engine(model_dir, dtype=dtype, device=device)
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

    def generate(self, prompts: Sequence[str], max_tokens: Sequence[int]) -> list[str]:
        """One engine call for a whole batch; each row is cut to its own `max_tokens`.

        Greedy decoding makes this exact: the first k tokens of a longer greedy run are the
        greedy run of length k.
        """
        if len(prompts) != len(max_tokens):
            raise InputError(f"{len(prompts)} prompts but {len(max_tokens)} max_tokens values")
        for m in max_tokens:
            if m < 1:
                raise InputError(f"sampling_param_max_tokens={m} must be >= 1")
        rows = [self.encode(p) for p in prompts]
        new = self.engine.generate(rows, max(max_tokens))
        return [self.decode(toks[:m]) for toks, m in zip(new, max_tokens, strict=True)]

    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]:
        """Yield text deltas one token at a time; their concatenation is `generate`'s text.

        Each step asks the engine for one greedy token after prompt + tokens so far. A delta
        that would end inside a multi-byte character is held back until it completes.
        """
        if max_tokens < 1:
            raise InputError(f"sampling_param_max_tokens={max_tokens} must be >= 1")
        ids = self.encode(prompt)
        gen: list[int] = []
        sent = ""
        for _ in range(max_tokens):
            step = self.engine.generate([ids + gen], 1)[0]
            if not step:
                break
            gen.append(step[0])
            text = self.decode(gen)
            if not text.endswith("\ufffd") and len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
            if step[0] in self.eos_ids:
                break
        text = self.decode(gen)
        if text != sent and text.startswith(sent):
            yield text[len(sent) :]


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
