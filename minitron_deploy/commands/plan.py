"""`minitron-deploy plan PROFILE`: which stages are cached, which will run and why."""

from __future__ import annotations

import argparse

NAME = "plan"
HELP = "Show each stage of a profile: cached, to run (and why) or unavailable."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from minitron_deploy.commands.run import add_common

    add_common(p)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from minitron_deploy.commands.run import workdir
    from minitron_deploy.console import print_json
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    profile = load_profile(args.profile, args.set)
    rows = Pipeline(profile, workdir(args), args.profile).plan(args.only)
    if args.json:
        print_json({"plan": rows})
        return 0
    table = Table(title=f"plan: {profile.name}")
    for col in ("stage", "status", "why", "key"):
        table.add_column(col)
    colors = {"cached": "green", "to run": "yellow", "unavailable": "red"}
    for r in rows:
        table.add_row(r["node"], f"[{colors[r['status']]}]{r['status']}", r["why"], r["key"])
    Console().print(table)
    return 0
