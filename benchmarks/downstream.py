"""Downstream proxy tasks (lm-evaluation-harness, offline) for a teacher and its students, with
the share of the teacher's score each keeps - the table of the README.

    .venv/bin/python benchmarks/downstream.py --model teacher=builtin:smollm2-135m \\
        --model width=PATH --model depth=PATH [--limit 100] [--tasks T1,T2]

The first --model is the teacher. Each model is loaded once (HF folder, HF-FP8 export or
builtin:NAME) and scored item by item: per task each model's accuracy with a 95% bootstrap
interval over items, and each student's difference to the teacher with a paired bootstrap
interval over the same items (`minitron_deploy.stats`). Writes benchmarks/results/downstream.json
and its .md (table `main`); the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minitron_deploy.stats import bootstrap_mean, paired_bootstrap  # noqa: E402

TASKS = "minitron_next_line,minitron_cloze_code,minitron_cloze_prose,minitron_last_word"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from minitron_deploy.evaluation.harness import evaluate_tasks, load_for_eval, resolve_tasks
    from minitron_deploy.hardware import compute_dtype
    from minitron_deploy.model.teacher import resolve_model

    tasks = args.tasks.split(",")
    resolved = resolve_tasks(tasks)
    items: dict[str, dict[str, dict[str, float]]] = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        t0 = time.time()
        model, tok = load_for_eval(resolve_model(path))
        res = evaluate_tasks(model, tok, tasks, limit=args.limit, resolved=resolved, per_item=True)
        items[name] = {t: _acc_items(r) for t, r in res["tasks"].items()}
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    summary = summarize(items)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results

    rec = results.record(
        "downstream",
        title="Downstream proxy tasks: teacher and students on the same items",
        results={"limit": args.limit, "summary": summary, "items": items},
        dtype=compute_dtype("auto"),
        threads=torch.get_num_threads(),
        tables={"main": table(results, summary, list(items))},
        notes=[
            f"{args.limit} items per task; accuracy [95% bootstrap interval over items]; a "
            "student's cell: accuracy, share of the teacher's, and the paired difference to the "
            "teacher [95% paired bootstrap interval over the same items]"
        ],
    )
    results.write(rec)
    print(results.markdown(rec))
    print(json.dumps({"limit": args.limit, "summary": summary}))


def _acc_items(task_result: dict) -> dict[str, float]:
    """{doc_id: acc} (acc_norm where a task has no acc)."""
    out = {}
    for doc, m in task_result.get("items", {}).items():
        v = m.get("acc", m.get("acc_norm"))
        if v is not None:
            out[doc] = v
    return out


def summarize(items: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Per task: each model's mean with its interval; each student's paired difference to the
    first model (the teacher) over the items both have."""
    names = list(items)
    teacher = names[0]
    out: dict = {}
    for t in items[teacher]:
        out[t] = {}
        for n in names:
            vals = list(items[n][t].values())
            out[t][n] = bootstrap_mean(vals) if vals else None
        for n in names[1:]:
            common = sorted(set(items[n][t]) & set(items[teacher][t]))
            if common:
                a = [items[n][t][d] for d in common]
                b = [items[teacher][t][d] for d in common]
                out[t][n]["vs_teacher"] = paired_bootstrap(a, b)
    return out


def table(results, summary: dict, names: list[str]) -> dict:
    rows = []
    for t, by in summary.items():
        te = by[names[0]]
        cells = [t, f"{te['mean']:.3f} [{te['lo']:.2f}, {te['hi']:.2f}]"]
        for n in names[1:]:
            s, d = by[n], by[n].get("vs_teacher")
            share = f" ({s['mean'] / te['mean']:.0%})" if te["mean"] else ""
            diff = f"; {d['diff']:+.3f} [{d['lo']:+.2f}, {d['hi']:+.2f}]" if d else ""
            cells.append(f"{s['mean']:.3f}{share}{diff}")
        rows.append(cells)
    return results.table(["task", *names], rows, ["l"] + ["r"] * len(names))


if __name__ == "__main__":
    main()
