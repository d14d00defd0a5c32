"""`minitron-deploy fetch NAME --out DIR`: materialise a built-in model as a clean HF checkpoint,
or random weights of a published Llama shape (`random:llama-3.1-8b`), written shard by shard."""

from __future__ import annotations

import argparse

from minitron_deploy.console import info
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_dir, check_output_dir
from minitron_deploy.model.random_init import write_random_checkpoint
from minitron_deploy.model.shapes import human
from minitron_deploy.model.teacher import builtin_model

NAME = "fetch"
HELP = (
    "Write a built-in model (smollm2-135m, tiny-llama) as an HF bf16 checkpoint, or random "
    "weights of a published shape (random:llama-3.2-1b|llama-3.2-3b|llama-3.1-8b)."
)
BUILTIN = ("smollm2-135m", "tiny-llama")
RANDOM = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        metavar="NAME",
        help=f"built-in model ({', '.join(BUILTIN)}) or random:SHAPE "
        f"(SHAPE: {', '.join(RANDOM)}; seeded random bf16 weights, real config, ~5 GB shards)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of random:SHAPE weights (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    import shutil

    if args.name.startswith("random:"):
        shape = args.name.split(":", 1)[1]
        if shape not in RANDOM:
            raise InputError(
                f"unknown random shape {shape!r}", fix=f"use random:{' | random:'.join(RANDOM)}"
            )
        rec = write_random_checkpoint(shape, args.out, seed=args.seed, overwrite=args.overwrite)
        info(
            f"wrote random {shape} ({human(rec['params'])} parameters, "
            f"{rec['bytes'] / 1e9:.2f} GB in {len(rec['files'])} files; tokenizer: "
            f"{rec['tokenizer']}) to {args.out}"
        )
        return 0
    if args.name not in BUILTIN:
        raise InputError(
            f"unknown model {args.name!r}",
            fix=f"use one of {list(BUILTIN)} or random:{' | random:'.join(RANDOM)}",
        )

    check_output_dir(args.out, overwrite=args.overwrite)
    src = builtin_model(args.name)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    info(f"wrote {args.name} to {args.out} (cached at {src})")
    return 0
