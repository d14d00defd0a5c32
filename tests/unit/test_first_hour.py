"""What a new user meets first: README commands that resolve, progress that never goes silent in
a log, curves that say what they show, and cheap checks that name the real problem at once."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Programs the README names that `make setup` does not provide, each said so in the README
# (the NGC containers, a cluster's scheduler, a GPU host's Docker).
EXTERNAL = {
    "docker",
    "srun",
    "sbatch",
    "scontrol",
    "trtllm-build",
    "trtllm-bench",
    "tritonserver",
    "git",
    "cp",
    "curl",
    "python3",
    "make",
    "source",
    "cd",
    "export",
}


def readme_commands() -> list[str]:
    """Every command line of the README's fenced bash blocks (continuations joined)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_readme_has_commands():
    cmds = readme_commands()
    assert len(cmds) > 20 and any(c.startswith("minitron-deploy run") for c in cmds)


def test_every_readme_command_resolves_after_make_setup():
    venv_bin = Path(sys.executable).parent  # the venv `make setup` made (tests run in it)
    path = os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")])
    missing = set()
    for cmd in readme_commands():
        m = re.match(r"^\w+=\$\((\S+)", cmd)  # VAR=$(prog ...): check the program
        words = [m[1]] if m else shlex.split(cmd, posix=True)
        while words and re.match(r"^\w+=", words[0]):  # leading VAR=value assignments
            words = words[1:]
        if not words:
            continue
        prog = words[0]
        if prog.startswith(".venv/bin/"):
            ok = (venv_bin / prog.removeprefix(".venv/bin/")).exists()
        elif prog.startswith(("benchmarks/", "./", "examples/")):
            ok = (REPO / prog).exists()
        else:
            ok = prog in EXTERNAL or shutil.which(prog, path=path) is not None
        if not ok:
            missing.add(prog)
    assert not missing, f"README commands whose program does not resolve: {sorted(missing)}"


def test_readme_activates_the_venv_before_bare_commands():
    text = (REPO / "README.md").read_text()
    first_bare = text.index("minitron-deploy validate")
    assert "source .venv/bin/activate" in text[:first_bare]


def test_progress_prints_plain_lines_in_a_log(monkeypatch, capsys):
    from minitron_deploy.console import Progress, track

    monkeypatch.setenv("MINITRON_PROGRESS_SECONDS", "0")
    assert list(track(range(3), "work")) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[work] 1/3 (33%)") and err[-1].startswith("[work] 3/3 (100%)")
    with Progress("distill w", 10) as p:
        p.update(4, "loss 1.5")
    assert "[distill w] 4/10 (40%)" in capsys.readouterr().err and "loss 1.5" in p.line()


def test_curves_say_what_they_show():
    from minitron_deploy.distill.metrics import curves_figure

    records = [
        {"step": 0, "val_loss": 5.0, "val_kl": 2.0, "holdout_man_loss": 6.0,
         "holdout_man_kl": 3.0},
        {"step": 1, "loss": 3.0, "lr": 1e-4, "parts": {"kl": 3.0, "ce": 0.0}},
        {"step": 2, "loss": 2.5, "lr": 5e-5, "parts": {"kl": 2.5, "ce": 0.0}, "val_loss": 4.0,
         "val_kl": 1.5, "holdout_man_loss": 5.5, "holdout_man_kl": 2.5},
    ]  # fmt: skip
    fig = curves_figure(records, "width/distill: distillation", teacher_loss=2.0)
    assert fig._suptitle.get_text() == "width/distill: distillation"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "training loss",
        "held-out LM loss (nats/token)",
        "held-out KL(teacher || student)",
        "learning rate",
    ]
    labels = {ax.get_title(): [ln.get_label() for ln in ax.get_lines()] for ax in fig.axes}
    assert labels["training loss"] == ["total", "kl"]  # parts on their own, not hidden
    # the validation split and each held-out domain (a kind of text not trained on)
    assert labels["held-out LM loss (nats/token)"] == [
        "student, validation",
        "man",
        "teacher, validation",
    ]
    assert list(fig.axes[1].get_lines()[1].get_ydata()) == [6.0, 5.5]
    assert list(fig.axes[1].get_lines()[2].get_ydata()) == [2.0, 2.0]
    assert labels["held-out KL(teacher || student)"] == ["validation", "man"]


