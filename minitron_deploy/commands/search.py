"""`minitron-deploy search PROFILE`: the profile's architecture search alone (and what it needs:
the source, its importance scores, the text), cached like `run`; prints the candidate table."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.run import add_profile, add_workdir, failure_code, workdir
from minitron_deploy.console import err_console, print_json
from minitron_deploy.errors import ConfigError
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.profile import load_profile

NAME = "search"
HELP = "Search the best student that meets the profile's budget (speed, params, memory)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    add_workdir(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    profile = load_profile(args.profile, args.set)
    if profile.search is None:
        raise ConfigError(
            f"profile {args.profile} has no search section",
            fix="add `search: {budget: {min_speedup: 1.8}}` "
            "(see profiles/smollm2-135m-search.yaml)",
        )
    console = err_console()
    log = (lambda m: None) if args.quiet else (lambda m: console.print(m, highlight=False))
    record = Pipeline(profile, workdir(args), args.profile).run(
        "search", progress=not args.quiet, log=log
    )
    if record["status"] != "ok":
        console.print(f"[red]search failed at {record['failed_stage']}: {record['error']}")
        return failure_code(record)
    stage = next(s for s in record["stages"] if s["node"] == "search")
    report = Path(stage["outputs"]["report"])
    print(report.read_text())
    console.print(f"report: {report}\nchart: {stage['outputs']['pareto']}")
    if args.json:
        print_json(stage.get("metrics", {}))
    return 0
