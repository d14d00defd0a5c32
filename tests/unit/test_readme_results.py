"""Every measured table of the README equals the table of its committed result file, and every
result file's .md is the one rendered from its JSON (benchmarks/results.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _drift(results, text: str) -> list[str]:
    """What differs between each marked table of `text` and its result file."""
    out = []
    for file, tid, lines, line_no in results.marked_tables(text):
        where = f"README line {line_no} ({file} table={tid})"
        path = ROOT / file
        if not path.is_file():
            out.append(f"{where}: no such result file")
            continue
        tables = json.loads(path.read_text()).get("tables", {})
        if tid not in tables:
            out.append(f"{where}: no table {tid!r} in the file ({sorted(tables)})")
            continue
        if len(lines) < 2:
            out.append(f"{where}: no markdown table follows the marker")
            continue
        cols, rows = results.parse_table(lines)
        want = tables[tid]
        if cols != want["columns"]:
            out.append(f"{where}: columns {cols} != {want['columns']}")
        if rows != want["rows"]:
            bad = [(r, w) for r, w in zip(rows, want["rows"], strict=False) if r != w]
            out.append(f"{where}: rows differ, e.g. README {bad[:1]} (or count {len(rows)} vs "
                       f"{len(want['rows'])})")  # fmt: skip
    return out


def test_readme_tables_equal_their_result_files(results):
    text = README.read_text()
    marked = results.marked_tables(text)
    assert len(marked) >= 2, "the README's measured tables are marked with their result file"
    assert _drift(results, text) == []


def test_a_number_edited_by_hand_is_caught(results):
    text = README.read_text()
    file, tid, lines, _ = results.marked_tables(text)[0]
    row = lines[2]
    digit = next(i for i, c in enumerate(row) if c.isdigit())
    edited_row = row[:digit] + str((int(row[digit]) + 1) % 10) + row[digit + 1 :]
    drift = _drift(results, text.replace(row, edited_row, 1))
    assert len(drift) == 1 and "rows differ" in drift[0] and file in drift[0]


def test_every_result_file_is_complete_and_its_md_is_rendered_from_it(results):
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    for f in files:
        rec = json.loads(f.read_text())
        missing = [k for k in results.REQUIRED if k not in rec]
        assert not missing, f"{f.name} lacks {missing}"
        assert rec["name"] == f.stem
        # a benchmark script (gpu_check.sh: a device machine's run, recorded here)
        assert rec["command"].startswith((".venv/bin/python benchmarks/", "bash benchmarks/"))
        assert (rec.get("processor") or {}).get("summary"), f"{f.name}: no processor"
        md = f.with_suffix(".md")
        assert md.read_text() == results.markdown(rec), f"{md.name} is not rendered from its JSON"


def test_a_table_with_a_shifted_cell_is_refused(results):
    """A row or alignment of another width than the columns would put numbers under the wrong
    heading in the README: the table refuses it."""
    assert results.table(["a", "b"], [["1", "2"]], ["l", "r"])["align"] == ["l", "r"]
    with pytest.raises(ValueError, match="align has 3 cells for 2 columns"):
        results.table(["a", "b"], [["1", "2"]], ["l", "r", "r"])
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        results.table(["a", "b"], [["1", "2"], ["3"]])
