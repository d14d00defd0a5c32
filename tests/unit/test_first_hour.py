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
