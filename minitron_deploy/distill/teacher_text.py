"""Text a model writes by itself, for distillation on the teacher's own distribution.

`sample_text(model, out, settings)` samples rows from BOS (no prompt, no corpus read) with
HF `generate` (temperature, top-p, no top-k) and writes them as JSONL batches
(`batch-0000.jsonl`, ... with a `text` field), each file written atomically, so an interrupted
run continues at the first missing batch. `.sample.json` records the settings and the model's
weights digest; a folder made with other settings or another model is refused. The folder is
a data source: mix it into the training text with a weight, e.g.
`--data builtin:mixed,DIR*40` (`data.text`: `SRC*N`), so a small sample is a sizeable share of
the windows. Batch b is seeded with `seed * 1_000_003 + b`: the same settings on the same
machine give the same text.

    minitron-deploy data sample --model builtin:smollm2-135m --tokens 163840 --out teacher-text
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from minitron_deploy.console import Progress
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_write_bytes, atomic_write_json, sha256_file
from minitron_deploy.hardware import auto_dtype_name
from minitron_deploy.model.io import weight_files

SETTINGS = ".sample.json"  # a dot file: a folder source does not read it as text


@dataclass(frozen=True)
class SampleSettings:
    """What to sample: `tokens` new tokens at most (whole batches of `batch` rows of up to
    `max_new_tokens`; rows that end at EOS are shorter), at `temperature` and `top_p`."""

    tokens: int
    batch: int = 64
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        bad = []
        if self.tokens < 1 or self.batch < 1 or self.max_new_tokens < 1:
            bad.append("tokens, batch and max_new_tokens must be >= 1")
        if not self.temperature > 0:
            bad.append(f"temperature {self.temperature} must be > 0")
        if not 0 < self.top_p <= 1:
            bad.append(f"top_p {self.top_p} must be in (0, 1]")
        if bad:
            fix = "e.g. --tokens 163840 --temperature 1 --top-p 0.95"
            raise InputError("; ".join(bad), fix=fix)

    @property
    def batches(self) -> int:
        return math.ceil(self.tokens / (self.batch * self.max_new_tokens))


def _identity(model_dir: Path, s: SampleSettings) -> dict[str, Any]:
    weights = {f.name: sha256_file(f) for f in weight_files(model_dir)}
    return {"settings": asdict(s), "model_weights_sha256": weights}


def sample_text(
    model_dir: str | Path, out: str | Path, s: SampleSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Sample `s` from the model in `model_dir` into the folder `out` (see the module).

    Returns:
        {"out", "batches", "made", "tokens", "seconds", "tokens_per_s"}: `made` batches sampled
        by this call, `tokens` the non-EOS tokens it sampled.

    Raises:
        InputError: `out` holds batches of other settings or another model.
    """
    model_dir, out = Path(model_dir), Path(out)
    ident = _identity(model_dir, s)
    stored = out / SETTINGS
    if stored.is_file() and json.loads(stored.read_text()) != ident:
        raise InputError(
            "the folder holds text sampled with other settings or from another model",
            where=str(out),
            fix="pass another --out, or remove the folder to sample again",
        )
    if not stored.is_file() and any(out.glob("batch-*.jsonl")):
        raise InputError(
            "the folder holds sampled batches without their settings (.sample.json)",
            where=str(out),
            fix="pass another --out, or remove the folder to sample again",
        )
    todo = [b for b in range(s.batches) if not (out / f"batch-{b:04d}.jsonl").is_file()]
    result = {"out": str(out), "batches": s.batches, "made": 0, "tokens": 0, "seconds": 0.0}
    if not todo:
        return {**result, "tokens_per_s": None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stored, ident)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = getattr(torch, auto_dtype_name("cpu"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    bar = Progress("sample text: batches", s.batches, start=s.batches - len(todo), enabled=progress)
    t0 = time.monotonic()
    for b in todo:
        torch.manual_seed(s.seed * 1_000_003 + b)
        ids = torch.full((s.batch, 1), bos)
        with torch.inference_mode():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=0,
                max_new_tokens=s.max_new_tokens,
                pad_token_id=tok.eos_token_id,
            )
        rows = [r[1:] for r in gen]
        lines = [json.dumps({"text": tok.decode(r, skip_special_tokens=True)}) for r in rows]
        atomic_write_bytes(out / f"batch-{b:04d}.jsonl", ("\n".join(lines) + "\n").encode())
        result["made"] += 1
        result["tokens"] += sum(int((r != tok.eos_token_id).sum()) for r in rows)
        rate = result["tokens"] / max(time.monotonic() - t0, 1e-9)
        bar.update(s.batches - len(todo) + result["made"], msg=f"{rate:.0f} tok/s")
    bar.close()
    result["seconds"] = round(time.monotonic() - t0, 1)
    return {**result, "tokens_per_s": round(result["tokens"] / max(result["seconds"], 1e-9), 1)}
