"""One result file per benchmark: benchmarks/results/<name>.json and the .md rendered from it.

Every benchmark that the README quotes builds a record with `record(...)` and writes it with
`write(...)`: the command line, git commit (and whether the tree had uncommitted changes), date,
processor and its capability, compute dtype, threads, every number it prints (`results`) and the
tables the README shows (`tables`, cells as printed). The .md is rendered from the JSON only,
so `python benchmarks/results.py render NAME` rebuilds it from a committed JSON. The README marks
each measured table with `<!-- results: benchmarks/results/NAME.json table=ID -->` on the line
before it; tests/unit/test_readme_results.py compares every marked table with its JSON.
Standard library only (plus minitron_deploy's processor() and atomic writes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*results:\s*(\S+\.json)\s+table=(\S+)\s*-->")
REQUIRED = ("name", "command", "git_commit", "date", "processor", "dtype", "threads", "results")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def table(columns: list[str], rows: list[list[Any]], align: list[str] | None = None) -> dict:
    """A table as the README shows it: cells are strings (numbers formatted as printed);
    `align` per column: "l" (default) or "r". A row or `align` of another width than the
    columns is refused (a shifted cell would be quoted under the wrong heading)."""
    align = list(align or ["l"] * len(columns))
    for what, n in [("align", len(align))] + [(f"row {i}", len(r)) for i, r in enumerate(rows)]:
        if n != len(columns):
            raise ValueError(f"table: {what} has {n} cells for {len(columns)} columns")
    return {
        "columns": list(columns),
        "align": align,
        "rows": [[str(c) for c in r] for r in rows],
    }


def record(
    name: str,
    *,
    results: dict[str, Any],
    dtype: str | None,
    threads: int | None,
    tables: dict[str, dict] | None = None,
    notes: list[str] | None = None,
    argv: list[str] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The record of one benchmark run (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from minitron_deploy.hardware import processor

    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(ROOT)
    return {
        "name": name,
        "title": title or name,
        "command": shlex.join([".venv/bin/python", str(script), *argv[1:]]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processor": processor(),
        "dtype": dtype,
        "threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],  # at the end: others' load too
        "results": results,
        "tables": tables or {},
        "notes": list(notes or []),
    }


def measuring_command(command: str) -> str:
    """A measurement's command line as `record` writes it (`.venv/bin/python benchmarks/...`),
    from one an older script wrote as `python benchmarks/...`."""
    words = shlex.split(command)
    if words and Path(words[0]).name.startswith("python"):
        words[0] = ".venv/bin/python"
    return shlex.join(words)


def rerendered(rec: dict[str, Any], prov: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """`rec`, built now from data measured earlier (a script's `--render-from`), with the
    measurement's command line, commit, date, processor and load average (from `prov`, the old
    file or one measurement of it) in place of this invocation's, and a note saying when and from
    what it was re-rendered."""
    now, by = rec["date"], rec["command"]
    src = Path(source)
    with contextlib.suppress(ValueError):
        src = src.resolve().relative_to(ROOT)
    rec.update(
        command=measuring_command(prov["command"]),
        git_commit=prov["git_commit"],
        git_dirty=None,  # not recorded by the measurement
        date=prov["date"],
        processor=prov["processor"],
        load_average=prov.get("load_average", prov.get("loadavg_after")),
    )
    rec["notes"] = [
        *rec["notes"],
        f"Re-rendered on {now} from the measured data in {src} by `{by}`; the command, git "
        "commit, date and processor above are the measurement's.",
    ]
    return rec


def add_render_from(parser: Any, what: str = "the record and .md") -> None:
    """The `--render-from JSON` option every benchmark with committed data offers."""
    parser.add_argument(
        "--render-from",
        metavar="JSON",
        type=Path,
        help=f"measure nothing: rebuild {what} from this earlier result file",
    )


def table_markdown(t: dict) -> list[str]:
    """The table's markdown lines."""
    sep = ["---:" if a == "r" else "---" for a in t["align"]]
    return [
        "| " + " | ".join(t["columns"]) + " |",
        "| " + " | ".join(sep) + " |",
        *("| " + " | ".join(r) + " |" for r in t["rows"]),
    ]


def markdown(rec: dict[str, Any]) -> str:
    """The .md of a record: provenance, then each table, then the notes."""
    proc = rec.get("processor") or {}
    lines = [
        f"# {rec.get('title') or rec['name']}",
        "",
        f"Generated from `benchmarks/results/{rec['name']}.json` by `benchmarks/results.py`; "
        "never edit by hand.",
        "",
        f"- command: `{rec['command']}`",
        f"- git commit: {rec['git_commit'] or 'unknown'}"
        + (" (with uncommitted changes)" if rec.get("git_dirty") else ""),
        f"- date: {rec['date']}",
        f"- processor: {proc.get('summary', 'unrecorded')}",
        f"- dtype: {rec['dtype']}; threads: {rec['threads']}"
        + (
            f"; load average (1/5/15 min) at the end: {', '.join(map(str, rec['load_average']))}"
            if rec.get("load_average")
            else ""
        ),
        "",
    ]
    for tid, t in rec.get("tables", {}).items():
        lines += [f"## {t.get('title', tid)}", "", *table_markdown(t), ""]
    if rec.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in rec["notes"]), ""]
    return "\n".join(lines)


def write(rec: dict[str, Any], out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write <name>.json and the .md rendered from it, atomically; returns both paths."""
    sys.path.insert(0, str(ROOT))
    from minitron_deploy.fsutil import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{rec['name']}.json", out_dir / f"{rec['name']}.md"
    atomic_write_json(js, rec)
    atomic_write_text(md, markdown(json.loads(js.read_text())))
    print(f"wrote {js.relative_to(ROOT) if js.is_relative_to(ROOT) else js} and its .md")
    return js, md


def load(path: str | Path) -> dict[str, Any]:
    """A committed record (path relative to the repository root, or absolute)."""
    p = Path(path)
    return json.loads((p if p.is_absolute() else ROOT / p).read_text())


def parse_table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of a markdown table given its lines (header, separator, rows)."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    return cells(lines[0]), [cells(x) for x in lines[2:]]


def marked_tables(text: str) -> list[tuple[str, str, list[str], int]]:
    """Every `<!-- results: FILE table=ID -->` of a markdown text with the table after it:
    (file, table id, table lines, line number of the marker)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.fullmatch(line.strip())  # a marker is a line of its own
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        k = j
        while k < len(lines) and lines[k].strip().startswith("|"):
            k += 1
        out.append((m.group(1), m.group(2), [x.strip() for x in lines[j:k]], i + 1))
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "render":
        rec = load(RESULTS / f"{argv[1]}.json")
        write(rec)
        return 0
    print("usage: python benchmarks/results.py render NAME   # the .md from its committed JSON")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
