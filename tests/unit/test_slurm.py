"""SLURM job states read right, against STAND-IN `sbatch` / `squeue` / `sacct` programs (shell
scripts written here, each saying it is a stand-in): a job waits only in a waiting state; a
FAILED, CANCELLED, TIMEOUT or vanished job is reported once (exit 1, naming its log) and the next
rerun submits again; the sbatch fields a profile sets are checked before they reach the script."""

from __future__ import annotations

import json
import stat
import textwrap

import pytest

from minitron_deploy.cli import main
from minitron_deploy.errors import InputError, StageError
from minitron_deploy.launch import launcher as lx
from minitron_deploy.launch.config import LauncherConfig

STANDINS = {
    "sbatch": """\
        #!/bin/sh
        # STAND-IN for SLURM's sbatch (test double): counts submissions, prints the job id
        n=$(cat {state}/count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {state}/count
        echo $((4241 + n))";cluster"
        """,
    "squeue": """\
        #!/bin/sh
        # STAND-IN for SLURM's squeue (test double): prints state/squeue if there is one
        if [ -e {state}/squeue ]; then cat {state}/squeue; fi
        """,
    "sacct": """\
        #!/bin/sh
        # STAND-IN for SLURM's sacct (test double): accounting off unless state/sacct exists
        if [ -e {state}/sacct ]; then cat {state}/sacct; exit 0; fi
        echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1
        """,
}


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    """Stand-in SLURM programs on PATH, and a launch folder; `say(squeue=..., sacct=...)`
    sets what they report."""
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    for name, text in STANDINS.items():
        p = bin_dir / name
        p.write_text(textwrap.dedent(text.format(state=state)))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    launch = tmp_path / "distill-abc.launch"
    lx.write_job(launch, {"stage": "distill"})

    class Cluster:
        launch_dir = launch

        @staticmethod
        def say(squeue: str | None = None, sacct: str | None = None) -> None:
            for name, text in (("squeue", squeue), ("sacct", sacct)):
                if text is None:
                    (state / name).unlink(missing_ok=True)
                else:
                    (state / name).write_text(text + "\n")

        @staticmethod
        def submissions() -> int:
            return int((state / "count").read_text()) if (state / "count").exists() else 0

        @staticmethod
        def run(wait: bool = False):
            return lx.run_slurm(
                LauncherConfig(kind="slurm"),
                launch,
                "prof-width-distill",
                tmp_path / "record",
                wait,
                lambda msg: None,
                "width/distill",
            )

    return Cluster


@pytest.mark.parametrize(
    "squeue,sacct,state",
    [
        ("PENDING", None, "pending"),
        ("RUNNING", "RUNNING", "running"),
        ("COMPLETING", "COMPLETING", "completing"),
        ("SUSPENDED", None, "suspended"),
        (None, "REQUEUED", "requeued"),
    ],
)
def test_a_waiting_job_is_waited_for(cluster, squeue, sacct, state):
    with pytest.raises(lx.Submitted, match="submitted job 4242"):
        cluster.run()
    cluster.say(squeue=squeue, sacct=sacct)
    with pytest.raises(lx.Submitted, match=f"{state} job 4242, rerun to continue"):
        cluster.run()
    assert cluster.submissions() == 1


@pytest.mark.parametrize(
    "squeue,sacct,how",
    [
        ("FAILED", "FAILED", "ended FAILED"),  # squeue still lists it: not "queued"
        ("CANCELLED", "CANCELLED by 1000", "ended CANCELLED"),
        ("TIMEOUT", None, "ended TIMEOUT"),  # no accounting: squeue's word
        ("RUNNING", "NODE_FAIL", "ended NODE_FAIL"),  # sacct knows better than squeue
        (None, None, "left the queue"),  # vanished: neither knows it
    ],
)
def test_an_ended_job_fails_once_naming_its_log_and_the_rerun_submits(cluster, squeue, sacct, how):
    with pytest.raises(lx.Submitted):
        cluster.run()
    cluster.say(squeue=squeue, sacct=sacct)
    with pytest.raises(StageError) as e:
        cluster.run()
    assert e.value.exit_code == 1
    msg = e.value.one_line()
    assert f"SLURM job 4242 {how}" in msg and "without a result" in msg
    assert str(cluster.launch_dir / "slurm-4242.out") in msg
    # the next rerun submits again (one failure report, not two)
    cluster.say(squeue=None, sacct=None)
    with pytest.raises(lx.Submitted, match="submitted job 4243"):
        cluster.run()
    assert cluster.submissions() == 2


