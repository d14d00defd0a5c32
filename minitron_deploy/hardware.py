"""The processor this runs on, what it computes natively, and the compute dtype `auto` means.

On CUDA, `auto` is bfloat16 where the GPU supports it (else float16). On a CPU, `auto` is
bfloat16 only when the processor has native bf16 (AVX512-BF16 or AMX); elsewhere (e.g. AVX2-only
AMD Zen 2/3 or older Intel) bf16 GEMMs are emulated and 10-90x slower than float32, so `auto`
is float32 there. An explicit `bfloat16` on such a CPU still runs, with one warning that gives
the slowdown measured by a tiny probe (cached per processor and torch version).

Every stage that computes (importance, layer ranking, sensitivity, distillation, evaluation,
FP8 calibration, the built-in engine, bench, the Triton torch backend) asks `compute_dtype`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.console import info
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_write_json, cache_root

if TYPE_CHECKING:
    pass

DTYPE_NAMES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
}


def find_program(name: str) -> str | None:
    """A program on PATH or in the running interpreter's bin folder (a venv need not be
    activated), or None."""
    import shutil
    import sys

    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def lacking(modules: Sequence[str], programs: Sequence[str]) -> list[str]:
    """What of these Python modules and programs this machine lacks, worded for a message
    ("onnx", "`trtllm-build` on PATH"); empty when everything is there."""
    import importlib.util

    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    lacks = [m for m in modules if not found(m)]
    return lacks + [f"`{e}` on PATH" for e in programs if find_program(e) is None]


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """torch's view of the CPU: capability level and native bf16 / fp16 / AMX support."""
    import torch

    def flag(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": flag("_is_avx512_bf16_supported"),
        "amx_tile": flag("_is_amx_tile_supported"),
        "avx512_fp16": flag("_is_avx512_fp16_supported"),
        "amx_fp16": flag("_is_amx_fp16_supported"),
    }


def native_dtypes(device: str = "cpu") -> list[str]:
    """The float dtypes `device` computes natively (float32 always)."""
    import torch

    if str(device).startswith("cuda"):
        out = ["float32", "float16"]
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            out.append("bfloat16")
        return out
    f = cpu_features()
    out = ["float32"]
    if f["avx512_bf16"] or f["amx_tile"]:
        out.append("bfloat16")
    if f["avx512_fp16"] or f["amx_fp16"]:
        out.append("float16")
    return out


AUTO_DTYPE_ENV = "MINITRON_AUTO_DTYPE"


def auto_dtype_name(device: str = "cpu") -> str:
    """What `auto` resolves to on `device`.

    On a CPU, `MINITRON_AUTO_DTYPE=float32|bfloat16` forces the answer (the environment is
    inherited, so torchrun ranks and CLI subprocesses follow it): the suite runs as the other
    kind of host with it. It never applies to CUDA.

    Raises:
        InputError: the setting names another dtype.
    """
    if str(device).startswith("cuda"):
        native = native_dtypes(device)
        return "bfloat16" if "bfloat16" in native else "float16"
    forced = os.environ.get(AUTO_DTYPE_ENV, "").strip()
    if forced:
        name = DTYPE_NAMES.get(forced, forced)
        if name not in ("bfloat16", "float32"):
            raise InputError(
                f"{AUTO_DTYPE_ENV}={forced!r} is not a CPU compute dtype",
                fix=f"set {AUTO_DTYPE_ENV} to float32 or bfloat16, or unset it",
            )
        return name
    return "bfloat16" if "bfloat16" in native_dtypes(device) else "float32"


def dtype_name(requested: Any, device: str = "cpu") -> str:
    """The compute dtype's name for a request ("auto", "bf16", "float32", a torch dtype ...).

    Raises:
        InputError: an unknown dtype name.
    """

    if requested is None or requested == "auto":
        return auto_dtype_name(device)
    name = str(requested).replace("torch.", "")
    name = DTYPE_NAMES.get(name, name)
    if name not in ("bfloat16", "float16", "float32"):
        raise InputError(
            f"unsupported dtype {requested!r}", fix="use auto, bfloat16, float16 or float32"
        )
    return name


