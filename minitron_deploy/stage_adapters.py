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
        split=split,
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
    split = "train" if c["calibration"] != c["validation"] else "train"
    batches = _tokens(
        model_dir,
        c["calibration"],
        split=split,
        num_samples=cfg.num_samples,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        val_fraction=c["val_fraction"],
    )
    scores = compute_importance(model, batches, cfg)
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
    ctx.out.rmdir()  # prune_checkpoint writes the folder atomically itself
    record = prune_checkpoint(
        ctx.model_dir("model"),
        ctx.out / "model",
        cfg,
        scores_path=ctx.inputs["scores"].content,
        val_data=c["validation"],
        seed=c["seed"],
    )
    return {
        "outputs": {"model": "model/model"} if False else {"model": "model"},
        "metrics": {
            k: v
            for k, v in (record or {}).items()
            if k in ("params_before", "params_after", "val_loss", "shape")
        },
    }


def run_distill(ctx) -> dict[str, Any]:
    from minitron_deploy.distill import run_distillation
    from minitron_deploy.distill.config import DistillConfig

    c = ctx.node.config
    cfg = DistillConfig.model_validate(c["distill"])
    resume = (ctx.scratch / "checkpoints").exists()
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
    for name in ("final", "metrics.jsonl", "curves.png"):
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
    ctx.out.rmdir()
    summary = export_model(
        ctx.model_dir("model"),
        ctx.out / "export",
        fmt,
        **_export_kwargs(cfg, fmt, c["calibration"]),
    )
    ctx.out.mkdir(exist_ok=True) if not ctx.out.exists() else None
    outputs: dict[str, Any] = {"export": "export", "format": fmt}
    if fmt in ("hf", "hf-fp8"):
        outputs["model"] = "export"
    return {"outputs": outputs, "metrics": _jsonable(summary)}


def _export_kwargs(cfg, fmt: str, calib: str) -> dict[str, Any]:
    kw = dict(
        dtype=getattr(cfg, "trtllm_dtype", "bf16"),
        calib_data=calib,
        calib_samples=cfg.calib_samples,
        calib_seq_len=cfg.calib_seq_len,
        tp=cfg.tp_size,
        kv_cache_fp8=cfg.kv_cache_fp8,
        seed=cfg.seed,
    )
    return kw


def _export_modules(config: dict) -> tuple[str, ...]:
    fmt = config.get("format")
    export = config.get("export", {})
    fp8 = fmt == "hf-fp8" or (fmt == "trtllm-ckpt" and export.get("trtllm_dtype") == "fp8")
    mods = ("minitron_deploy.export",)
    if fp8 and fmt == "hf-fp8":
        mods += ("modelopt",)
    if fmt == "onnx":
        mods += ("onnx", "onnxruntime")
    return mods


def run_package(ctx) -> dict[str, Any]:
    from minitron_deploy.triton import PackageConfig, package_triton

    cfg = PackageConfig.model_validate(ctx.node.config["package"])
    model_dir = ctx.model_dir("export") if "export" in ctx.inputs else ctx.model_dir("model")
    ctx.out.rmdir()
    summary = package_triton(model_dir, ctx.out / "repo", cfg)
    return {"outputs": {"repo": "repo"}, "metrics": _jsonable(summary)}


def run_bench(ctx) -> dict[str, Any]:
    from minitron_deploy.bench import BenchConfig, run_matrix, write_reports

    c = ctx.node.config
    cfg = BenchConfig.model_validate(c["bench"])
    models = [(name, ctx.model_dir(name)) for name in c["order"]]
    batches = {
        name: c["batches"].get(name) or (64 if c["pruned"][name] else 32) for name in c["order"]
    }
    results = run_matrix(models, cfg, batches=batches)
    write_reports(results, ctx.out)
    return {
        "outputs": {"report": "report.md", "results": "results.json"},
        "metrics": _jsonable(results),
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj or {}, default=str))


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
        libraries=("torch", "transformers", "safetensors", "nvidia-modelopt", "onnx"),
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
        modules=("minitron_deploy.bench",),
        hardware_dependent=True,
        doc="ISL/OSL x batch throughput matrix over the variants.",
    )
)
