"""What a run produced, for people: the headline table per variant (quality beside speed), the
deliverables and charts by path, and `summary.md` (the run record itself is `run.json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.model.shapes import human


def _metrics(record: dict[str, Any], variant: str | None, stage: str) -> dict[str, Any]:
    for s in record["stages"]:
        if s.get("variant") == variant and s["stage"] == stage and "error" not in s:
            return s.get("metrics") or {}
    return {}


def _bench_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return _metrics(record, None, "bench").get("results", [])


def headline(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: params, held-out loss pruned -> distilled with the teacher's, and
    measured speedup vs base beside the compute ideal at each ISL/OSL pair."""
    variants = list(dict.fromkeys(s["variant"] for s in record["stages"] if s.get("variant")))
    source = _metrics(record, None, "source")
    bench = _bench_rows(record)
    rows = []
    for v in variants:
        prune, distill = _metrics(record, v, "prune"), _metrics(record, v, "distill")
        params = prune.get("params_after") or distill.get("params") or source.get("params")
        speed = [r for r in bench if r.get("model") == v]
        rows.append(
            {
                "variant": v,
                "params": params,
                "shape": prune.get("target_shape"),
                "loss_pruned": distill.get("val_loss_before"),
                "loss_distilled": distill.get("val_loss_after"),
                "teacher_loss": distill.get("teacher_val_loss"),
                "holdout": {
                    k[len("holdout_") : -len("_loss_after")]: {
                        "loss_pruned": distill.get(k.replace("_after", "_before")),
                        "loss_distilled": distill.get(k),
                        "teacher_loss": distill.get("teacher_" + k[: -len("_after")]),
                    }
                    for k in distill
                    if k.startswith("holdout_") and k.endswith("_loss_after")
                },
                "tokens": distill.get("tokens"),
                "speedups": [
                    {
                        "isl": r["isl"],
                        "osl": r["osl"],
                        "batch": r["batch"],
                        "measured": r.get("speedup_vs_base"),
                        "lo": r.get("speedup_lo"),
                        "hi": r.get("speedup_hi"),
                        "ideal": r.get("ideal_speedup"),
                        "output_tok_s": r.get("output_tok_s"),
                    }
                    for r in speed
                ],
            }
        )
    return rows


def _loss(row: dict[str, Any]) -> str:
    a, b, t = row["loss_pruned"], row["loss_distilled"], row["teacher_loss"]
    if a is None and b is None:
        return "-"
    text = f"{a:.2f} → {b:.2f}" if a is not None and b is not None else f"{a or b:.2f}"
    return text + (f" (teacher {t:.2f})" if t is not None else "")


def _times(x: float | None, missing: str = "not measured") -> str:
    """A speedup as "1.87x"; one that was not measured says so (never "0.00x")."""
    return missing if x is None else f"{x:.2f}x"


def _speed(row: dict[str, Any]) -> tuple[str, str]:
    sp = row["speedups"]
    if not sp:
        return "-", "-"
    measured = ", ".join(
        _times(s["measured"])
        + (f" [{s['lo']:.2f}, {s['hi']:.2f}]" if s.get("lo") is not None else "")
        + f" @{s['isl']}/{s['osl']} b{s['batch']}"
        for s in sp
    )
    ideal = ", ".join(f"{s['ideal']:.2f}x" for s in sp if s["ideal"] is not None)
    return measured or "-", ideal or "-"


def headline_table(record: dict[str, Any]) -> list[list[str]]:
    """The headline as text cells: header row first."""

    out = [
        [
            "variant",
            "params",
            "validation loss: pruned → distilled",
            "speedup vs base (measured)",
            "compute ideal",
        ]
    ]
    rows = headline(record)
    domains = list(dict.fromkeys(d for row in rows for d in row["holdout"]))
    out[0][3:3] = [f"held-out domain {d}: pruned → distilled" for d in domains]
    for row in rows:
        measured, ideal = _speed(row)
        params = human(row["params"]) if row["params"] else "-"
        held = [_loss(row["holdout"][d]) if d in row["holdout"] else "-" for d in domains]
        out.append([row["variant"], params, _loss(row), *held, measured, ideal])
    return out


def _main_metric(metrics: dict[str, float]) -> tuple[str, float] | None:
    for key in ("acc", "acc_norm", "exact_match"):
        if key in metrics:
            return key, metrics[key]
    return next(iter(metrics.items()), None)