def test_cheap_checks_name_the_problem(tiny_ckpt, tmp_path, capsys):
    from minitron_deploy.cli import main

    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["generate", "--model", str(empty), "--prompt", "hi"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    argv = ["prune", "--model", str(tiny_ckpt), "--out", str(tmp_path / "p")]
    assert main([*argv, "--hidden-size", "50"]) == 2  # not a multiple of the 6 heads
    assert "not a multiple of 6 query heads" in capsys.readouterr().err
    assert main([*argv, "--hidden-size", "48"]) == 2  # width without scores
    assert "needs importance scores" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("seconds", ["0"])
def test_run_log_shows_stage_counter_and_eta(seconds, monkeypatch):
    from minitron_deploy.pipeline.runner import Eta

    eta = Eta({"a": 60.0, "b": 120.0})
    assert eta.line("a") == "(about 1:00; about 3:00 left in this run)"
    eta.done("a", 120.0)  # twice as slow as estimated: the rest scales with it
    assert eta.line("b") == "(about 4:00; about 4:00 left in this run)"


SCENARIO = r"""
import logging, os, subprocess, sys
from minitron_deploy.console import Progress, info, third_party_output_to

lib = logging.getLogger("some_library")
lib.addHandler(logging.StreamHandler(sys.stderr))  # made before, as a library's would be
bar = "\r".join(f"Running requests {i}/360 " + "#" * (i // 4) for i in range(361))
with third_party_output_to(sys.argv[1]):
    print(bar, file=sys.stderr)  # a tqdm bar in a log: one line of thousands of characters
    print("Inserted 756 quantizers")
    lib.warning("Tied weight (declared): dropping 1 alias key(s)")
    os.write(2, b"written by C code\n")
    subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    info("project line: width/distill done")
    with Progress("distill w", 4) as p:
        p.update(4)
print("after the stage")
"""


def test_third_party_output_goes_to_the_stage_log(tmp_path):
    """In a process whose stderr is a log (not a terminal): libraries' prints, logging, progress
    bars, C-level writes and child processes go to the stage's log file; the project's own
    lines (info, Progress) still reach the console, none longer than 200 characters."""
    import subprocess

    log = tmp_path / "logs" / "stage.log"
    r = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(log)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "project line: width/distill done" in r.stderr
    assert "[distill w] 4/4 (100%)" in r.stderr
    assert r.stdout == "after the stage\n"  # stdout is back once the stage is over
    for third in ("Running requests", "quantizers", "Tied weight", "C code", "child process"):
        assert third not in r.stderr + r.stdout, third
        assert third in log.read_text(), third
    assert max(len(line) for line in r.stderr.split("\n")) <= 200


def test_failed_stage_shows_the_tail_of_its_log(tmp_path, monkeypatch):
    import dataclasses

    from minitron_deploy.pipeline import Pipeline, stages
    from minitron_deploy.profile import load_profile

    def failing_source(ctx):  # a stand-in for a stage whose library prints, then fails
        print("\r".join(f"loading weights {i}/50" for i in range(51)), file=sys.stderr)
        print("the library's last words")
        raise RuntimeError("broken weights")

    spec = dataclasses.replace(stages.STAGES["source"], run=failing_source)
    monkeypatch.setitem(stages.STAGES, "source", spec)
    profile = REPO / "profiles" / "ci-tiny.yaml"
    lines: list[str] = []
    rec = Pipeline(load_profile(profile), tmp_path / "wd", profile).run(
        progress=False, log=lines.append
    )
    assert rec["status"] == "failed" and rec["failed_stage"] == "source"
    entry = rec["stages"][0]
    assert (
        Path(entry["log"]).is_file()
        and "the library's last words" in Path(entry["log"]).read_text()
    )
    text = "\n".join(lines)
    assert "broken weights" in text and f"the last lines of its log, {entry['log']}" in text
    # a carriage-return bar shows as its last state, not 50 states on one line
    assert "| loading weights 50/50" in text and "loading weights 49/50" not in text
    assert "| the library's last words" in text


def _eval_stage(variant, tasks):
    return {"stage": "eval", "variant": variant, "node": f"{variant}/eval", "key": "k" * 64,
            "metrics": {"tasks": tasks}}  # fmt: skip


def _task(k, n, chance, output_type="multiple_choice"):
    return {"metrics": {"acc": k / n}, "samples": n, "correct": {"acc": k}, "chance": chance,
            "output_type": output_type}  # fmt: skip


def test_headline_leaves_out_shares_of_a_task_the_teacher_does_not_solve():
    """The demo's numbers: minitron_last_word teacher 2/40, width 0/40, depth 1/40 is noise (no
    share); a cloze task at 26/40 with 4 choices is a result (shares shown). Every score shows
    its items."""
    from minitron_deploy.pipeline.summary import eval_table, summary_markdown, teacher_clear

    record = {"profile": "p", "status": "ok", "run_dir": "/nowhere", "stages": [
        _eval_stage(None, {"cloze": _task(26, 40, 0.25), "last": _task(2, 40, 0.0, "ll")}),
        _eval_stage("width", {"cloze": _task(20, 40, 0.25), "last": _task(0, 40, 0.0, "ll")}),
        _eval_stage("depth", {"cloze": _task(13, 40, 0.25), "last": _task(1, 40, 0.0, "ll")}),
    ]}  # fmt: skip
    table = eval_table(record)
    assert table[0] == ["task", "metric", "teacher", "width", "depth", "note"]
    cloze, last = table[1], table[2]
    assert cloze[2:5] == ["0.650 (26/40)", "0.500 (20/40), 77% of teacher",
                          "0.325 (13/40), 50% of teacher"]  # fmt: skip
    assert cloze[5] == "-"
    assert last[2:5] == ["0.050 (2/40)", "0.000 (0/40)", "0.025 (1/40)"]  # no "%" anywhere
    assert "not clearly above chance" in last[5] and "2/40" in last[5]
    # the bar: the Wilson interval's lower end above chance, or above 0.05 without choices
    assert not teacher_clear(_task(4, 40, 0.0), "acc")[0]
    assert teacher_clear(_task(5, 40, 0.0), "acc")[0]
    assert not teacher_clear(_task(15, 40, 0.25), "acc")[0]  # 0.375 of 40 with 4 choices
    assert teacher_clear(_task(18, 40, 0.25), "acc")[0]
    md = summary_markdown(record)
    assert "| last | acc | 0.050 (2/40) | 0.000 (0/40) | 0.025 (1/40) |" in md


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plan_estimates_in_the_dtype_the_run_computes_in(dtype, monkeypatch):
    """The probe asked is the run's dtype's (at the size the stages' GEMMs reach), and its
    factors are that dtype's: the issue's 2.9x came from a bf16 run estimated from a probe
    that did not represent it."""
    from minitron_deploy import hardware
    from minitron_deploy.commands.plan import totals
    from minitron_deploy.pipeline import estimate as E

    asked = []

    def probe(name, size=256):  # a stand-in for the GEMM probe: records what it was asked
        asked.append((name, size))
        return 100.0

    monkeypatch.setattr(hardware, "gemm_gflops", probe)
    monkeypatch.setenv("MINITRON_AUTO_DTYPE", dtype)
    gflops, got = E.machine_gflops()
    native = dtype in hardware.native_dtypes("cpu")
    assert got == dtype and asked == [(dtype, E.PROBE_SIZE if native else 256)]
    flops = 1e13
    want = E.FIXED_S["distill"] + flops / (100.0 * 1e9 * E.EFFICIENCY[dtype]["distill"])
    assert E.seconds("distill", flops, gflops, got) == pytest.approx(want)
    line = totals([{"status": "to run", "est_seconds": 60.0, "est_bytes": 1e9}])
    assert f"computing in {dtype}" in line and f"within about {E.ACCURACY:g}x" in line
