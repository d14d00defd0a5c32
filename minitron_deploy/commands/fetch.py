"""`minitron-deploy fetch NAME --out DIR`: materialise a built-in model as a clean HF checkpoint."""

from __future__ import annotations

import argparse

from minitron_deploy.console import info
from minitron_deploy.fsutil import atomic_dir
from minitron_deploy.model.teacher import builtin_model

NAME = "fetch"
HELP = "Write a built-in model (smollm2-135m, tiny-llama) as an HF bf16 checkpoint."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["smollm2-135m", "tiny-llama"], help="built-in model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    import shutil

    src = builtin_model(args.name)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    info(f"wrote {args.name} to {args.out} (cached at {src})")
    return 0
