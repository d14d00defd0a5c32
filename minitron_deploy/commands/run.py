"""`minitron-deploy run PROFILE`: build every stage not in the cache; resumable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from minitron_deploy.console import err_console, print_json
from minitron_deploy.launch.launcher import refuse_under_torchrun
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.pipeline.summary import charts, eval_table, headline_table, next_step
from minitron_deploy.profile import load_profile
from minitron_deploy.profile.checks import known_shape

NAME = "run"
HELP = "Run a profile end to end (cached stages are reused; a rerun resumes)."


def add_profile(p: argparse.ArgumentParser) -> None:
    """The profile argument and its `--set` overrides."""
    p.add_argument("profile", help="profile YAML")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. variants.width.distill.steps=20 (repeatable)",
    )


def add_offline(p: argparse.ArgumentParser) -> None:
    """Options to check or plan a profile whose source and data are elsewhere (a cluster)."""
    p.add_argument(
        "--no-source-check",
        action="store_true",
        help="do not require the source model and the text sources to exist here",
    )
    p.add_argument(
        "--source-shape",
        metavar="NAME|CONFIG",
        help="the source's shape when it is not here: a known name (llama-3.1-8b, "
        "smollm2-135m, ...) or a config.json; implies --no-source-check",
    )


def offline_settings(args: argparse.Namespace) -> dict:
    """load_profile's keyword arguments for --no-source-check / --source-shape."""

    shape = known_shape(args.source_shape) if args.source_shape else None
    return {"check_source": not (args.no_source_check or shape), "source_shape": shape}


def add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", help="artifact cache and run records (default: $MINITRON_WORKDIR or ./work)"
    )


def add_common(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    add_workdir(p)
    p.add_argument("--only", metavar="VARIANT", help="only this variant (and what it needs)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def workdir(args: argparse.Namespace) -> Path:
    return Path(args.workdir or os.environ.get("MINITRON_WORKDIR") or "work")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print what libraries print while a stage runs (by default it goes to the "
        "stage's log file, logs/<stage>.log in the run's folder, shown if the stage fails)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="launcher slurm: return once a job is submitted (or still queued); rerun later "
        "to pick up its result and continue",
    )


def closing_summary(record: dict, console) -> None:
    """The headline table, where the results are, and what to run next."""
    from pathlib import Path

    from rich.table import Table

    cells = headline_table(record)
    table = Table(title=f"{record['profile']}: {record['status']} in {record['seconds']:.0f} s")
    for col in cells[0]:
        table.add_column(col)
    for row in cells[1:]:
        table.add_row(*row)
    console.print(table)
    tasks = eval_table(record)
    if tasks:
        t = Table(
            title="downstream tasks: score (items right/items), share of the teacher's where "
            "the teacher is clearly above chance"
        )
        for col in tasks[0]:
            t.add_column(col)
        for row in tasks[1:]:
            t.add_row(*row)
        console.print(t)
    run_dir = Path(record["run_dir"])
    console.print(
        f"machine: {record['processor']['summary']}; compute dtype {record['compute_dtype']}"
    )
    console.print(f"summary: {run_dir / 'summary.md'}  (run record: run.json beside it)")
    if record.get("deployables"):
        import textwrap

        console.print(f"deliverables: {run_dir / 'outputs'}/")
        for line in textwrap.wrap(", ".join(record["deployables"]), 100):
            console.print(f"  {line}", highlight=False)
    for png in charts(record):
        console.print(f"chart: {png}")
    if step := next_step(record):
        console.print(f"next: {step}")


def run(args: argparse.Namespace) -> int:
    refuse_under_torchrun()
    profile = load_profile(args.profile, args.set)
    console = err_console()
    log = (lambda m: None) if args.quiet else (lambda m: console.print(m, highlight=False))
    pipe = Pipeline(profile, workdir(args), args.profile)
    record = pipe.run(
        args.only,
        progress=not args.quiet,
        log=log,
        wait=not args.no_wait,
        stage_logs=not args.verbose,
    )
    if not args.quiet and record["status"] != "submitted":
        closing_summary(record, console)
    if args.json:
        print_json(
            {
                "status": record["status"],
                "run_dir": record["run_dir"],
                **(
                    {"error": record["error"], "failed_stage": record["failed_stage"]}
                    if record["status"] != "ok"
                    else {}
                ),
                "stages": [
                    {
                        k: s.get(k)
                        for k in ("node", "variant", "stage", "key", "cached", "seconds", "outputs")
                    }
                    for s in record["stages"]
                ],
            }
        )
    if record["status"] == "submitted":
        console.print(f"[yellow]{record['error']}")  # "<node>: submitted job N, rerun to ..."
        return 0
    if record["status"] != "ok":
        console.print(f"[red]run failed at {record['failed_stage']}: {record['error']}")
        return 3 if record.get("gate") == "inconclusive" else failure_code(record)
    return 0


def failure_code(record: dict) -> int:
    """The exit code of a failed run (`run` and `search` alike): the failing stage's own code,
    2 when it found the input wrong (e.g. a search budget no candidate meets), else 1 (a stage
    that crashed or is unavailable here, a SLURM job without a result, the speed gate)."""
    return 2 if record.get("exit_code") == 2 else 1
