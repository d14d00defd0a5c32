"""Launchers: ci-tiny under `launcher: torchrun` (2 gloo ranks) matches the local launcher;
the SLURM path with stand-in `sbatch` / `squeue` / `sacct` / `srun` / `scontrol` programs (shell
scripts written here, named "stand-in" in their text) submits, returns under --no-wait, picks the
job's result up on a rerun, reports a FAILED job once and resubmits it, runs distillation as a
job; bad launchers are refused with exit 2 and nothing written."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minitron_deploy.testing import rel_tolerance

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "ci-tiny.yaml"
# The width variant through distillation; no exports, Triton or bench (not what launchers change).
ONLY_WIDTH = ["--only", "width", "--set", "variants.width.export=null"]
ONLY_WIDTH += ["--set", "variants.width.package=null"]


def _run(wd: Path, *extra: str, env: dict | None = None) -> tuple[int, dict | None, str]:
    cmd = [sys.executable, "-m", "minitron_deploy", "run", str(PROFILE), "--workdir", str(wd)]
    r = subprocess.run(
        [*cmd, "--json", "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    lines = r.stdout.strip().splitlines()
    return r.returncode, (json.loads(lines[-1]) if lines else None), r.stderr


# Two ranks reduce in another order than one process: both runs are pinned to float32 (inherited
# by the torchrun ranks) and compared within eps-derived tolerances, whatever auto is here.
FLOAT32 = {**os.environ, "MINITRON_AUTO_DTYPE": "float32"}
DISTILL_STEPS = 4  # ci-tiny's defaults.distill.steps


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("local")
    code, out, err = _run(wd, *ONLY_WIDTH, env=FLOAT32)
    assert code == 0 and out["status"] == "ok", err[-3000:]
    return out


def _scores(out: dict) -> dict[str, torch.Tensor]:
    (s,) = [s for s in out["stages"] if s["node"] == "width/importance"]
    return load_file(str(Path(s["outputs"]["scores"]) / "scores.safetensors"))


def _weights(out: dict) -> dict[str, torch.Tensor]:
    (s,) = [s for s in out["stages"] if s["node"] == "width/distill"]
    return load_file(str(Path(s["outputs"]["model"]) / "model.safetensors"))


def test_torchrun_launcher_matches_local(local_run, tmp_path):
    wd = tmp_path / "wd"
    launcher = "launcher={kind: torchrun, nproc_per_node: 2}"
    code, out, err = _run(wd, *ONLY_WIDTH, "--set", launcher, env=FLOAT32)
    assert code == 0 and out["status"] == "ok", err[-3000:]
    a, b = _scores(local_run), _scores(out)
    assert a.keys() == b.keys()
    tol = rel_tolerance("float32", steps=0)  # fp32 sums of two ranks' halves
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol * a[k].abs().max(), msg=k)
    wa, wb = _weights(local_run), _weights(out)
    assert wa.keys() == wb.keys()
    # Adam moves each element by up to ~lr (1e-4) a step: a rank that skipped the gradient
    # all-reduce (trained on its half of the batch) lands orders of magnitude beyond this
    # bound. A bf16-stored weight may differ by its last bit.
    for k in wa:
        tol = max(rel_tolerance("float32", DISTILL_STEPS), torch.finfo(wa[k].dtype).eps)
        ref = wa[k].float()
        torch.testing.assert_close(wb[k].float(), ref, rtol=tol, atol=tol * ref.abs().max(), msg=k)
    (imp,) = [s for s in json.loads(Path(out["run_dir"], "run.json").read_text())["stages"]
              if s["node"] == "width/importance"]  # fmt: skip
    assert imp["metrics"]["ranks"] == 2
    summary = json.loads(
        (Path(out["stages"][-1]["outputs"]["model"]).parent / "summary.json").read_text()
    )
    assert summary["world_size"] == 2
    assert not list((wd / "scratch").glob("*.launch"))  # launch folders are cleaned up


def _stand_ins(bin_dir: Path, state: Path) -> None:
    """Stand-in SLURM programs: sbatch records the script, prints job ids 4242, 4243, ... and
    marks the job PENDING; squeue prints `state/squeue` while it exists (the test sets the
    state the "cluster" reports); sacct prints `state/sacct`, or says accounting is off; srun
    runs its command; scontrol names localhost."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": f"""\
            #!/bin/sh
            # stand-in for SLURM's sbatch (test double): records the call, prints a job id
            echo "$@" >> {state}/sbatch-calls
            echo PENDING > {state}/squeue
            echo $((4241 + $(wc -l < {state}/sbatch-calls)))";cluster"
            """,
        "squeue": f"""\
            #!/bin/sh
            # stand-in for SLURM's squeue (test double)
            if [ -e {state}/squeue ]; then cat {state}/squeue; fi
            """,
        "sacct": f"""\
            #!/bin/sh
            # stand-in for SLURM's sacct (test double)
            if [ -e {state}/sacct ]; then cat {state}/sacct; exit 0; fi
            echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1
            """,
        "srun": """\
            #!/bin/sh
            # stand-in for SLURM's srun (test double): one node, run the command here
            exec "$@"
            """,
        "scontrol": """\
            #!/bin/sh
            # stand-in for SLURM's scontrol (test double)
            echo localhost
            """,
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(textwrap.dedent(text))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_launcher_submits_waits_and_picks_up(local_run, tmp_path):
    state, bin_dir, wd = tmp_path / "state", tmp_path / "bin", tmp_path / "wd"
    state.mkdir()
    _stand_ins(bin_dir, state)
    env = {**FLOAT32, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["MINITRON_SLURM_POLL_SECONDS"] = "0.2"
    launcher = (
        "launcher={kind: slurm, stages: [importance], slurm: {partition: gpu-batch, "
        f"time: '02:00:00', account: proj1, rdzv_port: {_free_port()}, "
        "extra: ['--exclusive', '--mem=0']}}"
    )
    args = [*ONLY_WIDTH, "--set", launcher]
    code, out, err = _run(wd, *args, "--no-wait", env=env)
    assert code == 0 and out["status"] == "submitted", err[-3000:]
    assert "width/importance: submitted job 4242, rerun to continue" in err
    assert [s["node"] for s in out["stages"]][-1] == "width/importance"
    (script,) = (Path(out["run_dir"]) / "launch").glob("*.sbatch")  # in the run record
    text = script.read_text()
    for line in (
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --partition=gpu-batch",
        "#SBATCH --account=proj1",
        "#SBATCH --time=02:00:00",
        "#SBATCH --exclusive",
        "#SBATCH --mem=0",
    ):
        assert line in text.splitlines(), line
    assert "srun " in text and "--nproc_per_node=1" in text
    assert "-m minitron_deploy.pipeline.worker" in text and '--rdzv-id="$SLURM_JOB_ID"' in text

    # Still queued: a rerun submits nothing new and says so.
    code, out, err = _run(wd, *args, "--no-wait", env=env)
    assert code == 0 and out["status"] == "submitted" and "pending job 4242" in err
    assert (state / "sbatch-calls").read_text().count("--parsable") == 1

    # The "cluster" runs the job (the stand-in srun runs torchrun here), then it leaves the queue.
    (job_script,) = (wd / "scratch").glob("importance-*.launch/job.sbatch")
    cluster = {**env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost"}
    r = subprocess.run(["bash", str(job_script)], env=cluster, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (state / "squeue").unlink()  # it left the queue; no accounting here
    code, out, err = _run(wd, *args, env=env)  # waits (the job is done) and continues
    assert code == 0 and out["status"] == "ok", err[-3000:]
    a, b = _scores(local_run), _scores(out)
    for k in a:
        tol = rel_tolerance("float32", steps=0)  # the same float32 pass on one rank
        torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol * a[k].abs().max(), msg=k)
    assert (state / "sbatch-calls").read_text().count("--parsable") == 1


def test_distillation_under_slurm_fails_once_then_resubmits_and_matches_local(local_run, tmp_path):
    """A FAILED job that squeue still lists is an error (exit 1, naming its log), not "still
    queued"; the next rerun submits again; the job's distillation equals the local one."""
    state, bin_dir, wd = tmp_path / "state", tmp_path / "bin", tmp_path / "wd"
    state.mkdir()
    _stand_ins(bin_dir, state)
    env = {**FLOAT32, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["MINITRON_SLURM_POLL_SECONDS"] = "0.2"
    launcher = f"launcher={{kind: slurm, stages: [distill], slurm: {{rdzv_port: {_free_port()}}}}}"
    args = [*ONLY_WIDTH, "--set", launcher]
    code, out, err = _run(wd, *args, "--no-wait", env=env)
    assert code == 0 and out["status"] == "submitted", err[-3000:]
    assert "width/distill: submitted job 4242, rerun to continue" in err

    # The job fails on the cluster; squeue keeps listing it (FAILED) for a while.
    (state / "squeue").write_text("FAILED\n")
    code, out, err = _run(wd, *args, "--no-wait", env=env)
    assert code == 1 and out["status"] == "failed", err[-3000:]
    assert "SLURM job 4242 ended FAILED" in err and "slurm-4242.out" in err
    # The next rerun submits again (job 4243); the cluster runs it, and it COMPLETED (sacct).
    code, out, err = _run(wd, *args, "--no-wait", env=env)
    assert code == 0 and "width/distill: submitted job 4243" in err, err[-3000:]
    (job_script,) = (wd / "scratch").glob("distill-*.launch/job.sbatch")
    cluster = {**env, "SLURM_JOB_ID": "4243", "SLURM_JOB_NODELIST": "localhost"}
    r = subprocess.run(["bash", str(job_script)], env=cluster, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (state / "squeue").write_text("COMPLETED\n")
    (state / "sacct").write_text("COMPLETED\n")
    code, out, err = _run(wd, *args, env=env)
    assert code == 0 and out["status"] == "ok", err[-3000:]
    assert (state / "sbatch-calls").read_text().count("--parsable") == 2
    wa, wb = _weights(local_run), _weights(out)
    for k in wa:  # both pinned to float32, as the local run
        tol = max(rel_tolerance("float32", DISTILL_STEPS), torch.finfo(wa[k].dtype).eps)
        ref = wa[k].float()
        torch.testing.assert_close(wb[k].float(), ref, rtol=tol, atol=tol * ref.abs().max(), msg=k)


@pytest.mark.parametrize(
    "sets,env_extra,message",
    [
        (["launcher={kind: torchrun, nproc_per_node: 4096}"], {}, "nproc_per_node=4096"),
        (["launcher=slurm"], {"PATH": "/nonexistent"}, "needs `sbatch`"),
        ([], {"WORLD_SIZE": "2", "RANK": "0"}, "started under torchrun"),
        (["launcher={kind: torchrun, nnodes: 2}"], {}, "rdzv_endpoint"),
    ],
)
def test_bad_launchers_exit_2_and_write_nothing(tmp_path, sets, env_extra, message):
    wd = tmp_path / "wd"
    env = {**os.environ, **env_extra}
    extra = [x for s in sets for x in ("--set", s)]
    code, _, err = _run(wd, *ONLY_WIDTH, *extra, env=env)
    assert code == 2, err[-2000:]
    assert message in err
    assert not (wd / "runs").exists() and not list((wd / "cache").glob("*/*/content"))


def test_plan_lists_each_distributed_stage_launch(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "minitron_deploy",
        "plan",
        str(PROFILE),
        "--workdir",
        str(tmp_path),
    ]
    cmd += ["--set", "launcher={kind: torchrun, nproc_per_node: 8, nnodes: 2, "
            "rdzv_endpoint: 'node0:29500'}"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for node in ("width/importance", "width/distill", "depth/distill"):
        assert f"{node}: " in r.stderr and "--nnodes=2" in r.stderr
    assert (
        "--rdzv-endpoint=node0:29500" in r.stderr
        and "-m minitron_deploy.pipeline.worker" in r.stderr
    )
