"""Random-weight checkpoints of published Llama shapes, written shard by shard.

`write_random_checkpoint("llama-3.1-8b", out)` writes the published config (`shapes.
PUBLISHED_CONFIGS`) with seeded normal weights in bf16, one tensor at a time through
`stream.ShardedWriter` (~5 GB shards + index): memory is the largest tensor (the embedding,
1.05 GB for 8B) plus a float32 chunk, whatever the model size. Each tensor has its own
generator seeded from (seed, name), so a tensor's values do not depend on the shard layout or
on the other tensors. Linear weights and embeddings are N(0, 0.02) (the published
`initializer_range`), RMSNorm weights 1: a forward pass stays finite at every depth.

No Llama-3 tokenizer ships on this machine: the checkpoint gets SmolLM2-135M's tokenizer
(49,152 ids, from the built-in `smollm2-135m`), whose ids all lie below the config's
vocab_size of 128,256. Calibration and benchmark text tokenizes and runs (ids >= 49,152 are
never produced); the embedding rows above them are random and unused. A model whose vocabulary
is smaller than SmolLM2's (the tiny test shape) gets a byte-level BPE trained to exactly its
vocabulary (`testing.tiny_tokenizer`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_dir, atomic_write_json, check_output_dir
from minitron_deploy.model.io import (
    PROVENANCE,
    TOKENIZER_FILES,
    compat_config,
    make_compatible,
    provenance,
)
from minitron_deploy.model.shapes import PUBLISHED_CONFIGS, LlamaShape
from minitron_deploy.model.stream import SHARD_BYTES, ShardedWriter, TensorSpec, llama_specs
from minitron_deploy.model.teacher import builtin_model
from minitron_deploy.model.tiny import tiny_tokenizer

STD = 0.02
_CHUNK = 1 << 24  # float32 elements generated at a time (64 MB)
TOKENIZERS = {
    "smollm2": "SmolLM2-135M's tokenizer (49,152 ids; every id below vocab_size)",
    "tiny": "a byte-level BPE trained to exactly vocab_size ids (testing.tiny_tokenizer)",
}


def random_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The published config of `name` (a key of `PUBLISHED_CONFIGS`), with `overrides`."""
    if name not in PUBLISHED_CONFIGS:
        raise InputError(
            f"unknown random model {name!r}",
            fix=f"use one of {['random:' + k for k in PUBLISHED_CONFIGS]}",
        )
    return {**PUBLISHED_CONFIGS[name], **overrides}


def random_tensor(spec: TensorSpec, seed: int):
    """The seeded random value of one tensor (its own generator: (seed, name))."""
    import torch

    dtype = getattr(torch, spec.dtype)
    if spec.name.endswith("norm.weight"):
        return torch.ones(spec.shape, dtype=dtype)
    key = hashlib.sha256(f"{seed}:{spec.name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))
    out = torch.empty(spec.shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):  # bounded float32 scratch
        n = min(_CHUNK, flat.numel() - start)
        flat[start : start + n] = torch.randn(n, generator=gen).mul_(STD)
    return out


def write_tokenizer(dest: Path, vocab_size: int) -> str:
    """Write a tokenizer that fits `vocab_size` into `dest`; returns its `TOKENIZERS` key."""

    if vocab_size >= 49152:
        import shutil

        src = builtin_model("smollm2-135m")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
        kind = "smollm2"
    else:
        tiny_tokenizer(vocab_size).save_pretrained(str(dest))
        kind = "tiny"
    make_compatible(dest)
    return kind


def write_random_checkpoint(
    name: str,
    out: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_bytes: int = SHARD_BYTES,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a random-weight checkpoint of the published shape `name` to `out`, atomically.

    Args:
        name: a key of `PUBLISHED_CONFIGS` ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b").
        out: destination folder.
        seed: seed of every tensor.
        overwrite: replace an existing `out`.
        max_shard_bytes: shard size (5 GB, as the hub's checkpoints).
        overrides: config fields to change (tests use a tiny shape).

    Returns:
        A summary: name, parameters, bytes, files, tokenizer.
    """
    import json

    from transformers import GenerationConfig

    cfg = compat_config(random_config(name, **(overrides or {})))
    shape = LlamaShape.from_config(cfg)
    check_output_dir(out, overwrite=overwrite)
    specs = llama_specs(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = ShardedWriter(tmp, specs, max_shard_bytes)
        for spec in specs:
            writer.write(spec.name, random_tensor(spec, seed))
        files = writer.close()
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        gen = GenerationConfig(bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"])
        gen.save_pretrained(str(tmp))
        tokenizer = write_tokenizer(tmp, shape.vocab_size)
        record = {
            "name": name,
            "seed": seed,
            "std": STD,
            "overrides": overrides or {},
            "tokenizer": TOKENIZERS[tokenizer],
        }
        atomic_write_json(tmp / PROVENANCE, provenance(None, extra={"random": record}))
    return {
        **record,
        "out": str(out),
        "params": shape.num_parameters,
        "bytes": sum(s.nbytes for s in specs),
        "files": files,
    }
