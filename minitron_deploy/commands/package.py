"""`minitron-deploy package triton --model DIR --out REPO`: write a Triton model repository."""

from __future__ import annotations

import argparse

from minitron_deploy.cliopts import add_options, build
from minitron_deploy.console import info, print_json
from minitron_deploy.fsutil import check_output_dir
from minitron_deploy.triton import package_triton
from minitron_deploy.triton.config import PackageConfig

NAME = "package"
HELP = "Package a checkpoint for serving (triton: a Triton model repository)."


RENAME = {"tensor_parallel_size": "tp", "instance_count": "instances"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    t = sub.add_parser("triton", help="a Triton model repository (torch or TensorRT-LLM)")
    t.add_argument("--model", required=True, help="HF Llama checkpoint folder (with tokenizer)")
    t.add_argument("--out", required=True, help="repository folder to create")
    add_options(
        t.add_argument_group("repository settings (PackageConfig)"), PackageConfig, rename=RENAME
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    cfg = build(PackageConfig, args, what="invalid package options", rename=RENAME)
    check_output_dir(args.out, overwrite=args.overwrite)
    summary = package_triton(args.model, args.out, cfg, overwrite=args.overwrite)
    info(f"wrote Triton repository {summary['repo']} ({summary['layout']}: {summary['models']})")
    if args.json:
        print_json(summary)
    return 0
