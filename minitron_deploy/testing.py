"""Tiny, deliberately odd-shaped Llama models and a small tokenizer, for tests and `ci-tiny`.

Odd sizes (hidden 96, 6 heads / 2 KV heads with explicit head_dim 16, FFN 200, vocab 301) keep
shape bugs from hiding behind powers of two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Llama-3.1's rope scaling, with a context short enough for tiny test models.
LLAMA31_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

TINY_DEFAULTS: dict[str, Any] = dict(
    vocab_size=301,
    hidden_size=96,
    intermediate_size=200,
    num_hidden_layers=5,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    rope_theta=10000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
    },
)

_CORPUS = (
    "def main(argv):\n    for i in range(10):\n        print(i, argv)\n    return 0\n"
    "The quick brown fox jumps over the lazy dog. class Model(object): pass\n"
    "import os, sys, json\nif __name__ == '__main__':\n    raise SystemExit(main(sys.argv))\n"
    "Return the value of the named attribute of object. Raises ValueError if it is missing.\n"
)


def tiny_config(**overrides: Any):
    """A `LlamaConfig` with the tiny defaults, updated by `overrides`."""
    from transformers import LlamaConfig

    from minitron_deploy.model.io import compat_config

    # Both rope spellings (transformers 5 reads rope_parameters, 4.57 rope_theta/rope_scaling).
    cfg = LlamaConfig.from_dict(compat_config({**TINY_DEFAULTS, **overrides}))
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def tiny_llama(seed: int = 0, **overrides: Any):
    """A randomly initialised tiny `LlamaForCausalLM` in float32, eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides))
    # Larger than HF's default init so that activations (and importance scores) differ clearly.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def tiny_tokenizer(vocab_size: int = 301):
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens, trained on a fixed text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    return fast


def make_tiny_checkpoint(
    out: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    dtype: str = "float32",
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a random tiny Llama checkpoint with tokenizer to `out` (atomically)."""
    from minitron_deploy.fsutil import atomic_dir
    from minitron_deploy.model.io import provenance, write_llama

    model = tiny_llama(seed, **overrides)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_llama(
            model,
            tmp,
            dtype=dtype,
            record=provenance(None, extra={"builtin": "tiny-llama", "seed": seed}),
        )
        if max_shard_size:  # re-save sharded
            for f in Path(tmp).glob("*.safetensors"):
                f.unlink()
            from minitron_deploy.model.io import resolve_dtype

            model.to(resolve_dtype(dtype)).save_pretrained(
                str(tmp), safe_serialization=True, max_shard_size=max_shard_size
            )
        tiny_tokenizer(model.config.vocab_size).save_pretrained(str(tmp))
        from minitron_deploy.model.io import make_compatible

        make_compatible(tmp)
    return Path(out)


class FlopsStandInEngine:
    """A STAND-IN for an inference engine, for tests where timing is not the point: it does
    not run the model; `generate` sleeps for the checkpoint's forward FLOPs per token x the
    tokens of the call x `SECONDS_PER_FLOP`, so measured speedups follow the compute ratio
    (batch-independent) within timer noise, in milliseconds."""

    name = "flops-stand-in"
    SECONDS_PER_FLOP = 2e-10

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", device: str = "cpu", **_):
        from minitron_deploy.model.io import read_config
        from minitron_deploy.model.shapes import LlamaShape

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