def local_device() -> str:
    """The device a process here computes on when it picks one itself: "cuda" or "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolved_dtype(requested: Any, device: str) -> str:
    """What a computation asked for `requested` on `device` computes in, as a fact for cache
    keys: "bfloat16", "float32", ... For a CUDA device this machine lacks (a SLURM job planned
    on a login node) `auto` cannot be resolved here: "auto@cuda" (an explicit dtype is itself).
    """
    if str(device).startswith("cuda") and (requested is None or requested == "auto"):
        import torch

        if not torch.cuda.is_available():
            return "auto@cuda"
    return dtype_name(requested, device)


def compute_dtype(requested: Any = "auto", device: str = "cpu", *, warn: bool = True):
    """The torch dtype to compute in on `device` for a request; `auto` = the fastest native.

    An explicit dtype the device does not compute natively is honoured, with one warning per
    process that says how much slower it is here.
    """
    import torch

    name = dtype_name(requested, device)
    if warn and name not in native_dtypes(device):
        _warn_slow(name, device)
    return getattr(torch, name)


def native_autocast():
    """bf16 autocast where the CPU computes bf16 natively (`compute_dtype("auto")`), else a
    no-op: float32 weights, matrix products in the fast dtype (rankings, not training)."""
    import torch

    dtype = compute_dtype("auto")
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


@functools.cache
def _warn_slow(name: str, device: str) -> None:
    factor = slowdown(name) if not str(device).startswith("cuda") else None
    how = f"about {factor:.0f}x slower than float32 here (measured)" if factor else "emulated"
    info(
        f"[yellow]warning:[/] {name} is not native on this {device} "
        f"({cpu_model()}, {cpu_features()['capability']}): {how}; "
        f"dtype auto would use {auto_dtype_name(device)}"
    )


def _probe_path() -> Path:
    return cache_root() / "cpu-probe.json"


def gemm_gflops(name: str = "float32", size: int = 256) -> float:
    """GFLOP/s of a `size`^3 GEMM in dtype `name` on this CPU (a short probe, cached per
    processor, torch version and dtype in the built-in cache folder).

    The rate is the better of the wall-clock rate and the on-CPU rate (FLOPs per CPU second of
    the process times torch's threads): on a machine others load too, the wall clock counts the
    time the GEMM waited for a core and the probe would keep a rate several times too low.
    """
    import torch

    key = f"{cpu_model()}|{cpu_features()['capability']}|torch {torch.__version__}|{name}|{size}"
    key += "|on-cpu"
    path = _probe_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return float(cache[key])
    a = torch.randn(size, size).to(getattr(torch, name))
    torch.mm(a, a)  # warm-up
    n_threads = max(torch.get_num_threads(), 1)
    best = 0.0
    for _ in range(5):  # the best of a few short trials
        t0, c0, reps = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < 0.05 or reps < 2:
            torch.mm(a, a)
            reps += 1
        wall = time.perf_counter() - t0
        busy = max((time.process_time() - c0) / n_threads, 1e-9)
        best = max(best, 2 * size**3 * reps / min(wall, busy) / 1e9)
    gflops = round(best, 3)  # as cached, so a later call gives the same number
    cache[key] = gflops
    with contextlib.suppress(OSError):
        atomic_write_json(path, cache)
    return gflops


def slowdown(name: str, size: int = 256) -> float:
    """float32 GEMM throughput / `name` GEMM throughput on this CPU (cached probes)."""
    return gemm_gflops("float32", size) / gemm_gflops(name, size)


def threads() -> dict[str, Any]:
    """torch's intra-op threads, the cores, and the thread variables the user set."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }


STEADY_HEAP_ENV = "MINITRON_STEADY_HEAP"  # "0": leave the C allocator's defaults
STEADY_HEAP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def steady_heap() -> bool:
    """Keep the memory freed between a CPU engine's steps in the process heap (glibc: blocks
    under 1 GiB come from the heap, not from fresh mmaps, and the heap is not trimmed until 1
    GiB sits free at its top), so that a step reuses the previous step's pages instead of
    faulting new zeroed ones in. With glibc's defaults a 2-core float32 SmolLM2 generation took
    up to 433k minor page faults per call, varying from call to call, and a batch-64 student's
    speedup over the source ranged 1.95-2.07x over four processes (2.05-2.09x with this, and no
    faults: `benchmarks/steady_heap.py`); production CPU serving gets the same from tcmalloc or
    jemalloc. Process-wide and kept for the process (at most
    ~1 GiB of freed memory held); a no-op without glibc or with MINITRON_STEADY_HEAP=0. True
    when set."""
    if os.environ.get(STEADY_HEAP_ENV) == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, STEADY_HEAP_BYTES) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, STEADY_HEAP_BYTES) == 1 and ok
    except (OSError, AttributeError):
        return False


def processor() -> dict[str, Any]:
    """The facts every measurement records: model, capability flags, threads, auto dtype."""
    f = cpu_features()
    native = native_dtypes("cpu")
    summary = (
        f"{cpu_model()} ({f['capability']}; native bf16 {'yes' if 'bfloat16' in native else 'no'}"
        f"; {threads()['torch_threads']} threads)"
    )
    forced = os.environ.get(AUTO_DTYPE_ENV) or None
    if forced:
        summary = summary[:-1] + f"; auto forced to {auto_dtype_name('cpu')} by {AUTO_DTYPE_ENV})"
    return {
        "model": cpu_model(),
        **f,
        "native_dtypes": native,
        "auto_dtype": auto_dtype_name("cpu"),
        "auto_dtype_forced": forced,
        **threads(),
        "summary": summary,
    }


def gpu() -> str:
    """`nvidia-smi -L` output, or "" without a GPU."""
    import contextlib
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return ""


def machine() -> str:
    """A short description of the machine, for keys of stages whose results depend on it."""
    g = gpu()
    f = cpu_features()
    return f"{cpu_model()} x{os.cpu_count()} [{f['capability']}]" + (f" | {g}" if g else "")


def available_memory() -> int:
    """Bytes of memory this process can still use: the kernel's MemAvailable, capped by the
    cgroup (v2) limit minus its current use where one is set (containers, CI runners)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:  # not Linux: total physical memory as the best guess
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cg = Path("/sys/fs/cgroup")
    try:
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cg / "memory.current").read_text().strip())
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail
