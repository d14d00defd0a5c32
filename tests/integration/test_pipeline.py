"""ci-tiny end to end: a full run, a kill -9 and resume with identical artifacts, an all-cached
second run, and a changed setting that reruns only what depends on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "ci-tiny.yaml"


def _cmd(workdir: Path, *extra: str) -> list[str]:
    # A relative work folder, as the default `./work` is: run from its parent.
    return [
        sys.executable,
        "-m",
        "minitron_deploy",
        "run",
        str(PROFILE),
        "--workdir",
        workdir.name,
        "--json",
        *(extra or ("--quiet",)),
    ]


def _run(workdir: Path, *extra: str, stderr: list | None = None, code: int = 1) -> dict:
    """One `run`; `code` is the exit code expected when the run does not end "ok"."""
    r = subprocess.run(
        _cmd(workdir, *extra), capture_output=True, text=True, timeout=900, cwd=workdir.parent
    )
    assert r.stdout.strip(), r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == (0 if out["status"] == "ok" else code), (r.returncode, out)
    if stderr is not None:
        stderr.append(r.stderr)
    return out


def _hashes(run_dir: str) -> dict[str, str]:
    rec = Path(run_dir) / "run.json"
    return {
        s["node"]: s["content_sha256"]
        for s in json.loads(rec.read_text())["stages"]
        if s["stage"] != "bench"
    }  # bench holds timings, different on every run


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wd")
    out = _run(wd)
    assert out["status"] == "ok", out
    return wd, out


def test_full_run_builds_every_stage(first_run):
    wd, out = first_run
    stages = {(s["variant"], s["stage"]) for s in out["stages"]}
    for expected in [
        (None, "source"),
        ("width", "importance"),
        ("width", "prune"),
        ("width", "distill"),
        ("depth", "distill"),
        ("width", "export"),
        ("base", "package"),
        (None, "bench"),
    ]:
        assert expected in stages, expected
    # Only a node whose artifact an earlier node of the same run built is a cache hit
    # (depth and width share the importance scores of the same parent).
    seen: set[str] = set()
    for s in out["stages"]:
        assert s["cached"] == (s["key"] in seen), s
        seen.add(s["key"])
    assert any(s["cached"] for s in out["stages"] if s["stage"] == "importance")
    run_dir = Path(out["run_dir"])
    assert (run_dir / "run.json").is_file() and (run_dir / "summary.md").is_file()
    width = next(s for s in out["stages"] if s["variant"] == "width" and s["stage"] == "distill")
    cfg = json.loads((Path(width["outputs"]["model"]) / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]) == (64, 4, 16)


def test_outputs_are_linked_and_summarized_with_a_relative_workdir(first_run):
    wd, out = first_run
    run_dir = Path(out["run_dir"])
    outputs = run_dir / "outputs"
    for name in ("source", "bench", "width/model", "width/hf", "width/trtllm-ckpt",
                 "width/triton", "width/curves.png", "depth/model", "base/triton"):  # fmt: skip
        link = outputs / name
        assert link.is_symlink() and not Path(os.readlink(link)).is_absolute(), name
        assert link.exists(), name  # resolves
    assert (outputs / "width" / "model" / "config.json").is_file()
    summary = (run_dir / "summary.md").read_text()
    assert "## Headline" in summary and "| width | " in summary and "→" in summary
    assert "outputs/width/model" in summary and "outputs/bench" in summary
    assert "curves.png" in summary and "throughput_torch_" in summary
    assert "minitron-deploy serve triton --repo" in summary
    assert "machine: " in summary and "compute dtype" in summary


def test_second_run_recomputes_nothing(first_run):
    # Its wall time is measured by benchmarks/pipeline_cache.py, not asserted here.
    wd, _ = first_run
    before = set((wd / "cache").rglob("manifest.json"))
    out = _run(wd)
    assert out["status"] == "ok" and all(s["cached"] for s in out["stages"])
    assert set((wd / "cache").rglob("manifest.json")) == before  # nothing rebuilt
    assert not list((wd / "cache").glob(".tmp/*"))  # no entry was even begun


def test_changed_distill_setting_reruns_only_its_downstream(first_run):
    wd, _ = first_run
    err: list[str] = []
    out = _run(wd, "--set", "variants.width.distill.steps=3", stderr=err)
    assert out["status"] == "ok"
    rerun = {f"{s['variant']}/{s['stage']}" for s in out["stages"] if not s["cached"]}
    assert rerun == {"width/distill", "width/export", "width/package", "None/bench"}, rerun
    # Not quiet: the log counts the stages, and the run closes with the headline and paths.
    log = err[0]
    assert "▶ [" in log and "/17] width/distill" in log
    assert "[distill width/distill] 3/3 (100%)" in log  # plain progress lines in a log
    assert "validation loss: pruned → distilled" in log and "summary: " in log
    assert "next: minitron-deploy serve triton --repo" in log


def test_an_inconclusive_speed_gate_exits_3_after_only_the_bench(first_run):
    # Three rounds can never give a 95% order-statistic interval of a median (six are the
    # fewest), so with no rounds to add the gated cell is inconclusive whatever the timings:
    # the run fails at the gate with exit code 3 (README: exit codes), nothing else reruns.
    wd, _ = first_run
    gate = ["--set", "variants.width.bench={min_speedup: 1.0}", "--set", "bench.gate_max_repeats=3"]
    out = _run(wd, *gate, "--set", "bench.repeats=3", code=3)
    assert out["status"] != "ok" and out["failed_stage"] == "gate", out
    assert "inconclusive" in out["error"], out["error"]
    assert {s["stage"] for s in out["stages"] if not s["cached"]} <= {"bench"}


def test_kill_and_resume_gives_identical_artifacts(first_run):
    # Artifacts record their inputs' paths (provenance), so the resumed run uses the same work
    # folder path as the uninterrupted one: move that run aside first (this test runs last).
    wd, first = first_run
    saved = wd.with_name(wd.name + "-uninterrupted")
    wd.rename(saved)
    first_dir = Path(str(first["run_dir"]).replace(str(wd), str(saved)))
    proc = subprocess.Popen(
        _cmd(wd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=wd.parent,
        start_new_session=True,
    )
    deadline = time.time() + 600
    # Kill while the width variant's distillation is under way (its checkpoints exist).
    while time.time() < deadline and proc.poll() is None:
        if list((wd / "scratch").glob("distill-*/checkpoints/*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = _run(wd)
    assert out["status"] == "ok"
    assert any(s["cached"] for s in out["stages"]) and not all(s["cached"] for s in out["stages"])
    assert _hashes(out["run_dir"]) == _hashes(str(first_dir))
