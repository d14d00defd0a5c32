"""`minitron-deploy plan PROFILE`: which stages are cached, which will run and why, and about
how long and how much disk the run will take on this machine."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.run import add_common, add_offline, offline_settings, workdir
from minitron_deploy.console import clock, err_console, print_json
from minitron_deploy.hardware import auto_dtype_name, processor
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.pipeline.estimate import ACCURACY
from minitron_deploy.profile import load_profile

NAME = "plan"
HELP = "Show each stage of a profile: cached, to run (and why) or unavailable; time and disk."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_offline(p)
    p.add_argument(
        "--brief", action="store_true", help="only the one-line estimate (time, disk, machine)"
    )


def totals(rows: list[dict]) -> str:
    """One line: stages to run, estimated time and disk on this machine, in the dtype the run
    will compute in, with the accuracy benchmarks/estimates.py measured."""

    todo = [r for r in rows if r["status"] == "to run"]
    secs = [r["est_seconds"] for r in todo]
    disk = [r["est_bytes"] for r in todo]
    machine = f"{processor()['summary']}, computing in {auto_dtype_name('cpu')}"
    if not todo:
        return f"nothing to run: every stage is cached ({machine})"
    time_text = (
        f"about {clock(sum(secs))}"
        if None not in secs
        else "unknown time (the source shape or a text source is not here)"
    )
    disk_text = f"about {sum(disk) / 1e9:.1f} GB" if None not in disk else "unknown disk"
    return (
        f"{len(todo)} of {len(rows)} stages to run: {time_text} and {disk_text} of cache on "
        f"{machine} (estimates, within about {ACCURACY:g}x)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    offline = offline_settings(args)
    profile = load_profile(args.profile, args.set, **offline)
    pipe = Pipeline(profile, workdir(args), args.profile, source_shape=offline["source_shape"])
    rows = pipe.plan(args.only)
    line = totals(rows)
    if args.json:
        print_json({"plan": rows, "estimate": line, "probe": getattr(pipe, "probe", None)})
        return 0
    console = err_console()
    if not args.brief:
        table = Table(title=f"plan: {profile.name}")
        for col in ("stage", "status", "why", "est. time", "disk", "memory", "key"):
            table.add_column(col)
        colors = {"cached": "green", "to run": "yellow", "unavailable": "red"}
        for r in rows:
            t, b = r["est_seconds"], r["est_bytes"]
            table.add_row(
                r["node"],
                f"[{colors[r['status']]}]{r['status']}",
                r["why"],
                "?" if t is None else (clock(t) if t else ""),
                "?" if b is None else (f"{b / 1e6:.0f} MB" if b else ""),
                "" if r.get("est_peak_bytes") is None else f"{r['est_peak_bytes'] / 1e9:.1f} GB",
                r["key"],
            )
        console.print(table)
        launches = [r for r in rows if r.get("launch")]
        if launches:
            console.print(f"launcher {profile.launcher.kind}: each distributed stage runs as")
            for r in launches:
                for cmd in r["launch"]:
                    console.print(f"  {r['node']}: {cmd}", highlight=False, soft_wrap=True)
            console.print(
                "(time estimates are for this machine; launched stages run on the "
                "launcher's devices: see `minitron-deploy distill --estimate` for their memory)"
            )
    console.print(line)
    return 0
