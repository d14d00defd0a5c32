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

from minitron_deploy.bench import gate as speed_gate

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
def source_keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """A local source enters its key by content (not its path); a built-in by its name."""
    from minitron_deploy.model.io import PROVENANCE

    src = str(config.source)
    if src.startswith("builtin:"):
        return {"source": src}
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


# -- data -------------------------------------------------------------------------------------
def data_keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """Text enters its key by content (its files' digests, or a prepared folder's key), not
    by path: moving a corpus keeps every key, editing it changes the stages that read it."""
    from minitron_deploy.data.refs import is_prepared
    from minitron_deploy.data.text import source_digest
    from minitron_deploy.errors import InputError

    src = str(config.source)
    if is_prepared(src) and (Path(src) / "index.json").is_file():
        key = json.loads((Path(src) / "index.json").read_text()).get("key")
        return {"prepared": key, "val_fraction": config.val_fraction}
    try:
        content = source_digest(src, hashes.file)
    except InputError:  # not here (a cluster profile planned on a laptop): keyed by its name
        return {"missing": src, "val_fraction": config.val_fraction}
    return {"content": content, "val_fraction": config.val_fraction}


def run_data(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.data.prepare import prepare_corpus
    from minitron_deploy.data.refs import is_prepared
    from minitron_deploy.data.shards import PreparedData
    from minitron_deploy.errors import InputError

    c = ctx.config
    tok = ctx.model_dir("tokenizer")
    if is_prepared(c.source):
        data = PreparedData(c.source)
        data.check_tokenizer(tok)
        if data.index["val_fraction"] != c.val_fraction:
            raise InputError(
                f"{c.source} was prepared with val_fraction {data.index['val_fraction']}, "
                f"the profile asks for {c.val_fraction}",
                where="data.val_fraction",
                fix=f"set data.val_fraction: {data.index['val_fraction']}, or prepare again",
            )
        where = str(Path(c.source).resolve())  # referenced, not copied (its key is ours)
    else:
        # Prepared in the scratch folder, which outlives a killed run: a rerun resumes there.
        scratch = ctx.scratch / "prepared"
        prepare_corpus(c.source, tok, scratch, val_fraction=c.val_fraction, progress=ctx.progress)
        scratch.rename(ctx.out / "prepared")
        data, where = PreparedData(ctx.out / "prepared"), "prepared"
    splits = data.index["splits"]
    return {
        "outputs": {"data": where},
        "metrics": {
            "dtype": data.index["dtype"],
            **{f"{k}_tokens": v["tokens"] for k, v in splits.items()},
            **{f"{k}_documents": v["documents"] for k, v in splits.items()},
        },
    }


# -- compression ------------------------------------------------------------------------------
def run_importance(ctx: StageContext) -> dict[str, Any]:
    """Scores over the calibration rows; on several ranks (a launcher), each rank scores every
    world_size-th row and the fp32 accumulators are summed over ranks (all-reduce)."""
    # layerseq: the orchestration is `compress.importance.score_checkpoint`, shared with the
    # `importance` command (one scores.json shape); this adapter only sets up the ranks.
    from minitron_deploy.compress.importance import score_checkpoint
    from minitron_deploy.compress.scores import save_scores
    from minitron_deploy.distill import distributed as dd

    c = ctx.config
    d = dd.setup()
    try:
        all_reduce = None
        if d.enabled:
            import torch.distributed as dist

            def all_reduce(tensors):
                for t in tensors:
                    dist.all_reduce(t)

        res = score_checkpoint(
            ctx.model_dir("model"),
            ctx.text("calibration"),
            c.importance,
            validation=ctx.text("validation") if c.validation is not None else None,
            device=str(d.device),
            rank=d.rank,
            world_size=d.world_size,
            all_reduce=all_reduce,
            progress=ctx.progress,
        )
    finally:
        dd.teardown(d)
    if ctx.rank == 0:
        save_scores(res.scores, ctx.out, res.meta)
    return {
        "outputs": {"scores": "."},
        "metrics": {
            "samples": res.meta["samples"],
            "seq_len": res.meta["seq_len"],
            "ranks": d.world_size,
            "layer_sequential": res.meta["layer_sequential"],
        },
    }


def run_prune(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.compress.slicing import prune_checkpoint

    c = ctx.config
    record = prune_checkpoint(
        ctx.model_dir("model"),
        ctx.out / "model",
        c.prune,
        scores_path=ctx.inputs["scores"].content,
        val_data=ctx.text("validation") if c.validation is not None else None,
        command=f"pipeline {ctx.node_id}",
        progress=ctx.progress,
    )
    keep = ("params_before", "params_after", "target_shape", "dropped_layers")
    return {"outputs": {"model": "model"}, "metrics": {k: record.get(k) for k in keep}}


# -- distillation -----------------------------------------------------------------------------
def run_distill(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.distill import run_distillation

    c = ctx.config
    # The scratch folder outlives a killed run and belongs to this key alone: always resume
    # (from its newest checkpoint, or from scratch when it has none).
    metrics = run_distillation(
        ctx.model_dir("teacher"),
        ctx.model_dir("student"),
        ctx.scratch,
        c.distill,
        train_data=ctx.text("training"),
        val_data=ctx.text("validation"),
        holdout=ctx.holdout(),
        resume=True,
        progress=ctx.progress,
        title=ctx.node_id,
        final_checkpoint=False,
    )
    if ctx.rank == 0:
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
        ctx.text("calibration") if c.calibration is not None else None,
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


def bench_probe(config: Any) -> list[str]:
    """What the bench engine lacks beyond modules and programs (vllm: its venv)."""
    from minitron_deploy.engines.registry import ENGINES

    return ENGINES[config.bench.engine].probed()


def run_bench(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.bench import run_matrix, write_reports

    c = ctx.config
    models = [(name, ctx.model_dir(name)) for name in c.members]
    results = run_matrix(models, c.bench, progress=ctx.progress, gate=c.gate)
    write_reports(results, ctx.out / "report")
    return {
        "outputs": {
            "report": "report/report.md",
            "results": "report/results.json",
            "report_dir": "report",
        },
        "metrics": _jsonable(results),
    }


# -- architecture search ----------------------------------------------------------------------
def run_search(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.compress.scores import load_scores
    from minitron_deploy.search.run import run_search as search

    c = ctx.config
    scores, _ = load_scores(ctx.inputs["scores"].content)
    # finished candidates are shared by runs (a larger top_k reuses them): keyed by content
    # and, like the store, by the code digest, library versions and compute dtypes
    cache = ctx.scratch.parent.parent / "search-cache"
    cache_env = {k: v for k, v in ctx.env.items() if k != "hardware"}
    summary = search(
        ctx.model_dir("model"),
        scores,
        c.search,
        c.bench,
        c.distill,
        ctx.text("training"),
        ctx.text("validation"),
        ctx.out,
        cache,
        progress=ctx.progress,
        log=ctx.log,
        cache_env=cache_env,
        holdout=ctx.holdout(),  # (search) held-out domains scored by the re-rank
    )
    outputs = {
        "model": "model",
        "report": "report.md",
        "candidates": "candidates.json",
        "pareto": "pareto.png",
    }
    return {"outputs": outputs, "metrics": _jsonable(summary)}


# -- downstream evaluation -------------------------------------------------------------------
def eval_keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """Local task files enter the key by content (the YAML and every file beside it); the
    offline tasks by their generator and the text they are made from; registry names as
    named (lm-eval's version is among the stage's libraries)."""
    from minitron_deploy.evaluation.offline_tasks import TASKS, tasks_key

    c = config.eval
    tasks: list[Any] = []
    for spec in c.tasks:
        p = Path(spec)
        if spec in TASKS:
            tasks.append([spec, tasks_key()])
        elif p.is_file() or p.is_dir():
            folder = p.parent if p.is_file() else p
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            tasks.append(
                [p.name, [[f.relative_to(folder).as_posix(), hashes.file(f)] for f in files]]
            )
        else:
            tasks.append(spec)
    return {**c.model_dump(mode="json"), "tasks": tasks}


def eval_needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("lm_eval",), ()


def run_eval(ctx: StageContext) -> dict[str, Any]:
    from minitron_deploy.evaluation.harness import (
        evaluate_tasks,
        load_for_eval,
        resolve_tasks,
        results_markdown,
    )
    from minitron_deploy.fsutil import atomic_write_json, atomic_write_text

    c = ctx.config.eval
    resolved = resolve_tasks(list(c.tasks))
    model, tok = load_for_eval(ctx.model_dir("model"))
    res = evaluate_tasks(
        model,
        tok,
        list(c.tasks),
        num_fewshot=c.num_fewshot,
        limit=c.limit,
        batch_size=c.batch_size,
        seed=c.seed,
        resolved=resolved,
    )
    atomic_write_json(ctx.out / "results.json", res)
    atomic_write_text(ctx.out / "results.md", results_markdown(res, ctx.node_id))
    return {"outputs": {"results": "results.json", "report": "results.md"}, "metrics": res}


def speedup_gate(node: Any, metrics: dict[str, Any]) -> list[str]:
    """The speedup gate (`minitron_deploy.bench.gate`) on the bench results: one message per
    failing or inconclusive cell; inconclusive ones start with `gate.INCONCLUSIVE_PREFIX`."""
    res = speed_gate.evaluate(metrics.get("results", []), node.meta.get("min_speedup") or {})
    return [f"speedup gate: {f}" for f in res["failures"]] + [
        f"{speed_gate.INCONCLUSIVE_PREFIX}: {f}" for f in res["inconclusive"]
    ]
