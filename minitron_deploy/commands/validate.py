"""`minitron-deploy validate PROFILE`: check a profile and report every problem at once."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.run import add_offline, add_profile, offline_settings
from minitron_deploy.console import info
from minitron_deploy.profile import load_profile
from minitron_deploy.profile.schema import write_schema

NAME = "validate"
HELP = "Validate a YAML profile (all problems reported together, with YAML paths)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    add_offline(p)
    p.add_argument("--schema", metavar="PATH", help="also write the profile JSON schema here")


def run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, args.set, **offline_settings(args))
    if args.schema:
        write_schema(args.schema)
    info(f"[green]ok[/]: {args.profile} ({profile.name}: {len(profile.variants)} variants)")
    return 0
