"""The CI speedup gate (examples/ci/speedup_gate.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GATE = Path(__file__).resolve().parents[2] / "examples" / "ci" / "speedup_gate.py"


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("speedup_gate", GATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(model: str, isl: int, osl: int, speedup: float) -> dict:
    """A bench row whose 95% interval (6 repeats) is the point itself: threshold edges."""
    return {
        "model": model,
        "isl": isl,
        "osl": osl,
        "speedup_vs_base": speedup,
        "speedup_lo": speedup,
        "speedup_hi": speedup,
        "speedup_coverage": 0.96875,
        "repeats": 6,
    }


def _rows(width: float, depth: float) -> list[dict]:
    rows = []
    for isl, osl in ((128, 128), (2048, 128)):
        rows.append(_row("base", isl, osl, 1.0))
        rows.append(_row("width", isl, osl, width))
        rows.append(_row("depth", isl, osl, depth))
    return rows


def _run_record(tmp_path: Path, rows: list[dict]) -> Path:
    record = {
        "status": "ok",
        "stages": [
            {"stage": "export", "variant": "width", "outputs": {}},
            {"stage": "bench", "variant": None, "metrics": {"results": rows}},
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    return path


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nvariants:\n  - name: base\n  - name: width\n    bench: {min_speedup: 1.3}\n"
        "  - name: depth\n    bench: {min_speedup: 1.2}\n"
    )
    return path


def test_gate_passes_and_fails_on_the_threshold(gate, tmp_path, capsys):
    prof = _profile(tmp_path)
    assert gate.main([str(_run_record(tmp_path, _rows(1.3, 1.25))), "--profile", str(prof)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["passed"] and len(out["checks"]) == 4
    assert gate.main([str(_run_record(tmp_path, _rows(1.29, 1.25))), "--profile", str(prof)]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not out["passed"] and all("width" in f for f in out["failures"])
    assert len(out["failures"]) == 2  # both ISL/OSL cells


def test_overrides_win_and_missing_variant_fails(gate, tmp_path):
    rows = _rows(1.5, 1.1)
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"results": rows}))
    prof = str(_profile(tmp_path))
    assert gate.main([str(report), "--profile", prof]) == 1  # depth 1.1 < 1.2
    assert gate.main([str(report), "--profile", prof, "--min", "depth=1.05"]) == 0
    assert gate.main([str(report), "--min", "pruned9=1.0"]) == 1  # no results for it


def test_step_summary_is_written(gate, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(_rows(2.0, 2.0)))
    assert gate.main([str(rows), "--min", "width=1.3"]) == 0
    assert (
        "| width | 128/128 | 2.00x | [2.00, 2.00] (96.9%) | 6 | 1.3x | ✅ pass |"
        in summary.read_text()
    )


@pytest.mark.parametrize("bad", ["--min", "--no-thresholds", "--no-bench", "--garbage"])
def test_bad_input_exits_2(gate, tmp_path, bad):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(_rows(2.0, 2.0)))
    args = {
        "--min": [str(rows), "--min", "width"],
        "--no-thresholds": [str(rows)],
        "--no-bench": [str(tmp_path / "run.json"), "--min", "width=1"],
        "--garbage": [str(tmp_path / "missing.json"), "--min", "width=1"],
    }[bad]
    (tmp_path / "run.json").write_text(json.dumps({"status": "failed", "stages": []}))
    assert gate.main(args) == 2
