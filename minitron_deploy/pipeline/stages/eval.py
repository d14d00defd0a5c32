"""The `eval` stage: downstream tasks through lm-evaluation-harness on one model (the teacher's
or a variant's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.evaluation.config import EvalConfig
from minitron_deploy.evaluation.harness import (
    evaluate_tasks,
    load_for_eval,
    resolve_tasks,
    results_markdown,
)
from minitron_deploy.evaluation.offline_tasks import TASKS, tasks_key
from minitron_deploy.fsutil import atomic_write_json, atomic_write_text
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext
from minitron_deploy.pipeline.stages.base import TORCH_LIBS, NodeConfig, Stage


class EvalNode(NodeConfig):
    """Downstream tasks (lm-evaluation-harness) on one model: the teacher or a variant's."""

    eval: EvalConfig


def keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """Local task files enter the key by content (the YAML and every file beside it); the
    offline tasks by their generator and the text they are made from; registry names as
    named (lm-eval's version is among the stage's libraries)."""
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


def needs(config: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("lm_eval",), ()


def run(ctx: StageContext) -> dict[str, Any]:
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


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    s = E.shape_of(node.meta.get("shapes", {}).get("model"))
    if s is None:
        return E.timed("eval", None, 1e6, gflops, dtype)
    c = node.config
    items = (c.eval.limit or 400) * len(c.eval.tasks)
    flops = E.fwd(s, items * 500, 80)  # ~3 requests of ~160 tokens per item (offline tasks)
    return E.timed("eval", flops, 1e6, gflops, dtype)


STAGE = Stage(
    "eval",
    EvalNode,
    run,
    "Downstream tasks through lm-evaluation-harness (teacher and each variant).",
    libraries=(*TORCH_LIBS, "lm-eval", "datasets"),
    needs=needs,
    keyed=keyed,
    estimate=estimate,
)
