"""The compiler: profile -> stage graph -> keys -> plan (cached or to run, and why) -> run.

Every node's artifact key is computed from its typed config, its upstream keys and its stage's
environment (code digest, library versions, hardware) before anything runs, so `plan` is exact
and a rerun after a crash resumes at the first stage without a sealed artifact. The runner reads
the stage table (`stages.STAGES`, one module per stage) and knows no stage by name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from minitron_deploy.bench.gate import INCONCLUSIVE_PREFIX
from minitron_deploy.console import clock, log_tail, third_party_output_to
from minitron_deploy.errors import InputError, MinitronError
from minitron_deploy.fsutil import HashCache, atomic_write_json, atomic_write_text, sha256_json
from minitron_deploy.hardware import auto_dtype_name, local_device, machine, processor
from minitron_deploy.launch import launcher as lx
from minitron_deploy.launch.launcher import Submitted, check_available, launch_commands
from minitron_deploy.model.footprint import check_resources  # scale
from minitron_deploy.pipeline.codehash import code_digest
from minitron_deploy.pipeline.estimate import machine_gflops
from minitron_deploy.pipeline.execute import execute, make_job, open_context
from minitron_deploy.pipeline.graph import Node, build_graph
from minitron_deploy.pipeline.stages import STAGES, node_peak_bytes, peak_needs
from minitron_deploy.pipeline.stages import estimate as estimate_node
from minitron_deploy.pipeline.store import Artifact, ArtifactStore, artifact_key
from minitron_deploy.pipeline.summary import summary_markdown

# What a run function gets (`StageContext`: inputs, text splits) is part of every stage's code.
CONTEXT_MODULE = "minitron_deploy.pipeline.context"


@functools.cache
def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "absent"


def library_versions(libs: tuple[str, ...]) -> dict[str, str]:
    """Installed versions (read once per process)."""
    return {lib: _version(lib) for lib in libs}


def _cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its finished children: beside a
    stage's wall seconds, how busy it kept the processor (on a shared machine, its wall time
    is longer than its CPU time / threads)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Eta:
    """Time left in a run: the estimates of the stages to go, scaled by how the finished
    stages' real times compare with their estimates."""

    def __init__(self, estimates: dict[str, float]):
        self.left = dict(estimates)
        self.est_done = self.real_done = 0.0

    def done(self, node_id: str, seconds: float) -> None:
        est = self.left.pop(node_id, 0.0)
        if est > 0:
            self.est_done += est
            self.real_done += seconds

    def line(self, node_id: str) -> str:
        scale = self.real_done / self.est_done if self.est_done > 30 else 1.0
        scale = min(max(scale, 0.25), 4.0)
        this = self.left.get(node_id, 0.0) * scale
        rest = sum(self.left.values()) * scale
        if rest <= 0:
            return ""
        return f"(about {clock(this)}; about {clock(rest)} left in this run)"


def _absolute(art: Artifact, value: Any) -> Any:
    """An output naming a file or folder of the artifact, as an absolute path."""
    if isinstance(value, str) and not Path(value).is_absolute() and (art.content / value).exists():
        return str(art.content / value)
    return value


def link_outputs(root: Path, links: dict[str, str]) -> dict[str, str]:
    """Relative symlinks `root/<name>` -> target, so the folder can be moved or uploaded as one.

    Returns the links made (name -> absolute target).
    """
    made = {}
    for name, target in links.items():
        t = Path(target)
        if not t.exists():
            continue
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(t.resolve(), link.parent.resolve()), link)
        made[name] = str(t.resolve())
    return made


