#!/usr/bin/env python3
"""Speedup gate for CI: fail when a variant's measured speedup over the base is too low.

Reads the bench results of a run and per-variant thresholds, prints a table (also to
$GITHUB_STEP_SUMMARY when set) and decides with `minitron_deploy.bench.gate` (the pipeline's
gate too) on each ISL/OSL cell's 95% speedup interval. Exit codes: 0 pass (every cell's lower
bound clears its threshold), 1 fail (some cell's upper bound is below it, or a variant has no
results), 3 inconclusive (some interval straddles the threshold, or has too few repeats to be a
95% one: the bench stage of a gated run has already added rounds up to
`bench.gate_max_repeats`; rerun with more `bench.repeats`), 2 unreadable input. Last stdout
line: one JSON object.

    python examples/ci/speedup_gate.py work/runs/<profile>/<time>/run.json --profile P.yaml
    python examples/ci/speedup_gate.py bench.json --min width=1.3 --min depth=1.2

RESULTS is a run record (`run.json`: the bench stage's `metrics.results`), a bench report
(`{"results": [...]}`) or a bare list of rows; a row has `model`, `isl`, `osl`,
`speedup_vs_base`, `speedup_lo`, `speedup_hi`, `speedup_coverage`, `repeats`. Thresholds come
from the profile (`variants[].bench.min_speedup`) and `--min NAME=X` (which wins). Needs PyYAML
and minitron-deploy (installed wherever its run produced the results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from minitron_deploy.bench import gate


class GateInputError(Exception):
    """Unreadable results or thresholds (exit code 2)."""


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Bench result rows from a run record, a bench report or a bare list."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GateInputError(f"cannot read results {path}: {e}") from e
    if isinstance(data, dict) and "stages" in data:
        bench = [s for s in data["stages"] if s.get("stage") == "bench"]
        if not bench:
            raise GateInputError(
                f"{path}: the run has no bench stage (status {data.get('status')})"
            )
        data = bench[-1].get("metrics", {}).get("results", [])
    elif isinstance(data, dict):
        data = data.get("results")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise GateInputError(f"{path}: no list of result rows found")
    return data


def load_thresholds(profile: str | None, overrides: list[str]) -> dict[str, float]:
    """Per-variant minimum speedups from a profile YAML and NAME=X overrides."""
    limits: dict[str, float] = {}
    if profile:
        import yaml

        try:
            prof = yaml.safe_load(Path(profile).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GateInputError(f"cannot read profile {profile}: {e}") from e
        for v in prof.get("variants") or []:
            limit = ((v or {}).get("bench") or {}).get("min_speedup")
            if limit is not None:
                limits[v["name"]] = float(limit)
    for item in overrides:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            limits[name] = float(value)
        except ValueError:
            raise GateInputError(f"--min {item!r}: expected NAME=SPEEDUP, e.g. width=1.3") from None
    return limits


def evaluate(rows: list[dict[str, Any]], limits: dict[str, float]) -> dict[str, Any]:
    """pass / fail / inconclusive over every gated cell (`minitron_deploy.bench.gate`)."""
    return gate.evaluate(rows, limits)


markdown = gate.markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="run.json, a bench report JSON, or a list of rows")
    p.add_argument("--profile", help="profile YAML with variants[].bench.min_speedup")
    p.add_argument("--min", action="append", default=[], metavar="NAME=X", help="threshold")
    args = p.parse_args(argv)
    try:
        limits = load_thresholds(args.profile, args.min)
        if not limits:
            raise GateInputError("no thresholds: pass --profile with min_speedup or --min NAME=X")
        result = evaluate(load_rows(args.results), limits)
    except GateInputError as e:
        print(f"speedup gate: error: {e}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(table, file=sys.stderr)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write("### Speedup gate\n\n" + table)
    for failure in result["failures"]:
        print(f"::error title=speedup gate::{failure}", file=sys.stderr)
    for unsure in result["inconclusive"]:
        print(f"::warning title=speedup gate inconclusive::{unsure}", file=sys.stderr)
    print(json.dumps(result), flush=True)
    return gate.EXIT[result["outcome"]]


if __name__ == "__main__":
    raise SystemExit(main())
