"""One thin run function per stage: typed node config in, one algorithm call, artifact out.

Each function takes a `StageContext` whose `config` is the node's typed config
(`pipeline.nodes`), calls its algorithm module, writes into `ctx.out` and returns
`{"outputs": {...}, "metrics": {...}}`. Heavy modules are imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minitron_deploy.pipeline.context import StageContext


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj or {}, default=str))


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    import os

    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file():
            try:
                os.link(p, dst / p.name)
            except OSError:
                shutil.copy2(p, dst / p.name)


# -- source ---------------------------------------------------------------------------------
def source_key(config: Any, hashes: Any) -> dict[str, Any]:
    """A local source is keyed by its content (not its path); a built-in by its name."""
    from minitron_deploy.model.io import PROVENANCE

    src = str(config.source)
    if src.startswith("builtin:"):
        return {}
    path = Path(src)
    return {"content_sha256": hashes.tree(path, (PROVENANCE,)) if path.is_dir() else "missing"}


def run_source(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.model.io import read_config, weight_files
    from minitron_deploy.model.shapes import LlamaShape
    from minitron_deploy.model.teacher import builtin_model

    src = str(ctx.config.source)
    if src.startswith("builtin:"):
        path = builtin_model(src.split(":", 1)[1])
        _link_or_copy_tree(path, ctx.out / "model")
        model = "model"
        cfg = read_config(ctx.out / "model")
    else:
        path = Path(src).resolve()
        cfg = read_config(path)
        weight_files(path)
        model = str(path)  # external: referenced, not copied (its content hash is in the key)
    shape = LlamaShape.from_config(cfg)
    return {
        "outputs": {"model": model},
        "metrics": {"params": shape.num_parameters, **shape.as_dict()},
    }


# -- compression ------------------------------------------------------------------------------
def run_importance(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.compress.importance import compute_importance
    from minitron_deploy.compress.scores import save_scores
    from minitron_deploy.data.refs import load_tokens
    from minitron_deploy.hardware import compute_dtype
    from minitron_deploy.model.io import load_llama, load_tokenizer

    c = ctx.config
    imp = c.importance
    model_dir = ctx.model_dir("model")
    tok = load_tokenizer(model_dir)
    rows = {"num_samples": imp.num_samples, "seq_len": imp.seq_len, "seed": imp.seed}
    batches = load_tokens(tok, c.calibration, **rows)
    val = None
    if c.validation is not None:
        val = load_tokens(tok, c.validation, **{**rows, "num_samples": imp.val_samples})
    model = load_llama(model_dir, dtype=compute_dtype("auto"))
    scores = compute_importance(model, batches, imp, val_batches=val, progress=ctx.progress)
    meta = {
        "model": str(model_dir),
        "calibration": c.calibration.model_dump(),
        "validation": c.validation.model_dump() if c.validation is not None else None,
        "config": imp.model_dump(mode="json"),
        "rows": int(batches.shape[0]),
    }
    save_scores(scores, ctx.out, meta)
    return {
        "outputs": {"scores": "."},
        "metrics": {"samples": int(batches.shape[0]), "seq_len": int(batches.shape[1])},
    }


def run_prune(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.compress.slicing import prune_checkpoint

    c = ctx.config
    record = prune_checkpoint(
        ctx.model_dir("model"),
        ctx.out / "model",
        c.prune,
        scores_path=ctx.inputs["scores"].content,
        val_data=c.validation,
        command=f"pipeline {ctx.node_id}",
        progress=ctx.progress,
    )
    keep = ("params_before", "params_after", "target_shape", "dropped_layers")
    return {"outputs": {"model": "model"}, "metrics": {k: record.get(k) for k in keep}}


# -- distillation -----------------------------------------------------------------------------
def run_distill(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.distill import run_distillation

    c = ctx.config
    # The scratch folder outlives a killed run: resume from its newest checkpoint if any.
    resume = any((ctx.scratch / "checkpoints").glob("*"))
    if ctx.scratch.exists() and not resume:
        shutil.rmtree(ctx.scratch)
    metrics = run_distillation(
        ctx.model_dir("teacher"),
        ctx.model_dir("student"),
        ctx.scratch,
        c.distill,
        train_data=c.training,
        val_data=c.validation,
        resume=resume,
        progress=ctx.progress,
        title=ctx.node_id,
        final_checkpoint=False,
    )
    for name in ("final", "metrics.jsonl", "curves.png", "summary.json"):
        src = ctx.scratch / name
        if src.is_dir():
            shutil.copytree(src, ctx.out / name)
        elif src.is_file():
            shutil.copy2(src, ctx.out / name)
    metrics["final"] = "final"  # the copy in this artifact, not the scratch folder
    return {"outputs": {"model": "final", "curves": "curves.png"}, "metrics": _jsonable(metrics)}


# -- export and packaging ---------------------------------------------------------------------
def export_needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from minitron_deploy.export.registry import FORMATS

    spec = FORMATS[config.format]
    return ("minitron_deploy.export", *spec.modules(config.settings.dtype)), ()


def run_export(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.export import export_model
    from minitron_deploy.export.registry import FORMATS

    c = ctx.config
    fmt = c.format
    summary = export_model(
        ctx.model_dir("model"),
        ctx.out / fmt,
        fmt,
        c.settings,
        c.calibration,
        command=f"pipeline {ctx.node_id}",
    )
    outputs: dict[str, Any] = {"export": fmt, "format": fmt}
    if FORMATS[fmt].hf_model:
        outputs["model"] = fmt
    return {"outputs": outputs, "metrics": _jsonable(summary)}


def run_package(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.triton import package_triton

    model_dir = ctx.model_dir("export") if "export" in ctx.inputs else ctx.model_dir("model")
    summary = package_triton(model_dir, ctx.out / "repo", ctx.config.package)
    return {"outputs": {"repo": "repo"}, "metrics": _jsonable(summary)}


# -- benchmark --------------------------------------------------------------------------------
def bench_needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from minitron_deploy.engines.registry import ENGINES

    spec = ENGINES[config.bench.engine]
    return ("minitron_deploy.bench", *spec.modules), spec.executables


def run_bench(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.bench import run_matrix, write_reports

    c = ctx.config
    models = [(name, ctx.model_dir(name)) for name in c.members]
    results = run_matrix(models, c.bench, progress=ctx.progress)
    write_reports(results, ctx.out / "report")
    return {
        "outputs": {
            "report": "report/report.md",
            "results": "report/results.json",
            "report_dir": "report",
        },
        "metrics": _jsonable(results),
    }


def speedup_gate(node: Any, metrics: dict[str, Any]) -> list[str]:
    """Variants whose measured speedup over the base is below their `min_speedup`."""
    results = metrics.get("results", [])
    failures = []
    for name, limit in (node.meta.get("min_speedup") or {}).items():
        rows = [r for r in results if r.get("model") == name]
        if not rows:
            failures.append(f"speedup gate: no bench results for {name}")
        for r in rows:
            if (r.get("speedup_vs_base") or 0) < limit:
                failures.append(
                    f"speedup gate: {name} at ISL/OSL {r['isl']}/{r['osl']} "
                    f"measured {r['speedup_vs_base']:.2f}x < min_speedup {limit}"
                )
    return failures