# A task's shares (student score / teacher score) are shown only where the teacher clearly
# solves it: the lower end of the 95% Wilson interval of the teacher's score (items right of
# items) must be above the task's chance level, the mean of 1/choices over its items for a
# multiple-choice task. A task with nothing to pick from (a last word, a generation) has chance
# 0, and there the bar is MIN_BAR: the teacher must be shown to get at least 1 item in 20 right
# (with 40 items: 5 or more), else one item more or less swings a share by half.
MIN_BAR = 0.05
Z95 = 1.96


def wilson_low(k: float, n: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval of k successes in n trials."""
    if n <= 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _count(task: dict[str, Any], metric: str, value: float) -> tuple[int | None, int | None]:
    """(items right, items) of a score: the recorded count, else score x items for a score
    in [0, 1]; (None, n) when it is not a share of items (e.g. perplexity)."""
    n = task.get("samples")
    k = (task.get("correct") or {}).get(metric)
    if k is None and n and 0.0 <= value <= 1.0 and abs(value * n - round(value * n)) < 1e-6:
        k = round(value * n)
    return k, n


def teacher_clear(task: dict[str, Any], metric: str) -> tuple[bool, str]:
    """Whether the teacher clearly solves a task (see MIN_BAR), and why not in words."""
    value = task.get("metrics", {}).get(metric)
    if value is None:
        return False, "no teacher score"
    k, n = _count(task, metric, value)
    if k is None or not n:
        return False, "item count unknown"
    chance = task.get("chance")
    bar = max(chance or 0.0, MIN_BAR)
    low = wilson_low(k, n)
    if low > bar:
        return True, ""
    what = f"chance {chance:.3f}" if chance else f"the minimal bar {MIN_BAR:.2f}"
    return False, (
        f"teacher not clearly above chance: {k}/{n} right, 95% interval from {low:.3f}, "
        f"not above {what}"
    )


def _score(task: dict[str, Any], metric: str, value: float) -> str:
    k, n = _count(task, metric, value)
    if k is not None and n:
        return f"{value:.3f} ({k}/{n})"
    return f"{value:.3f}" + (f" (n={n})" if n else "")


def eval_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Downstream scores: per task the teacher's and each variant's (score, items right, items),
    the chance level, whether the teacher clearly solves it (`clear`, `why`), and each
    variant's share of the teacher's score where it does (None where not)."""
    models: dict[str, dict[str, Any]] = {}
    for s in record["stages"]:
        if s["stage"] == "eval" and "error" not in s:
            models[s.get("variant") or "teacher"] = (s.get("metrics") or {}).get("tasks", {})
    if "teacher" not in models:
        return []
    teacher = models.pop("teacher")
    rows = []
    for task, t in teacher.items():
        main = _main_metric(t.get("metrics", {}))
        if main is None:
            continue
        metric, ref = main
        clear, why = teacher_clear(t, metric)
        variants = {}
        for name, scores in models.items():
            v_task = scores.get(task, {})
            v = v_task.get("metrics", {}).get(metric)
            variants[name] = {
                "score": v,
                "text": "-" if v is None else _score(v_task, metric, v),
                "share": v / ref if v is not None and ref and clear else None,
            }
        rows.append(
            {
                "task": task,
                "metric": metric,
                "chance": t.get("chance"),
                "teacher": ref,
                "teacher_text": _score(t, metric, ref),
                "clear": clear,
                "why": why,
                "variants": variants,
            }
        )
    return rows


def eval_table(record: dict[str, Any]) -> list[list[str]]:
    """Downstream scores as text cells (header first): one row per task, the teacher's score
    and each variant's, each with its items right of items, and the share of the teacher's
    it keeps (as the blog reports) only where the teacher clearly solves the task; the last
    column says why a task's shares are left out. Empty when the run evaluated no tasks."""
    rows = eval_rows(record)
    if not rows:
        return []
    names = list(rows[0]["variants"])
    out = [["task", "metric", "teacher", *names, "note"]]
    for r in rows:
        cells = [r["task"], r["metric"], r["teacher_text"]]
        for name in names:
            v = r["variants"].get(name) or {"text": "-", "share": None}
            share = f", {v['share']:.0%} of teacher" if v["share"] is not None else ""
            cells.append(v["text"] + share)
        out.append([*cells, r["why"] or "-"])
    return out


def charts(record: dict[str, Any]) -> list[str]:
    """Every chart the run made (each distillation's curves, the throughput PNGs), by their
    path under the run's `outputs/` links where there is one."""
    found = []
    for s in record["stages"]:
        outputs = s.get("outputs") or {}
        if "curves" in outputs and Path(outputs["curves"]).is_file():
            found.append(outputs["curves"])
        if "report_dir" in outputs and Path(outputs["report_dir"]).is_dir():
            found += sorted(str(p) for p in Path(outputs["report_dir"]).glob("*.png"))
    links = record.get("deployables") or {}
    outputs_dir = Path(record["run_dir"]) / "outputs"
    out = []
    for png in found:
        for name, target in links.items():
            if png == target or png.startswith(target.rstrip("/") + "/"):
                png = str(outputs_dir / name / png[len(target) :].lstrip("/")).rstrip("/")
                break
        out.append(png)
    return out


def next_step(record: dict[str, Any]) -> str | None:
    """The command to try what was built (serve its first Triton repository)."""
    links = record.get("deployables") or {}
    repo = next((k for k in links if k.endswith("/triton")), None)
    if repo is None:
        return None
    path = Path(record["run_dir"]) / "outputs" / repo
    return f"minitron-deploy serve triton --repo {path}"


def summary_markdown(record: dict[str, Any]) -> str:
    """A human summary of one run: headline, deliverables, charts, then every stage."""
    status = record["status"]
    lines = [
        f"# Run of profile `{record['profile']}`",
        "",
        f"- status: **{status}**"
        + (
            f" (failed at `{record.get('failed_stage')}`: {record.get('error')})"
            if status != "ok"
            else ""
        ),
        f"- wall time: {record.get('seconds', 0):.1f} s",
        f"- machine: {record.get('processor', {}).get('summary', 'unrecorded')}; compute dtype "
        f"`{record.get('compute_dtype', 'unrecorded')}` (dtype auto)",
        "",
        "## Headline",
        "",
        "Held-out loss on the profile's validation text (nats/token); speedup = output tokens/s "
        "of the variant over the base at the same ISL/OSL, each at its batch.",
        "",
    ]
    table = headline_table(record)
    lines += ["| " + " | ".join(table[0]) + " |", "|" + " --- |" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    tasks = eval_table(record)
    if tasks:
        lines += [
            "",
            "## Downstream tasks (lm-evaluation-harness)",
            "",
            "Score of each model with its items right of items in brackets, and the share of "
            "the teacher's score each variant keeps, shown only where the teacher clearly "
            "solves the task: the lower end of the 95% Wilson interval of its score above the "
            f"chance level (1/choices; for a task without choices the bar is {MIN_BAR:.2f}). "
            "The minitron_* tasks are offline proxies generated from local text, not "
            "MMLU/Winogrande.",
            "",
            "| " + " | ".join(tasks[0]) + " |",
            "|" + " --- |" * len(tasks[0]),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in tasks[1:]]
    deployables = record.get("deployables") or {}
    if deployables:
        lines += ["", "## Deliverables (linked under `outputs/` beside this file)", ""]
        lines += [f"- `outputs/{name}` → `{target}`" for name, target in deployables.items()]
    pngs = charts(record)
    if pngs:
        lines += ["", "## Charts", ""]
        lines += [f"- `{p}`" for p in pngs]
    if step := next_step(record):
        lines += ["", "## Next", "", f"    {step}"]
    lines += [
        "",
        "## Stages",
        "",
        "| stage | cached | seconds | key | notes |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for s in record["stages"]:
        note = s.get("error") or _fmt_metrics(s.get("metrics", {}))
        lines.append(
            f"| {s['node']} | {'yes' if s.get('cached') else 'no'} | "
            f"{s.get('seconds', 0):.1f} | `{s['key'][:12]}` | {note} |"
        )
    rows = _bench_rows(record)
    if rows:
        lines += [
            "",
            "## Throughput",
            "",
            "| model | engine | dtype | ISL/OSL | batch | req/s | output tok/s | speedup | ideal |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['engine']} | {r['dtype']} | {r['isl']}/{r['osl']} | "
                f"{r['batch']} | {r['req_s']:.3g} | {r['output_tok_s']:.4g} | "
                f"{_times(r.get('speedup_vs_base'))} | {_times(r.get('ideal_speedup'), '-')} |"
            )
    return "\n".join(lines) + "\n"


def _fmt_metrics(m: dict[str, Any]) -> str:
    keys = (
        "params",
        "params_after",
        "val_loss",
        "val_loss_before",
        "val_loss_after",
        "loss",
        "ppl",
        "top1_agreement",
        "kl_per_token",
    )
    parts = []
    for k in keys:
        v = m.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, int):
            parts.append(f"{k}={v:,}")
    return ", ".join(parts)
