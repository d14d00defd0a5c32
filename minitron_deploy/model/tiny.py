"""The built-in tiny Llama (`builtin:tiny-llama`): deliberately odd-shaped random weights and a
small byte-level tokenizer, for tests, `ci-tiny` and the built-in teachers (`model/teacher.py`).

Odd sizes (hidden 96, 6 heads / 2 KV heads with explicit head_dim 16, FFN 200, vocab 301) keep
shape bugs from hiding behind powers of two. torch, transformers and tokenizers are imported
inside the functions (the profile checks read `TINY_DEFAULTS` without them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.fsutil import atomic_dir
from minitron_deploy.model.io import (
    compat_config,
    make_compatible,
    provenance,
    resolve_dtype,
    write_llama,
)

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
            model.to(resolve_dtype(dtype)).save_pretrained(
                str(tmp), safe_serialization=True, max_shard_size=max_shard_size
            )
        tiny_tokenizer(model.config.vocab_size).save_pretrained(str(tmp))
        make_compatible(tmp)
    return Path(out)
