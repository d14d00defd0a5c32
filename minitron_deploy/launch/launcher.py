"""Running one stage under torchrun or SLURM, with `run` as the one orchestrator.

The runner writes a job (`job.json`: the stage, its typed config, its inputs as store keys,
where to write) into the node's launch folder (`<workdir>/scratch/<stage>-<key>.launch/`) and
starts the worker (`python -m minitron_deploy.pipeline.worker job.json`) on every rank:

- `torchrun`: `torchrun --standalone --nproc_per_node N -m minitron_deploy.pipeline.worker JOB`
  (with nnodes > 1: `--nnodes --rdzv-backend --rdzv-endpoint --rdzv-id` instead of
  `--standalone`; the other nodes run the same command) as a subprocess of `run`.
- `slurm`: an sbatch script (one task per node; `srun torchrun ...` with the head node as the
  rendezvous endpoint) written into the launch folder and the run record, submitted with
  `sbatch --parsable`; `run` polls the job's state (`sacct`, else `squeue`; `WAITING_STATES`)
  until it ends, or returns at once under `--no-wait` ("submitted job N, rerun to continue").
  A rerun finds the job by the launch folder; once it ended, the folder forgets it (a failed
  job is reported once, exit 1, and the next rerun submits again).

Rank 0 writes the stage's content into the launch folder's `out/` and its result into
`result.json` (or the error into `error.json`); `run` moves `out/` into the artifact. The launch
folder must be on a filesystem every node sees (the work folder, for SLURM).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from minitron_deploy.console import capturing, terminal
from minitron_deploy.errors import ConfigError, InputError, StageError
from minitron_deploy.fsutil import atomic_write_json, atomic_write_text
from minitron_deploy.hardware import find_program
from minitron_deploy.launch.config import LauncherConfig

JOB, RESULT, ERROR, SUBMITTED = "job.json", "result.json", "error.json", "submitted.json"
OUT = "out"  # rank 0 writes the stage's content here
# The program every rank runs, named as torchrun names it (`-m`): the launcher starts the
# pipeline's worker, it does not import it (the pipeline sits above `launch/`).
WORKER = "minitron_deploy.pipeline.worker"
POLL_SECONDS = float(os.environ.get("MINITRON_SLURM_POLL_SECONDS", "30"))

SBATCH_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name=${job_name}
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${gpus_per_node}
#SBATCH --time=${time}
#SBATCH --output=${output}
${partition_line}${account_line}${extra}
# Written by minitron-deploy run: one task per node, torchrun starts the per-GPU ranks.
set -euo pipefail
${command}
"""


class Submitted(Exception):
    """A SLURM job was submitted (or is still queued) and `run --no-wait` returns now."""

    def __init__(self, job_id: str, node_id: str, state: str = "submitted"):
        super().__init__(f"{node_id}: {state} job {job_id}, rerun to continue")
        self.job_id, self.node_id = job_id, node_id


def programs(cfg: LauncherConfig) -> tuple[str, ...]:
    """Programs the launcher needs on this machine."""
    if cfg.kind == "torchrun":
        return ("torchrun",)
    if cfg.kind == "slurm":
        return ("sbatch", "squeue")
    return ()


def check_available(cfg: LauncherConfig, where: str = "launcher.kind") -> None:
    """Refuse a launcher whose programs are not installed, or more local ranks than devices.

    Raises:
        ConfigError: naming the missing program or the device count.
    """
    for prog in programs(cfg):
        if find_program(prog) is None:
            raise ConfigError(
                f"launcher {cfg.kind!r} needs `{prog}`, which is not on PATH",
                where=where,
                fix="install it (torchrun comes with torch; sbatch with SLURM), or set "
                "launcher: local",
            )
    if cfg.kind == "torchrun":
        have, what = local_devices()
        if cfg.nproc_per_node > have:
            raise ConfigError(
                f"nproc_per_node={cfg.nproc_per_node} is more than the {have} {what} here",
                where="launcher.nproc_per_node",
                fix=f"set launcher.nproc_per_node <= {have}",
            )


