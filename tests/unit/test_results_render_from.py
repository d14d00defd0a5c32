"""`--render-from` of the benchmarks that record with benchmarks/results.py: rebuilt from a
committed result file (or from the older form those scripts once wrote), the record keeps the
measurement's provenance and every measured number, and its tables are the committed ones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PROVENANCE = ("command", "git_commit", "date", "processor", "dtype", "threads")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _render_from(name: str, path: Path) -> dict:
    mod = _script(name)
    argv = [str(ROOT / "benchmarks" / f"{name}.py"), "--render-from", str(path)]
    if name == "estimates":
        return mod._rendered(mod._stored(path), path, argv)
    return mod.render_from(path, argv)


@pytest.mark.parametrize("name", ["fp8_kv_scale", "vllm_vs_builtin", "estimates"])
def test_render_from_the_committed_record_gives_it_back(name):
    path = RESULTS / f"{name}.json"
    committed = json.loads(path.read_text())
    rec = _render_from(name, path)
    for key in PROVENANCE:
        assert rec[key] == committed[key], key
    assert rec["results"] == committed["results"]
    assert rec["tables"] == committed["tables"], (
        f"benchmarks/{name}.py renders other tables than the committed ones: rerun it with "
        f"--render-from {path.relative_to(ROOT)} (estimates: the factors of "
        "pipeline/estimate.py changed)"
    )
    assert rec["notes"][:-1] == committed["notes"][:-1]
    assert rec["notes"][-1].startswith("Re-rendered on ")


@pytest.mark.parametrize("name", ["fp8_kv_scale", "vllm_vs_builtin"])
def test_render_from_the_older_form_keeps_its_provenance(name, tmp_path):
    """The form these scripts wrote before results.py: the measured data with `command`,
    `git_commit`, `date`, `processor` beside it (and `threads`, a count or a dict)."""
    rec = json.loads((RESULTS / f"{name}.json").read_text())
    old = {
        **rec["results"],
        "command": "python " + rec["command"].split(" ", 1)[1],
        "git_commit": "0123abc",
        "date": "2026-01-01 00:00 UTC",
        "processor": {"summary": "a stand-in processor"},
    }
    old.setdefault("threads", rec["threads"])
    src = tmp_path / "old.json"
    src.write_text(json.dumps(old))
    new = _render_from(name, src)
    assert new["command"] == rec["command"]  # `.venv/bin/python benchmarks/...`, as measured
    assert (new["git_commit"], new["date"]) == ("0123abc", "2026-01-01 00:00 UTC")
    assert new["processor"] == {"summary": "a stand-in processor"}
    assert new["tables"] == rec["tables"] and new["results"] == rec["results"]
    assert str(src) in new["notes"][-1]


def test_estimates_older_form_keeps_every_measurement(tmp_path):
    rec = json.loads((RESULTS / "estimates.json").read_text())
    src = tmp_path / "old.json"
    src.write_text(json.dumps(rec["results"]))  # the older form: measurements and summary only
    new = _render_from("estimates", src)
    assert new["results"] == rec["results"] and new["tables"] == rec["tables"]
    last = max(rec["results"]["measurements"], key=lambda m: m["date"])
    assert (new["git_commit"], new["date"]) == (last["git_commit"], last["date"])
