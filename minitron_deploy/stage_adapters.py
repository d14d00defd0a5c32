"""One thin adapter per algorithm stage: config section in, algorithm call, artifact out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from minitron_deploy.stages import StageSpec, register


def _tokens(
    model_dir: Path,
    source: str,
    *,
    split: str,
    num_samples: int,
    seq_len: int,
    seed: int,
    val_fraction: float,
):
    from minitron_deploy.data import token_sequences
    from minitron_deploy.model.io import load_tokenizer

    return token_sequences(
        load_tokenizer(model_dir),
        source,
        split="train",
        num_samples=num_samples,
        seq_len=seq_len,
        seed=seed,
        val_fraction=val_fraction,
    )


def run_importance(ctx) -> dict[str, Any]:
    from minitron_deploy.importance import ImportanceConfig, compute_importance, save_scores
    from minitron_deploy.model.io import load_llama

    c = ctx.node.config
    cfg = ImportanceConfig.model_validate(c["importance"])
    model_dir = ctx.model_dir("model")
    model = load_llama(model_dir, dtype="float32")
    batches = _tokens(
        model_dir,
        c["calibration"],
        split="train",
        num_samples=cfg.num_samples,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        val_fraction=c["val_fraction"],
    )
    scores = compute_importance(model, batches, cfg, progress=ctx.progress)
    save_scores(
        scores,
        ctx.out,
        {
            "model": str(model_dir),
            "data": c["calibration"],
            "config": c["importance"],
            "rows": int(batches.shape[0]),
        },
    )
    return {
        "outputs": {"scores": "."},
        "metrics": {"samples": int(batches.shape[0]), "seq_len": int(batches.shape[1])},
    }


def run_prune(ctx) -> dict[str, Any]:
    from minitron_deploy.prune import PruneConfig, prune_checkpoint

    c = ctx.node.config
    cfg = PruneConfig.model_validate(c["prune"])
    record = prune_checkpoint(
        ctx.model_dir("model"),
        ctx.out / "model",
        cfg,
        scores_path=ctx.inputs["scores"].content,
        val_data=c["validation"],
        command=f"pipeline {ctx.node.id}",
    )
    keep = ("params_before", "params_after", "target_shape", "dropped_layers")
    return {"outputs": {"model": "model"}, "metrics": {k: record.get(k) for k in keep}}


def run_distill(ctx) -> dict[str, Any]:
    from minitron_deploy.distill import run_distillation
    from minitron_deploy.distill.config import DistillConfig

    c = ctx.node.config
    cfg = DistillConfig.model_validate(c["distill"])
    # The scratch folder outlives a killed run: resume from its newest checkpoint if any.
    resume = any((ctx.scratch / "checkpoints").glob("*"))
    if ctx.scratch.exists() and not resume:
        shutil.rmtree(ctx.scratch)
    metrics = run_distillation(
        ctx.model_dir("teacher"),
        ctx.model_dir("student"),
        ctx.scratch,
        cfg,
        train_data=c["training"],
        val_data=c["validation"],
        resume=resume,
        progress=ctx.progress,
    )
    for name in ("final", "metrics.jsonl", "curves.png", "summary.json"):
        src = ctx.scratch / name
        if src.is_dir():
            shutil.copytree(src, ctx.out / name)
        elif src.is_file():
            shutil.copy2(src, ctx.out / name)
    return {"outputs": {"model": "final"}, "metrics": _jsonable(metrics)}


def run_export(ctx) -> dict[str, Any]:
    from minitron_deploy.export import ExportConfig, export_model

    c = ctx.node.config
    cfg = ExportConfig.model_validate(c["export"])
    fmt = c["format"]
    summary = export_model(
        ctx.model_dir("model"),
        ctx.out / fmt,
        fmt,
        dtype=cfg.trtllm_dtype if fmt == "trtllm-ckpt" else "bf16",
        calib_data=cfg.calib_data or c["calibration"],
        calib_samples=cfg.calib_samples,
        calib_seq_len=cfg.calib_seq_len,
        tp=cfg.tp_size,
        kv_cache_fp8=cfg.kv_cache_fp8,
        seed=cfg.seed,
        verify=cfg.verify,
    )
    outputs: dict[str, Any] = {"export": fmt, "format": fmt}
    if fmt in ("hf", "hf-fp8"):
        outputs["model"] = fmt
    return {"outputs": outputs, "metrics": _jsonable(summary)}


def _export_modules(config: dict) -> tuple[str, ...]:
    fmt = config.get("format")
    mods: tuple[str, ...] = ("minitron_deploy.export",)
    if fmt == "hf-fp8" or (fmt == "trtllm-ckpt" and config["export"].get("trtllm_dtype") == "fp8"):
        mods += ("modelopt",)
    if fmt == "onnx":
        mods += ("onnx", "onnxruntime")
    return mods


def run_package(ctx) -> dict[str, Any]:
    from minitron_deploy.triton import PackageConfig, package_triton

    cfg = PackageConfig.model_validate(ctx.node.config["package"])
    model_dir = ctx.model_dir("export") if "export" in ctx.inputs else ctx.model_dir("model")
    summary = package_triton(model_dir, ctx.out / "repo", cfg)
    return {"outputs": {"repo": "repo"}, "metrics": _jsonable(summary)}


def run_bench(ctx) -> dict[str, Any]:
    from minitron_deploy.bench import BenchConfig, run_matrix, write_reports

    c = ctx.node.config
    names = c["order"]
    batches = tuple(c["batches"].get(n) or (64 if c["pruned"][n] else 32) for n in names)
    cfg = BenchConfig.model_validate({**c["bench"], "batch": batches})
    results = run_matrix([(n, ctx.model_dir(n)) for n in names], cfg)
    write_reports(results, ctx.out / "report")
    return {
        "outputs": {"report": "report/report.md", "results": "report/results.json"},
        "metrics": _jsonable(results),
    }


def _bench_modules(config: dict) -> tuple[str, ...]:
    extra = {"ort": ("onnxruntime_genai",)}.get(config["bench"].get("engine", "torch"), ())
    return ("minitron_deploy.bench", *extra)


def _bench_tools(config: dict) -> tuple[str, ...]:
    return ("trtllm-bench",) if config["bench"].get("engine") == "trtllm" else ()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj or {}, default=str))


TORCH_LIBS = ("torch", "transformers", "safetensors")
register(
    StageSpec(
        "importance",
        "1",
        run_importance,
        modules=("minitron_deploy.importance",),
        doc="Activation importance over the calibration data (one forward pass).",
    )
)
register(
    StageSpec(
        "prune",
        "1",
        run_prune,
        modules=("minitron_deploy.prune",),
        doc="Width and depth pruning to the target shape.",
    )
)
register(
    StageSpec(
        "distill",
        "1",
        run_distill,
        modules=("minitron_deploy.distill",),
        doc="Knowledge distillation from the parent model.",
    )
)
register(
    StageSpec(
        "export",
        "1",
        run_export,
        modules=_export_modules,
        libraries=(*TORCH_LIBS, "nvidia-modelopt", "onnx"),
        doc="HF BF16 / HF FP8 / TensorRT-LLM checkpoint / ONNX export.",
    )
)
register(
    StageSpec(
        "package",
        "1",
        run_package,
        modules=("minitron_deploy.triton",),
        doc="Triton model repository.",
    )
)
register(
    StageSpec(
        "bench",
        "1",
        run_bench,
        modules=_bench_modules,
        executables=_bench_tools,
        hardware_dependent=True,
        doc="ISL/OSL x batch throughput matrix over the variants.",
    )
)