def local_devices() -> tuple[int, str]:
    """(count, kind) of the devices ranks can use here: CUDA GPUs, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA devices"
    return os.cpu_count() or 1, "CPU cores"


def worker_args(job: Path) -> list[str]:
    return ["-m", WORKER, str(job)]


def torchrun_argv(cfg: LauncherConfig, job: Path, rdzv_id: str, exe: str = "torchrun") -> list[str]:
    """The torchrun command line of one node."""
    argv = [exe, f"--nproc_per_node={cfg.nproc_per_node}"]
    if cfg.nnodes == 1:
        argv.append("--standalone")
    else:
        argv += [
            f"--nnodes={cfg.nnodes}",
            f"--rdzv-backend={cfg.rdzv_backend}",
            f"--rdzv-endpoint={cfg.rdzv_endpoint}",
            f"--rdzv-id={cfg.rdzv_id or rdzv_id}",
        ]
    return argv + worker_args(job)


def sbatch_script(cfg: LauncherConfig, job: Path, job_name: str, cwd: Path) -> str:
    """The sbatch script that runs `job` on `cfg.nnodes` nodes.

    Raises:
        ConfigError: an unreadable template, or one without ${command}.
    """
    s = cfg.slurm
    torchrun = find_program("torchrun") or "torchrun"
    node_cmd = [
        torchrun,
        f"--nnodes={cfg.nnodes}",
        f"--nproc_per_node={cfg.nproc_per_node}",
        f"--rdzv-backend={cfg.rdzv_backend}",
        '--rdzv-id="$SLURM_JOB_ID"',
        f'--rdzv-endpoint="$HEAD:{s.rdzv_port}"',
        *[shlex.quote(a) for a in worker_args(job)],
    ]
    command = "\n".join(
        [
            f"cd {shlex.quote(str(cwd))}",
            'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
            "srun " + " ".join(node_cmd),
        ]
    )
    text = SBATCH_TEMPLATE
    if s.template:
        try:
            text = Path(s.template).read_text()
        except OSError as e:
            raise ConfigError(
                f"cannot read the sbatch template: {e}", where="launcher.slurm.template"
            ) from e
        if "${command}" not in text:
            raise ConfigError(
                "the sbatch template has no ${command} (where the launch goes)",
                where=s.template,
                fix="add a line ${command}",
            )
    values = {
        "job_name": job_name,
        "nodes": cfg.nnodes,
        "gpus_per_node": cfg.nproc_per_node,
        "time": s.time,
        "output": str(job.parent / "slurm-%j.out"),
        "partition_line": f"#SBATCH --partition={s.partition}\n" if s.partition else "",
        "account_line": f"#SBATCH --account={s.account}\n" if s.account else "",
        "extra": "".join(f"#SBATCH {option}\n" for option in s.extra),
        "command": command,
    }
    try:
        return string.Template(text).substitute(values)
    except (KeyError, ValueError) as e:
        raise ConfigError(
            f"the sbatch template names an unknown or bad variable: {e}",
            where=s.template or "launcher.slurm",
            fix="use only " + " ".join("${" + k + "}" for k in values),
        ) from e


def launch_commands(cfg: LauncherConfig, launch_dir: Path, node_id: str) -> list[str]:
    """What `run` will execute for a node (for `plan`)."""
    job = launch_dir / JOB
    if cfg.kind == "torchrun":
        line = shlex.join(torchrun_argv(cfg, job, launch_dir.name))
        if cfg.nnodes > 1:
            return [line, f"(and the same on each of the other {cfg.nnodes - 1} nodes)"]
        return [line]
    if cfg.kind == "slurm":
        return [
            f"sbatch --parsable {launch_dir / 'job.sbatch'}  "
            f"# {cfg.nnodes} node(s) x {cfg.nproc_per_node} GPU(s), srun torchrun ... "
            f"-m {WORKER}"
        ]
    return []


# -- running -----------------------------------------------------------------------------------
def write_job(launch_dir: Path, job: dict[str, Any]) -> Path:
    launch_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(launch_dir / JOB, job)
    return launch_dir / JOB


def _outcome(launch_dir: Path, log_path: str | None = None) -> dict[str, Any] | None:
    """The finished job's result, or raise its error; None when it left neither."""
    if (launch_dir / ERROR).is_file():
        err = json.loads((launch_dir / ERROR).read_text())
        (launch_dir / ERROR).unlink()  # a rerun starts the job again
        cls = {2: InputError, 1: StageError}.get(err.get("exit_code", 1), StageError)
        raise cls(err.get("error", "the distributed stage failed"), where=log_path)
    if (launch_dir / RESULT).is_file():
        return json.loads((launch_dir / RESULT).read_text())
    return None


# A plain progress line of `console.Progress` ("[distill width] 12/48 (25%) ...").
_PROGRESS_LINE = re.compile(r"^\[[^\]\n]{1,80}\] \d")


def run_torchrun(cfg: LauncherConfig, launch_dir: Path, log) -> dict[str, Any]:
    """Run the job under torchrun on this node; its output goes to stderr and launch.log."""
    exe = find_program("torchrun") or "torchrun"
    argv = torchrun_argv(cfg, launch_dir / JOB, launch_dir.name, exe)
    if cfg.nnodes > 1:
        log(f"  start on each of the other {cfg.nnodes - 1} nodes: {shlex.join(argv)}")
    log(f"  launch: {shlex.join(argv)}")
    for stale in (RESULT, ERROR):
        (launch_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(launch_dir / OUT, ignore_errors=True)
    tail: list[str] = []
    with open(launch_dir / "launch.log", "a") as logf:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                sys.stderr.write(line)  # the stage's log while the pipeline runs it
                if capturing() and _PROGRESS_LINE.match(line):
                    terminal().write(line)  # the ranks' progress lines stay on the console
                tail = (tail + [line.rstrip()])[-20:]
            code = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    result = _outcome(launch_dir)
    if code != 0 or result is None:
        raise StageError(
            f"torchrun exited with {code}: " + (tail[-1] if tail else "no output"),
            where=str(launch_dir / "launch.log"),
        )
    return result


# SLURM job states (squeue(1) / sacct(1) "JOB STATE CODES") in which the job has not ended: it
# waits for resources, runs, is held, suspended or requeued. Every other state (COMPLETED,
# FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, BOOT_FAIL, DEADLINE, ...,
# and any state this table does not know) means it ended; squeue keeps ended jobs listed a while.
WAITING_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "RESV_DEL_HOLD",
        "SIGNALING",
        "STAGE_OUT",
    }
)


