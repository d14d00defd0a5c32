"""Run the tritonserver bundled in `nvidia-pytriton` (Triton 2.51, CPU capable) on 127.0.0.1.

The recipe (checked on this kind of machine): copy pytriton's `backends/` folder somewhere
writable and put the python-backend stub built for the running interpreter into
`backends/python/`; start with `LD_LIBRARY_PATH` = the interpreter's LIBDIR plus
`<site-packages>/nvidia_pytriton.libs` (without it the stub loads the system libpython and
every model fails) and the venv's `bin` first on `PATH` (the stub's Python environment).
The stub needs numpy < 2, which nvidia-pytriton pins.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from minitron_deploy.errors import DependencyError, InputError, StageError


def pytriton_root() -> Path:
    """The installed `pytriton/tritonserver` folder (found without importing pytriton).

    Raises:
        DependencyError: nvidia-pytriton is not installed.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            "serving on this machine needs the tritonserver bundled in nvidia-pytriton",
            fix="pip install nvidia-pytriton==0.7.0 (or the project's [deploy] extra)",
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise DependencyError(f"no tritonserver binary under {root}", fix="reinstall it")
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(port: int, option: str) -> None:
    """Raise InputError unless `port` can be bound on 127.0.0.1."""
    if not 0 < port < 65536:
        raise InputError(f"port {port} is out of range", where=option, fix="use 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise InputError(
                f"port {port} is in use ({e.strerror})",
                where=option,
                fix="stop what listens there or pick another port",
            ) from e


def _backends(root: Path, dest: Path) -> Path:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise DependencyError(f"nvidia-pytriton has no python-backend stub for Python {ver}")
    shutil.copytree(root / "backends", dest / "backends")
    shutil.copy2(stub, dest / "backends" / "python" / stub.name)
    return dest / "backends"


def server_env(root: Path) -> dict[str, str]:
    """Environment for tritonserver and its python stubs (see the module docstring)."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parents[1] / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    project = str(Path(__file__).resolve().parents[2])  # so model.py finds minitron_deploy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def repo_models(repo: Path) -> list[str]:
    """Model folders (those with a config.pbtxt) in a model repository."""
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())


class TritonServer:
    """A tritonserver process serving `repo`, as a context manager.

    Args:
        repo: a Triton model repository.
        http_port: HTTP port on 127.0.0.1 (None: a free one).
        grpc_port: gRPC port on 127.0.0.1 (None: a free one).
        ready_timeout_s: how long to wait for every model to be ready.
        log_path: where the server log goes (default: a file in its temporary folder).

    Raises:
        InputError: the repository has no models, or a port is in use.
        DependencyError: nvidia-pytriton is missing.
        StageError: the server exits or is not ready in time (with the log's tail).
    """

    def __init__(
        self,
        repo: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        ready_timeout_s: float = 180.0,
        log_path: str | Path | None = None,
    ):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir() or not repo_models(self.repo):
            raise InputError(
                f"{self.repo} is not a Triton model repository (no <model>/config.pbtxt)",
                where="--repo",
                fix="create one with `minitron-deploy package triton`",
            )
        self.models = repo_models(self.repo)
        for port, opt in ((http_port, "--http-port"), (grpc_port, "--grpc-port")):
            if port is not None:
                check_port(port, opt)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self._log_path = Path(log_path) if log_path else None
        self._tmp: str | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The tritonserver process id (None before start)."""
        return self.proc.pid if self.proc else None

    @property
    def http_url(self) -> str:
        """`host:port` for tritonclient.http."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        """The server log file."""
        assert self._log_path is not None, "server not started"
        return self._log_path

    def start(self) -> TritonServer:
        """Start tritonserver and wait until every model in the repository is ready."""
        root = pytriton_root()
        self._tmp = tempfile.mkdtemp(prefix="minitron-triton-")
        backends = _backends(root, Path(self._tmp))
        self._log_path = self._log_path or Path(self._tmp) / "tritonserver.log"
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
        ]
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=server_env(root),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its python stubs share the group: stop() reaches them
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StageError(
                    f"tritonserver exited with code {self.proc.returncode} while starting:\n"
                    + self.log_tail(),
                    where=str(self._log_path),
                )
            if all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            time.sleep(0.25)
        raise StageError(
            f"tritonserver models {self.models} not ready after {self.ready_timeout_s:.0f} s:\n"
            + self.log_tail(),
            where=str(self._log_path),
            fix="see the server log for the model's error",
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        if not self._log_path or not self._log_path.is_file():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the server, wait, then SIGKILL its process group; returns its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # stray python stubs, if any
            code = self.proc.returncode
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return code

    def info(self) -> dict[str, Any]:
        """Ports, pid and models, for `--json` output."""
        return {
            "pid": self.pid,
            "http": self.http_url,
            "grpc": self.grpc_url,
            "models": self.models,
            "repo": str(self.repo),
        }

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return json.dumps(self.info())