class Pipeline:
    """A profile bound to a work folder: graph, keys, plan and run."""

    def __init__(
        self,
        profile: Any,
        workdir: str | Path,
        profile_path: str | Path | None = None,
        source_shape: dict | None = None,
    ):
        self.profile = profile
        self.workdir = Path(workdir).resolve()  # records and outputs name absolute paths
        self.profile_path = Path(profile_path) if profile_path else None
        self.store = ArtifactStore(self.workdir / "cache")
        base = self.profile_path.parent if self.profile_path else Path.cwd()
        self.source_shape = source_shape
        self.nodes: list[Node] = build_graph(profile, base, source_shape)
        self.by_id = {n.id: n for n in self.nodes}
        self._hw: str | None = None
        self._device: str | None = None
        self._config_sha: dict[str, str] = {}  # what of each node's config entered its key
        self._compute_keys()

    # -- keys -------------------------------------------------------------------------------
    def device_of(self, node: Node) -> str:
        """The device `node`'s process computes on: a SLURM job's GPU node, else this
        machine's (cuda where it has one)."""
        launcher = self.profile.launcher
        if launcher.kind == "slurm" and launcher.runs(node.stage):
            return "cuda"  # the sbatch script asks for --gpus-per-node
        if self._device is None:
            self._device = local_device()
        return self._device

    def env_of(self, node: Node) -> dict[str, Any]:
        """What besides config and upstream keys enters `node`'s key: the digest of the code
        its run function reaches (`codehash`), library versions, the dtypes it computes in on
        the device it runs on, and the machine for measurements."""
        spec = STAGES[node.stage]
        env: dict[str, Any] = {
            "code": code_digest([spec.run, spec.keyed], [CONTEXT_MODULE]),
            "libraries": library_versions(spec.libraries),
        }
        if spec.hardware_dependent:
            if self._hw is None:
                self._hw = machine()
            env["hardware"] = self._hw
        if spec.compute is not None:
            env["compute_dtype"] = spec.compute(node.config, self.device_of(node))
        return env

    def _compute_keys(self) -> None:
        hashes = HashCache(self.workdir / "cache" / ".source-hashes.json")
        for node in self.nodes:
            upstream = {role: self.by_id[nid].key for role, nid in node.inputs.items()}
            keyed = STAGES[node.stage].keyed
            config = keyed(node.config, hashes) if keyed else node.config.model_dump(mode="json")
            self._config_sha[node.id] = sha256_json(config)
            node.key = artifact_key(node.stage, config, upstream, self.env_of(node))
        hashes.save()

    def select(self, only: str | None) -> list[Node]:
        """Nodes needed for variant `only` (with its ancestors), or for the node of that id
        (e.g. "search"), or all."""
        if only is None:
            return list(self.nodes)
        if only in self.by_id and only not in {n.variant for n in self.nodes}:
            stack = [only]
        elif only not in {n.variant for n in self.nodes if n.variant}:
            names = sorted({n.variant for n in self.nodes if n.variant})
            raise InputError(
                f"no variant named {only!r}", where="--only", fix=f"variants are {names}"
            )
        else:
            stack = [n.id for n in self.nodes if n.variant == only]
        need: set[str] = set()
        while stack:
            nid = stack.pop()
            if nid not in need:
                need.add(nid)
                stack.extend(self.by_id[nid].inputs.values())
        return [n for n in self.nodes if n.id in need]

    # -- plan -------------------------------------------------------------------------------
    def estimates(self, nodes: list[Node]) -> dict[str, tuple[float | None, float | None]]:
        """(seconds, bytes) of each node that would run (0 for cached ones and repeats)."""
        gflops, dtype = machine_gflops()
        self.probe = {"gflops": gflops, "dtype": dtype}
        out, seen = {}, set()
        for node in nodes:
            if node.key in seen or self.store.get(node.stage, node.key) is not None:
                out[node.id] = (0.0, 0.0)
            else:
                out[node.id] = tuple(estimate_node(node, gflops, dtype)[:2])
            seen.add(node.key)
        return out

    def _last_record(self) -> dict[str, Any]:
        runs = self.workdir / "runs" / self.profile.name
        for rec in sorted(runs.glob("*/run.json"), reverse=True):
            try:
                return {s["node"]: s for s in json.loads(rec.read_text())["stages"]}
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return {}

    def _check_resources(self, selected: list[Node], est: dict) -> None:
        """scale: refuse (exit 2) a run whose stages this machine cannot hold even streamed,
        or whose artifacts exceed the free disk; not when planned with --source-shape (for
        another machine: the rows show each stage's needs)."""
        if self.source_shape is not None:
            return
        launched = {n.id for n in selected if self.profile.launcher.runs(n.stage)}
        check_resources(peak_needs(selected, launched), est, self.workdir)

    def plan(self, only: str | None = None) -> list[dict[str, Any]]:
        """For each node: cached / to run (with the reason) / unavailable (with the reason)."""
        last = self._last_record()
        rows, seen_keys = [], {}
        selected = self.select(only)
        est = self.estimates(selected)
        self._check_resources(selected, est)
        for node in selected:
            spec = STAGES[node.stage]
            row = {
                "node": node.id,
                "variant": node.variant,
                "stage": node.stage,
                "key": node.key[:16],
            }
            missing = spec.missing(node.config)
            if self.store.get(node.stage, node.key) is not None:
                row.update(status="cached", why="artifact present")
            elif missing:
                row.update(status="unavailable", why=missing)
            elif node.key in seen_keys:
                row.update(status="to run", why=f"same artifact as {seen_keys[node.key]}")
            else:
                prev = last.get(node.id)
                if prev is None:
                    why = "never built"
                elif prev.get("config_sha") != self._config_sha[node.id]:
                    why = "its settings (or the content they name) changed"
                elif prev.get("env_sha") and prev["env_sha"] != sha256_json(self.env_of(node)):
                    why = "its code, a library version or the machine changed"
                elif prev.get("key", "")[:16] != node.key[:16]:
                    why = "an upstream artifact changed"
                else:
                    why = "artifact missing or corrupt"
                row.update(status="to run", why=why)
            row["est_seconds"], row["est_bytes"] = est[node.id]
            row["est_peak_bytes"] = node_peak_bytes(node)  # scale: least host memory
            launcher = self.profile.launcher
            if spec.distributed and launcher.runs(node.stage):
                launch_dir = self.workdir / "scratch" / f"{node.stage}-{node.key[:24]}.launch"
                row["launch"] = launch_commands(launcher, launch_dir, node.id)
            seen_keys.setdefault(node.key, node.id)
            rows.append(row)
        return rows

    # -- run --------------------------------------------------------------------------------
    def run(
        self,
        only: str | None = None,
        progress: bool = True,
        log=None,
        wait: bool = True,
        stage_logs: bool = True,
    ) -> dict[str, Any]:
        """Run every selected node that is not cached. Returns the run record (status ok,
        failed, or submitted: a SLURM job is queued and `wait` is False).

        With `stage_logs`, what libraries and child processes print while a stage runs goes to
        the stage's log file (`logs/<node>.log` in the run's folder, named in its record entry
        as `log`); the console keeps `log`'s lines and progress, and a failure shows the log's
        tail. Without, everything is printed as it comes (`run -v`).

        Raises:
            ConfigError: the profile's launcher is not installed here, or asks for more ranks
                than this machine has devices (before any stage runs).
        """
        log = log or (lambda msg: None)
        self._wait = wait
        self._stage_logs = stage_logs
        started = time.time()
        run_dir = (
            self.workdir
            / "runs"
            / self.profile.name
            / time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
        )
        while run_dir.exists():
            run_dir = run_dir.with_name(run_dir.name + "-1")
        record: dict[str, Any] = {
            "status": "ok",
            "profile": self.profile.name,
            "profile_path": str(self.profile_path or ""),
            "run_dir": str(run_dir),
            "started_unix": started,
            "processor": processor(),
            "compute_dtype": auto_dtype_name("cpu"),
            "stages": [],
        }
        done: dict[str, Artifact] = {}
        links: dict[str, str] = {}
        selected = self.select(only)
        self._run_dir = run_dir
        launcher = self.profile.launcher
        if any(
            STAGES[n.stage].distributed
            and launcher.runs(n.stage)
            and self.store.get(n.stage, n.key) is None
            for n in selected
        ):
            check_available(launcher)
        estimates = self.estimates(selected)
        self._check_resources(selected, estimates)
        est = {k: v[0] or 0.0 for k, v in estimates.items()}
        eta = Eta(est)
        for k, node in enumerate(selected, 1):
            spec = STAGES[node.stage]
            t0 = time.time()
            env = self.env_of(node)
            t0, cpu0 = time.time(), _cpu_seconds()
            entry = {
                "variant": node.variant,
                "stage": node.stage,
                "node": node.id,
                "key": node.key,
                "config_sha": self._config_sha[node.id],
                "env_sha": sha256_json(env),
                "compute_dtype": env.get("compute_dtype"),
            }
            art = self.store.get(node.stage, node.key)
            cached = art is not None
            if not cached:
                missing = spec.missing(node.config)
                if missing:
                    entry.update(cached=False, seconds=0.0, outputs={}, error=missing)
                    record["stages"].append(entry)
                    record.update(status="failed", failed_stage=node.id, error=missing)
                    log(f"[red]✗ {node.id}: unavailable: {missing}")
                    break
                log(f"[bold]▶ [{k}/{len(selected)}] {node.id}[/] {eta.line(node.id)}")
                try:
                    art, error = self._build(node, done, progress, log, entry)
                except Submitted as sub:
                    entry.update(cached=False, outputs={}, job_id=sub.job_id)
                    record["stages"].append(entry)
                    record.update(status="submitted", failed_stage=node.id, error=str(sub))
                    log(f"[yellow]… {sub}")
                    break
                except KeyboardInterrupt:
                    entry.update(cached=False, outputs={}, error="interrupted")
                    record["stages"].append(entry)
                    record.update(status="interrupted", failed_stage=node.id, error="interrupted")
                    self._write_record(run_dir, record, started, links)
                    raise
                if art is None:
                    entry.update(cached=False, seconds=round(time.time() - t0, 3), **error)
                    entry["outputs"] = {}
                    record["stages"].append(entry)
                    record.update(
                        status="failed",
                        failed_stage=node.id,
                        error=error["error"],
                        exit_code=error.get("exit_code", 1),
                    )
                    break
                log(f"[green]✓ {node.id}[/] {time.time() - t0:.1f}s")
            eta.done(node.id, time.time() - t0)
            done[node.id] = art
            outputs = {k: _absolute(art, v) for k, v in art.outputs.items()}
            for name, out_key in spec.links(node, outputs).items():
                if out_key in outputs:
                    links[name] = outputs[out_key]
            entry.update(
                cached=cached,
                seconds=round(time.time() - t0, 3),
                cpu_seconds=round(_cpu_seconds() - cpu0, 3),
                outputs=outputs,
                metrics=art.manifest.get("metrics", {}),
                artifact=str(art.path),
                content_sha256=art.manifest.get("content_sha256"),
            )
            record["stages"].append(entry)
        if record["status"] == "ok":
            failures = []
            for entry in record["stages"]:
                gate = STAGES[entry["stage"]].gate
                if gate is not None:
                    failures += gate(self.by_id[entry["node"]], entry.get("metrics", {}))
            if failures:
                record.update(status="failed", failed_stage="gate", error="; ".join(failures))
                # every failure an undecided interval: `run` exits 3, as the CI gate does
                unsure = all(f.startswith(INCONCLUSIVE_PREFIX) for f in failures)
                record["gate"] = "inconclusive" if unsure else "fail"
        self._write_record(run_dir, record, started, links)
        return record

    def _build(
        self, node: Node, done: dict[str, Artifact], progress: bool, log, entry: dict[str, Any]
    ) -> tuple[Artifact | None, dict[str, Any]]:
        """Run one node into a temporary store entry and seal it; (artifact, {}) or
        (None, {"error": ..., "traceback"?: ...}). Names the stage's log in `entry`."""
        spec = STAGES[node.stage]
        t0 = time.time()
        capture: Any = contextlib.nullcontext()
        log_path = None
        if getattr(self, "_stage_logs", False):
            name = node.id.replace("/", "--").replace(":", "-")
            log_path = self._run_dir / "logs" / f"{name}.log"
            entry["log"] = str(log_path)
            capture = third_party_output_to(log_path)
        tmp = self.store.begin(node.stage)
        scratch = self.workdir / "scratch" / f"{node.stage}-{node.key[:24]}"
        inputs = {r: done[i] for r, i in node.inputs.items()}
        job = make_job(
            node, inputs, self.store, tmp / "content", scratch, progress, self.env_of(node),
            self.workdir,
        )  # fmt: skip
        try:
            with capture:
                if spec.distributed and self.profile.launcher.runs(node.stage):
                    result = self._launch(node, job, tmp / "content", log)
                else:
                    result = execute(spec, open_context(job, node.config, inputs, log))
        except Submitted:
            self.store.abort(tmp)
            raise
        except BaseException as e:
            self.store.abort(tmp)
            msg = e.one_line() if isinstance(e, MinitronError) else f"{type(e).__name__}: {e}"
            log(f"[red]✗ {node.id} failed: {msg}")
            tail = log_tail(log_path) if log_path is not None else []
            if tail and not isinstance(e, KeyboardInterrupt):
                from rich.markup import escape

                log(f"  the last lines of its log, {log_path}:")
                for line in tail:
                    log(f"  | {escape(line)}")
            if isinstance(e, KeyboardInterrupt):
                raise
            error = {"error": msg, "exit_code": getattr(e, "exit_code", 1)}
            if not isinstance(e, MinitronError):
                error["traceback"] = traceback.format_exc(limit=8)
            return None, error
        manifest = {
            "node": node.id,
            "variant": node.variant,
            "config": node.config.model_dump(mode="json"),
            "inputs": {r: self.by_id[i].key for r, i in node.inputs.items()},
            "outputs": result.get("outputs", {}),
            "metrics": result.get("metrics", {}),
            "seconds": round(time.time() - t0, 3),
        }
        art = self.store.commit(tmp, node.stage, node.key, manifest)
        shutil.rmtree(scratch, ignore_errors=True)
        return art, {}

    def _launch(self, node: Node, job: dict[str, Any], content: Path, log) -> dict[str, Any]:
        """Run `node`'s job under the profile's launcher; its content lands in `content`."""

        cfg = self.profile.launcher
        launch_dir = (self.workdir / "scratch" / f"{node.stage}-{node.key[:24]}.launch").resolve()
        out = launch_dir / lx.OUT
        job = {**job, "out": str(out)}
        name = f"{self.profile.name}-{node.id}".replace("/", "-").replace(":", "-")
        if cfg.kind == "torchrun":
            lx.write_job(launch_dir, job)
            result = lx.run_torchrun(cfg, launch_dir, log)
        else:
            if not (launch_dir / lx.SUBMITTED).is_file():
                lx.write_job(launch_dir, job)
            result = lx.run_slurm(
                cfg, launch_dir, name, self._run_dir / "launch", self._wait, log, node.id
            )
        content.mkdir(parents=True, exist_ok=True)
        for p in out.iterdir():
            p.rename(content / p.name)
        shutil.rmtree(launch_dir, ignore_errors=True)
        return result

    def _write_record(
        self, run_dir: Path, record: dict[str, Any], started: float, links: dict[str, str]
    ) -> None:
        record["seconds"] = round(time.time() - started, 3)
        run_dir.mkdir(parents=True, exist_ok=True)
        record["deployables"] = link_outputs(run_dir / "outputs", links)
        atomic_write_json(run_dir / "run.json", record)
        atomic_write_text(run_dir / "summary.md", summary_markdown(record))
