"""`minitron-deploy validate PROFILE`: check a profile and report every problem at once."""

from __future__ import annotations

import argparse

NAME = "validate"
HELP = "Validate a YAML profile (all problems reported together, with YAML paths)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from minitron_deploy.commands.run import add_offline, add_profile

    add_profile(p)
    add_offline(p)
    p.add_argument("--schema", metavar="PATH", help="also write the profile JSON schema here")


def run(args: argparse.Namespace) -> int:
    from minitron_deploy.commands.run import offline_settings
    from minitron_deploy.console import info
    from minitron_deploy.profile import load_profile

    profile = load_profile(args.profile, args.set, **offline_settings(args))
    if args.schema:
        from minitron_deploy.profile.schema import write_schema

        write_schema(args.schema)
    info(f"[green]ok[/]: {args.profile} ({profile.name}: {len(profile.variants)} variants)")
    return 0
