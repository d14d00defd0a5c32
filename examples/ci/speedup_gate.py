#!/usr/bin/env python3
"""Speedup gate for CI: fail when a variant's measured speedup over the base is too low.

Reads the bench results of a run and per-variant thresholds, prints a table (also to
$GITHUB_STEP_SUMMARY when set), and exits 1 if any variant is below its threshold in any
ISL/OSL cell or has no results at all; exits 2 on unreadable input. Last stdout line: one
JSON object.

    python examples/ci/speedup_gate.py work/runs/<profile>/<time>/run.json --profile P.yaml
    python examples/ci/speedup_gate.py bench.json --min width=1.3 --min depth=1.2

RESULTS is a run record (`run.json`: the bench stage's `metrics.results`), a bench report
(`{"results": [...]}`) or a bare list of rows; a row has `model`, `isl`, `osl`,
`speedup_vs_base`. Thresholds come from the profile (`variants[].bench.min_speedup`) and
`--min NAME=X` (which wins). Needs only the standard library and PyYAML.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


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
    """Check every row of every gated variant; returns checks and failures."""
    checks, failures = [], []
    for name, limit in sorted(limits.items()):
        mine = [r for r in rows if r.get("model") == name]
        if not mine:
            failures.append(f"{name}: no bench results (gate {limit}x)")
        for r in mine:
            speedup = r.get("speedup_vs_base")
            ok = isinstance(speedup, (int, float)) and speedup >= limit
            cell = f"{r.get('isl')}/{r.get('osl')}"
            checks.append(
                {"variant": name, "isl_osl": cell, "speedup": speedup, "min": limit, "ok": ok}
            )
            if not ok:
                failures.append(f"{name} at ISL/OSL {cell}: speedup {speedup} < {limit}")
    return {"passed": not failures, "checks": checks, "failures": failures}


def markdown(result: dict[str, Any]) -> str:
    """The checks as a markdown table."""
    lines = ["| variant | ISL/OSL | speedup | min | |", "|---|---|---|---|---|"]
    for c in result["checks"]:
        s = c["speedup"]
        shown = f"{s:.2f}x" if isinstance(s, (int, float)) else "n/a"
        mark = "✅" if c["ok"] else "❌"
        lines.append(f"| {c['variant']} | {c['isl_osl']} | {shown} | {c['min']}x | {mark} |")
    lines += [f"- ❌ {f}" for f in result["failures"] if "no bench results" in f]
    return "\n".join(lines) + "\n"


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
    print(json.dumps(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
