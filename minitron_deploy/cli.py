"""Command-line entry point. Thin: parse, then hand over to a command module.

Each module in `minitron_deploy/commands/` is one sub-command and defines `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`. Command modules import torch and other heavy
packages inside `run` only, so `minitron-deploy --help` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import minitron_deploy.commands as pkg
from minitron_deploy import __version__
from minitron_deploy.errors import MinitronError


def _command_modules() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{pkg.__name__}.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minitron-deploy",
        description="Prune, distill, export and benchmark Llama checkpoints (Minitron method).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 ok, 2 bad input (nothing written when found before any
    work; a pipeline stage's own code when it finds it), 1 any other failure, 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MinitronError as e:
        kind = "error" if e.exit_code == 2 else "failed"
        print(f"minitron-deploy {args.command}: {kind}: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"minitron-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