def _first_state(text: str) -> str | None:
    """The state word of a squeue / sacct line ("CANCELLED by 1234" -> "CANCELLED")."""
    for line in text.splitlines():
        words = line.replace("|", " ").split()
        if words:
            return words[0].rstrip("+").upper()
    return None


def job_state(job_id: str) -> str | None:
    """The job's state: sacct's (`sacct -X -n -P -o State -j ID`, the allocation's own line)
    where accounting knows the job, else squeue's; None when neither knows it (it left the
    queue and there is no accounting)."""
    sacct = find_program("sacct")
    if sacct:
        r = subprocess.run(
            [sacct, "-X", "-n", "-P", "-o", "State", "-j", job_id],
            capture_output=True,
            text=True,
        )
        state = _first_state(r.stdout) if r.returncode == 0 else None
        if state:
            return state
    r = subprocess.run(
        [find_program("squeue") or "squeue", "-h", "-j", job_id, "-o", "%T"],
        capture_output=True,
        text=True,
    )
    return _first_state(r.stdout) if r.returncode == 0 else None


def _submit(
    cfg: LauncherConfig, launch_dir: Path, job_name: str, record_dir: Path, node_id: str, log
) -> str:
    """Write the sbatch script (launch folder and run record) and submit it; the job id."""

    for stale in (RESULT, ERROR):  # what an earlier job of this node left
        (launch_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(launch_dir / OUT, ignore_errors=True)
    script = sbatch_script(cfg, launch_dir / JOB, job_name, Path.cwd())
    atomic_write_text(launch_dir / "job.sbatch", script)
    record_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_dir / f"{job_name}.sbatch", script)  # in the run record
    r = subprocess.run(
        [find_program("sbatch") or "sbatch", "--parsable", str(launch_dir / "job.sbatch")],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise StageError(
            f"sbatch refused the job: {(r.stderr or r.stdout).strip()[-500:]}",
            where=str(launch_dir / "job.sbatch"),
        )
    job_id = r.stdout.strip().split(";")[0]
    atomic_write_json(
        launch_dir / SUBMITTED, {"job_id": job_id, "node": node_id, "submitted": time.time()}
    )
    log(f"  submitted SLURM job {job_id} ({launch_dir / 'job.sbatch'})")
    return job_id


def run_slurm(
    cfg: LauncherConfig,
    launch_dir: Path,
    job_name: str,
    record_dir: Path,
    wait: bool,
    log,
    node_id: str,
) -> dict[str, Any]:
    """Submit the job (or find the one submitted before), wait for it, return its result.

    A job whose state is in `WAITING_STATES` is waited for (or, under `wait=False`, reported
    with `Submitted`); any other state, or a job no tool knows any more, has ended: its result
    is taken, or its error raised, and the launch folder forgets the job, so the next rerun
    submits it again.

    Raises:
        Submitted: under `wait=False`, while the job waits or runs.
        StageError: the job ended without a result (FAILED, CANCELLED, TIMEOUT, vanished ...),
            naming its log `slurm-N.out`; or the stage failed in the job (its own error, exit
            code 2 when the stage found the input wrong).
    """
    sub = launch_dir / SUBMITTED
    job_id = json.loads(sub.read_text())["job_id"] if sub.is_file() else None
    if job_id is None:
        if (launch_dir / RESULT).is_file():  # `run` stopped between the job's end and here
            return json.loads((launch_dir / RESULT).read_text())
        job_id = _submit(cfg, launch_dir, job_name, record_dir, node_id, log)
        if not wait:
            raise Submitted(job_id, node_id)
    while True:
        state = job_state(job_id)
        if state not in WAITING_STATES:
            break
        if not wait:
            raise Submitted(job_id, node_id, state.lower())
        time.sleep(POLL_SECONDS)
    sub.unlink(missing_ok=True)  # it ended: whatever comes next, a rerun submits again
    job_log = str(launch_dir / f"slurm-{job_id}.out")
    result = _outcome(launch_dir, job_log)
    if result is None:
        how = f"ended {state}" if state else "left the queue (neither squeue nor sacct knows it)"
        raise StageError(
            f"SLURM job {job_id} {how}, without a result",
            where=job_log,
            fix="read its log; rerun to submit it again (distillation resumes from its "
            "checkpoints)",
        )
    return result


def refuse_under_torchrun() -> None:
    """`run` is the orchestrator: refuse to be started by torchrun (every rank would run
    every stage against one store).

    Raises:
        ConfigError: under torchrun.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "`minitron-deploy run` was started under torchrun: it is the one orchestrator and "
            "launches the distributed stages itself",
            fix="run it once, without torchrun, and set `launcher: {kind: torchrun, "
            "nproc_per_node: N}` (or kind: slurm) in the profile",
        )
