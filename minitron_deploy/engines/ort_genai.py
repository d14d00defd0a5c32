"""Reference engine: onnxruntime-genai, after converting the HF folder with its model builder.

The builder (`python -m onnxruntime_genai.models.builder -i DIR -o OUT -p fp32 -e cpu`; `-i` is a
local folder, `-m` would be a hub name) needs `onnx_ir` besides onnxruntime-genai. On CPU it
offers fp32 only among float precisions. The ONNX model is cached by the checkpoint's content
hash. Generation runs at most 32 rows per call (the runtime's cap), so larger batches are split.
With `ignore_eos`, EOS is suppressed with `min_length` (genai has no "never stop" switch): every
row gets exactly `max_new_tokens` tokens, but the token values can differ from the other engines
from the point where EOS would have won the argmax.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.engines.base import as_rows, check_lengths, truncate_at_eos
from minitron_deploy.errors import DependencyError, InputError
from minitron_deploy.fsutil import atomic_dir, sha256_tree
from minitron_deploy.hardware import lacking
from minitron_deploy.model.io import read_config
from minitron_deploy.model.teacher import cache_root

MAX_ROWS = 32
PIP = "pip install 'onnxruntime-genai>=0.18' 'onnx-ir>=1.1' 'onnx>=1.16'"


def _precision(dtype: str, device: str) -> str:
    if dtype in ("auto", "float32", "fp32"):
        return "fp32" if device == "cpu" or dtype != "auto" else "fp16"
    names = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}
    if dtype not in names:
        raise InputError(f"unsupported dtype {dtype!r} for ort", fix="use float32 on CPU")
    if device == "cpu":
        raise InputError(
            f"onnxruntime-genai on CPU supports fp32 only among float precisions, not {dtype}",
            where="--dtype",
            fix="pass --dtype float32 (or auto) with --engine ort on CPU",
        )
    return names[dtype]


def build_onnx(
    model_dir: str | Path, precision: str = "fp32", ep: str = "cpu", cache: Path | None = None
) -> Path:
    """Convert an HF checkpoint with the onnxruntime-genai builder; cached by content hash.

    Returns:
        The folder holding `model.onnx` and `genai_config.json`.

    Raises:
        DependencyError: onnxruntime-genai or onnx_ir is missing.
        InputError: the builder failed (its last output lines are in the message).
    """

    missing = lacking(("onnxruntime_genai", "onnx_ir", "onnx"), ())
    if missing:
        raise DependencyError(f"--engine ort needs {missing}", fix=PIP)

    key = sha256_tree(model_dir, exclude=("provenance.json",))[:16]
    out = (cache or cache_root() / "onnx") / f"{key}-{precision}-{ep}"
    if (out / "genai_config.json").is_file():
        return out
    with atomic_dir(out, overwrite=True) as tmp:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir)]
        cmd += ["-o", str(tmp), "-p", precision, "-e", ep, "-c", str(tmp / "_cache")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise InputError(f"onnxruntime-genai builder failed: {tail}", where=str(model_dir))
        import shutil

        shutil.rmtree(tmp / "_cache", ignore_errors=True)
    return out


class OrtOptions(BaseModel):
    """Keyword options of `OrtGenaiEngine`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    onnx_cache: Path | None = Field(
        None, description="where converted models are kept (default: the minitron-deploy cache)"
    )


class OrtGenaiEngine:
    """Greedy generation with onnxruntime-genai on a converted copy of the checkpoint.

    Args:
        model_dir: HF checkpoint folder (not FP8), or a folder that already holds
            `genai_config.json`.
        dtype: "auto"/"float32" on CPU; fp16/bf16 on CUDA.
        device: "cpu" or "cuda".
        onnx_cache: where converted models are kept (default: the minitron-deploy cache).
    """

    name = "ort"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        onnx_cache: str | Path | None = None,
    ):
        import json

        self.model_dir = Path(model_dir)
        ep = "cuda" if str(device).startswith("cuda") else "cpu"
        self.precision = _precision(dtype, ep)
        if (self.model_dir / "genai_config.json").is_file():
            self.onnx_dir = self.model_dir
        else:
            read_config(model_dir)
            self.onnx_dir = build_onnx(
                model_dir, self.precision, ep, Path(onnx_cache) if onnx_cache else None
            )
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(self.onnx_dir))
        mcfg = json.loads((self.onnx_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(mcfg["context_length"])
        self.vocab_size = int(mcfg["vocab_size"])
        eos = mcfg.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        self.device = ep

    def generate(
        self, input_ids: Any, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        """Greedy new tokens per prompt, ≤ 32 rows per runtime call."""
        import numpy as np

        rows = as_rows(input_ids)
        check_lengths(rows, max_new_tokens, self.context_length, self.vocab_size)
        out: list[list[int]] = [[] for _ in rows]
        for length in sorted({len(r) for r in rows}):
            idx = [i for i, r in enumerate(rows) if len(r) == length]
            for c in range(0, len(idx), MAX_ROWS):
                part = idx[c : c + MAX_ROWS]
                params = self.og.GeneratorParams(self.model)
                total = length + max_new_tokens
                params.set_search_options(
                    max_length=total,
                    min_length=total if ignore_eos else 0,
                    do_sample=False,
                    batch_size=len(part),
                )
                gen = self.og.Generator(self.model, params)
                gen.append_tokens(np.array([rows[i] for i in part], dtype=np.int32))
                while not gen.is_done():
                    gen.generate_next_token()
                for j, i in enumerate(part):
                    new = [int(t) for t in gen.get_sequence(j)][length:total]
                    out[i] = new if ignore_eos else truncate_at_eos([new], self.eos_ids)[0]
                del gen
        return out

    def describe(self) -> dict[str, Any]:
        """Engine name, precision, device and the converted model folder."""
        return {
            "engine": self.name,
            "model_dir": str(self.model_dir),
            "onnx_dir": str(self.onnx_dir),
            "dtype": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision],
            "weights": self.precision,
            "device": self.device,
            "max_rows_per_call": MAX_ROWS,
        }

    def close(self) -> None:
        """Drop the runtime model."""
        self.model = None
