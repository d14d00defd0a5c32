"""Exit codes tell the truth for every command: 2 = the user's input is wrong (nothing written
before any work; a pipeline stage's own code when a stage finds it),
1 = something else failed (a stage, an external tool, a missing package), 0 = done."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from minitron_deploy.cli import main


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return int(e.code)


@pytest.fixture()
def empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    return p


@pytest.fixture()
def busy_dir(tmp_path):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "x").write_text("x")
    return d


def _bad_inputs(tiny, text, empty, busy, nope):
    return {
        "bench": ["bench", "--model", nope],
        "cache": ["cache", "gc", "--keep-profile", nope, "--workdir", busy],
        "distill": [
            "distill", "--teacher", tiny, "--student", tiny, "--data", text, "--out", nope,
            "--embedding-loss",  # needs --intermediate: refused, not silently switched on
        ],
        "data": ["data", "prepare", empty, "--tokenizer", tiny, "--out", nope],
        "doctor": ["doctor", "--no-such-option"],
        "eval": ["eval", "--model", nope, "--data", text],
        "export": ["export", "--model", tiny, "--format", "hf", "--dtype", "fp8", "--out", nope],
        "fetch": ["fetch", "tiny-llama", "--out", busy],
        "generate": ["generate", "--model", nope, "--prompt", "hi"],
        "importance": ["importance", "--model", tiny, "--data", empty, "--out", nope],
        "package": ["package", "triton", "--model", nope, "--out", nope + "-repo"],
        "plan": ["plan", nope],
        "prune": ["prune", "--model", tiny, "--out", nope, "--hidden-size", "1000"],
        "run": ["run", nope],
        "search": ["search", nope],
        "serve": ["serve", "triton", "--repo", nope],
        "validate": ["validate", nope],
    }  # fmt: skip


def test_every_command_has_a_bad_input_case():
    from minitron_deploy.cli import _command_modules

    names = {m.NAME for m in _command_modules()}
    assert names == set(_bad_inputs(*["x"] * 5))


@pytest.mark.parametrize("command", sorted(_bad_inputs(*["x"] * 5)))
def test_bad_input_exits_2_and_writes_nothing(
    command, tiny_ckpt, text_dir, empty_file, busy_dir, tmp_path, capsys
):
    nope = str(tmp_path / "nope")
    argv = _bad_inputs(str(tiny_ckpt), str(text_dir), str(empty_file), str(busy_dir), nope)
    assert _code(argv[command]) == 2, capsys.readouterr().err
    assert not os.path.exists(nope) and not os.path.exists(nope + "-repo")
    assert sorted(p.name for p in busy_dir.iterdir()) == ["x"]


def test_empty_data_file_is_called_empty(tiny_ckpt, empty_file, tmp_path, capsys):
    argv = ["importance", "--model", str(tiny_ckpt), "--data", str(empty_file)]
    assert _code([*argv, "--out", str(tmp_path / "s")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_export_read_back_failure_exits_1(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import minitron_deploy.export.verify as verify

    # A broken exporter: the read-back sees other logits than the source's.
    monkeypatch.setattr(verify, "probe_tokens", lambda v: __import__("torch").zeros(1, 4).long())
    monkeypatch.setattr(
        verify, "compare_logits", lambda a, b: {"max_abs_diff": 1.0, "top1_agreement": 0.0}
    )
    out = tmp_path / "hf"
    assert _code(["export", "--model", str(tiny_ckpt), "--format", "hf", "--out", str(out)]) == 1
    assert "read-back" in capsys.readouterr().err and not out.exists()


def _tool(folder, name: str, body: str) -> None:
    """A stand-in for an external program (TensorRT-LLM's tools cannot run here)."""
    folder.mkdir(exist_ok=True)
    p = folder / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def test_failing_standin_trtllm_bench_exits_1(tiny_ckpt, tmp_path, monkeypatch, capsys):
    _tool(tmp_path / "bin", "trtllm-bench", "echo 'CUDA error: no device' >&2; exit 3")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    argv = ["bench", "--model", str(tiny_ckpt), "--engine", "trtllm", "--matrix", "8/4"]
    assert _code([*argv, "--repeats", "3"]) == 1
    assert "trtllm-bench failed (exit 3)" in capsys.readouterr().err


def test_missing_tool_is_a_dependency_failure_exit_1(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtllm-bench anywhere
    argv = ["bench", "--model", str(tiny_ckpt), "--engine", "trtllm", "--matrix", "8/4"]
    assert _code(argv) == 1
    assert "not on PATH" in capsys.readouterr().err


def test_run_with_a_failing_stage_exits_1(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(
        textwrap.dedent(
            """\
            name: fails
            source: builtin:tiny-llama
            variants: [{name: base}]
            bench: {engine: trtllm, isl_osl: "8/4"}
            """
        )
    )
    env_path = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)  # the bench stage is unavailable here
    try:
        code = _code(["run", str(p), "--workdir", str(tmp_path / "wd"), "--quiet"])
    finally:
        os.environ["PATH"] = env_path
    assert code == 1
    assert "trtllm-bench" in capsys.readouterr().err


def test_diverging_distillation_exits_1(tiny_ckpt, text_dir, tmp_path, capsys):
    argv = [
        "distill", "--teacher", str(tiny_ckpt), "--student", str(tiny_ckpt),
        "--data", str(text_dir), "--out", str(tmp_path / "kd"), "--steps", "4",
        "--global-batch", "2", "--micro-batch", "2", "--seq-len", "16", "--warmup-steps", "0",
        "--lr", "1e30", "--grad-clip", "0", "--ce-weight", "1", "--no-teacher-check",
        "--no-progress",
    ]  # fmt: skip
    assert _code(argv) == 1
    assert "non-finite" in capsys.readouterr().err


BUDGET_NOBODY_MEETS = """\
name: budget
source: builtin:tiny-llama
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics}
importance: {num_samples: 4, seq_len: 16}
search: {budget: {max_params: 1000}, grid: {hidden_size: [48, 32]}}
variants: [{name: base}]
"""


def test_run_and_search_exit_with_the_failing_stages_own_code(tmp_path, capsys):
    """One rule for both: the search stage found the budget impossible (bad input, found
    during the run): exit 2 from `run` and from `search`; the stage before it stays cached and
    the run record names the failing stage."""
    import json

    p = tmp_path / "budget.yaml"
    p.write_text(BUDGET_NOBODY_MEETS)
    wd = tmp_path / "wd"
    for command in ("search", "run"):
        assert _code([command, str(p), "--workdir", str(wd), "--quiet"]) == 2, command
        assert "no candidate of" in capsys.readouterr().err
    records = sorted((wd / "runs" / "budget").glob("*/run.json"))
    assert len(records) == 2
    for rec in map(json.loads, (r.read_text() for r in records)):
        assert rec["failed_stage"] == "search" and rec["exit_code"] == 2
    assert list((wd / "cache" / "importance").glob("*/content"))  # kept: a rerun resumes


def test_the_speed_gate_reports_an_unmeasured_speedup():
    from types import SimpleNamespace

    from minitron_deploy.bench.gate import INCONCLUSIVE_PREFIX
    from minitron_deploy.pipeline.stages.bench import speedup_gate

    node = SimpleNamespace(meta={"min_speedup": {"width": 1.5}})
    rows = [
        {"model": "width", "isl": 8, "osl": 4, "speedup_vs_base": None, "repeats": 5},
        {"model": "width", "isl": 16, "osl": 4, "speedup_vs_base": 1.2, "speedup_lo": 1.1,
         "speedup_hi": 1.3, "speedup_coverage": 0.97, "repeats": 7},
    ]  # fmt: skip
    failures = speedup_gate(node, {"results": rows})  # formats None without a TypeError
    assert failures == [
        "speedup gate: width at ISL/OSL 16/4: speedup 1.20x [1.10, 1.30] (97.0%, 7 repeats) "
        "vs min 1.5x: fail",
        f"{INCONCLUSIVE_PREFIX}: width at ISL/OSL 8/4: no speedup vs min 1.5x: inconclusive",
    ]


def test_summaries_say_not_measured_instead_of_zero():
    from minitron_deploy.pipeline.summary import headline_table, summary_markdown

    row = {"model": "width", "engine": "torch", "dtype": "float32", "isl": 8, "osl": 4,
           "batch": 2, "req_s": 1.0, "output_tok_s": 4.0, "speedup_vs_base": None,
           "ideal_speedup": None}  # fmt: skip
    record = {
        "status": "ok",
        "profile": "p",
        "run_dir": "/nonexistent/run",
        "stages": [
            {"node": "width/prune", "variant": "width", "stage": "prune", "key": "k" * 16,
             "metrics": {"params_after": 1000}},
            {"node": "bench", "variant": None, "stage": "bench", "key": "b" * 16,
             "metrics": {"results": [row]}},
        ],
    }  # fmt: skip
    text = summary_markdown(record)
    assert "0.00x" not in text
    assert "| not measured | - |" in text  # the throughput table
    assert headline_table(record)[1][-2] == "not measured @8/4 b2"
