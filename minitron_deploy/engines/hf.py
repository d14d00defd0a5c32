"""Reference engines: transformers `generate`, greedy, with a dynamic or a static KV cache.

These are the baselines the built-in engine is measured against in the same harness. With
`ignore_eos` the EOS id is removed from the generation config (not suppressed with
`min_new_tokens`, which would change the argmax), so every row gets exactly `max_new_tokens`
tokens and matches the built-in engine token for token. On CUDA, transformers compiles the
forward pass by itself when the cache is static.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.engines.base import (
    as_rows,
    check_lengths,
    eos_ids_of,
    truncate_at_eos,
)
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import load_llama
from minitron_deploy.model.shapes import LlamaShape


class HFEngine:
    """`LlamaForCausalLM.generate` with the default dynamic cache.

    Args:
        model_dir: HF checkpoint folder (BF16/FP32 only; FP8 checkpoints are refused).
        dtype: "auto" (the device's fastest native dtype), "bfloat16", "float16", "float32".
        device: "cpu" or "cuda[:N]".
    """

    name = "hf"
    cache_implementation: str | None = None

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.model = load_llama(model_dir, dtype=compute_dtype(dtype, device), device=device)
        self.device = device
        self.eos_ids = eos_ids_of(model_dir)
        cfg = self.model.config
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0

    def generate(
        self, input_ids: Any, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        """Greedy new tokens per prompt; unequal prompt lengths run as separate groups."""
        import torch
        from transformers import GenerationConfig

        rows = as_rows(input_ids)
        cfg = self.model.config
        check_lengths(rows, max_new_tokens, cfg.max_position_embeddings, cfg.vocab_size)
        eos = None if ignore_eos or not self.eos_ids else sorted(self.eos_ids)
        gc = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=self.pad_id,
            bos_token_id=None,
            cache_implementation=self.cache_implementation,
        )
        out: list[list[int]] = [[] for _ in rows]
        for length in sorted({len(r) for r in rows}):
            idx = [i for i, r in enumerate(rows) if len(r) == length]
            ids = torch.tensor([rows[i] for i in idx], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                seq = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), generation_config=gc
                )
            new = seq[:, length:].tolist()
            if eos is not None:
                new = truncate_at_eos(new, self.eos_ids)
            for i, g in zip(idx, new, strict=True):
                out[i] = g
        return out

    def describe(self) -> dict[str, Any]:
        """Engine name, dtype, device, cache kind and model shape."""

        dtype = next(self.model.parameters()).dtype
        return {
            "engine": self.name,
            "model_dir": str(self.model_dir),
            "dtype": str(dtype).replace("torch.", ""),
            "weights": str(dtype).replace("torch.", ""),
            "device": str(self.device),
            "cache": self.cache_implementation or "dynamic",
            "shape": LlamaShape.from_config(self.model.config).as_dict(),
        }

    def close(self) -> None:
        """Drop the model."""
        self.model = None


class HFStaticEngine(HFEngine):
    """`generate` with `cache_implementation="static"` (preallocated cache, compile on CUDA)."""

    name = "hf-static"
    cache_implementation = "static"