def test_a_job_that_wrote_its_error_reports_it_and_the_rerun_submits(cluster):
    with pytest.raises(lx.Submitted):
        cluster.run()
    (cluster.launch_dir / lx.ERROR).write_text(
        json.dumps({"error": "distillation diverged at step 7", "exit_code": 1})
    )
    cluster.say(squeue="FAILED", sacct="FAILED")
    with pytest.raises(StageError, match="diverged at step 7") as e:
        cluster.run()
    assert "slurm-4242.out" in e.value.one_line()
    with pytest.raises(lx.Submitted, match="submitted job 4243"):
        cluster.run()  # not "ended without a result" first
    # a stage that found the input wrong keeps its exit code 2
    (cluster.launch_dir / lx.ERROR).write_text(json.dumps({"error": "bad", "exit_code": 2}))
    cluster.say(sacct="COMPLETED")
    with pytest.raises(InputError):
        cluster.run()


def test_a_completed_job_gives_its_result(cluster):
    with pytest.raises(lx.Submitted):
        cluster.run()
    (cluster.launch_dir / lx.RESULT).write_text(json.dumps({"outputs": {"model": "final"}}))
    cluster.say(squeue="COMPLETED", sacct="COMPLETED")
    assert cluster.run(wait=True) == {"outputs": {"model": "final"}}
    assert not (cluster.launch_dir / lx.SUBMITTED).exists()


SLURM_PROFILE = """\
name: s
source: builtin:tiny-llama
data: {{calibration: builtin:pydoc-topics}}
variants:
  - name: width
    prune: {{hidden_size: 48}}
launcher:
  kind: slurm
  slurm: {slurm}
"""


@pytest.mark.parametrize(
    "slurm,problem",
    [
        ("{partition: 'gpu; rm -rf ~'}", "launcher.slurm.partition (line 9): must be a SLURM name"),
        ('{account: "proj\\nrm -rf ~"}', "launcher.slurm.account (line 9): must be a SLURM name"),
        ("{time: 2 days}", "launcher.slurm.time (line 9): must be a SLURM time limit"),
        ("{extra: ['--exclusive', 'module load cuda']}", "item 1 'module load cuda' is not"),
        ("{extra: ['#SBATCH --exclusive']}", "write '--exclusive'"),
        ("{extra: ['--mem=$(id)']}", "is not an sbatch option"),
        ("{extra: ['--gpus-per-node=4']}", "set launcher.nproc_per_node instead"),
    ],
)
def test_sbatch_fields_are_checked_at_load(tmp_path, capsys, slurm, problem):
    p = tmp_path / "s.yaml"
    p.write_text(SLURM_PROFILE.format(slurm=slurm))
    assert main(["validate", str(p)]) == 2
    assert problem in capsys.readouterr().err


def test_checked_sbatch_fields_reach_the_script(tmp_path):
    cfg = LauncherConfig(
        kind="slurm",
        slurm={
            "partition": "gpu,gpu-long",
            "account": "proj_1",
            "time": "2-00:00:00",
            "extra": ["--exclusive", "--mem=0", "--constraint=h100|a100"],
        },
    )
    lines = lx.sbatch_script(cfg, tmp_path / "job.json", "j", tmp_path).splitlines()
    for line in (
        "#SBATCH --partition=gpu,gpu-long",
        "#SBATCH --account=proj_1",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --exclusive",
        "#SBATCH --mem=0",
        "#SBATCH --constraint=h100|a100",
    ):
        assert line in lines, line
    head = [x for x in lines if x and not x.startswith("#")]
    assert head[0] == "set -euo pipefail"  # nothing from the profile runs before the launch


def test_state_table_names_every_waiting_state():
    # squeue(1) JOB STATE CODES in which a job has not ended; all others have.
    assert {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"} <= lx.WAITING_STATES
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE"}  # fmt: skip
    assert not ended & lx.WAITING_STATES
