"""`minitron-deploy validate PROFILE`: check a profile and report every problem at once."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.run import add_offline, add_profile, offline_settings
from minitron_deploy.console import info
from minitron_deploy.model.footprint import check_memory
from minitron_deploy.pipeline.graph import build_graph
from minitron_deploy.pipeline.stages import peak_needs
from minitron_deploy.profile import load_profile
from minitron_deploy.profile.schema import write_schema

NAME = "validate"
HELP = "Validate a YAML profile (all problems reported together, with YAML paths)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    add_offline(p)
    p.add_argument("--schema", metavar="PATH", help="also write the profile JSON schema here")


def run(args: argparse.Namespace) -> int:
    offline = offline_settings(args)
    profile = load_profile(args.profile, args.set, **offline)
    # Stages this machine's memory cannot hold even streamed / layer by layer (exit 2).
    from pathlib import Path

    if offline["source_shape"] is None:  # --source-shape plans for another machine
        nodes = build_graph(profile, Path(args.profile).parent)
        launched = {n.id for n in nodes if profile.launcher.runs(n.stage)}
        check_memory(peak_needs(nodes, launched))
    if args.schema:
        write_schema(args.schema)
    info(f"[green]ok[/]: {args.profile} ({profile.name}: {len(profile.variants)} variants)")
    return 0
