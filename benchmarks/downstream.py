"""Downstream proxy tasks (lm-evaluation-harness, offline) for a teacher and its students, with
the share of the teacher's score each keeps - the table of the README.

    .venv/bin/python benchmarks/downstream.py --model teacher=builtin:smollm2-135m \\
        --model width=PATH --model depth=PATH [--limit 100] [--tasks T1,T2]

The first --model is the teacher. Each model is loaded once (HF folder, HF-FP8 export or
builtin:NAME); the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = "minitron_cloze_code,minitron_cloze_prose,minitron_last_word"


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
    scores: dict[str, dict[str, float]] = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        t0 = time.time()
        model, tok = load_for_eval(resolve_model(path))
        res = evaluate_tasks(model, tok, tasks, limit=args.limit, resolved=resolved)
        scores[name] = {
            t: r["metrics"].get("acc", r["metrics"].get("acc_norm"))
            for t, r in res["tasks"].items()
        }
        print(f"{name}: {scores[name]} ({time.time() - t0:.0f} s)", file=sys.stderr)
    names = list(scores)
    teacher = scores[names[0]]
    cap = torch.backends.cpu.get_cpu_capability()
    cpu = f"{os.uname().machine} {cap}, {os.cpu_count()} cores, {compute_dtype('auto')}"
    lines = [
        f"Accuracy on the offline proxy tasks ({args.limit} items each), share of the teacher's "
        f"in brackets; processor {cpu}.",
        "",
        "| task | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for t in tasks:
        cells = [f"{teacher[t]:.3f}"]
        for n in names[1:]:
            v = scores[n][t]
            cells.append(f"{v:.3f} ({v / teacher[t]:.0%})" if teacher[t] else f"{v:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(json.dumps({"limit": args.limit, "scores": scores}))


if __name__ == "__main__":
    main()
