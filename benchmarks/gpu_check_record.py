"""The result file of one `benchmarks/gpu_check.sh` run, from the folder it wrote ($OUT).

The device machine has no git checkout and its output comes back as files, so its record is
built here: `benchmarks/results/gpu_check.json` (and .md) holds the two scripts' JSON as they
printed them, the GPU and software it ran on, the test summary, and the tables the README quotes.
The measured tree's commit is given with --commit (the one the run was sent from).

    python benchmarks/gpu_check_record.py DIR --commit SHA [--dirty] [--note TEXT ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

from minitron_deploy.stats import fmt_interval  # noqa: E402


def _ratio_range(engines: dict, name: str, base: str) -> tuple[float, float]:
    """Min and max of the per-round time ratios name/base (rounds are interleaved)."""
    ratios = [
        a / b for a, b in zip(engines[name]["times_s"], engines[base]["times_s"], strict=True)
    ]
    return min(ratios), max(ratios)


def engine_table(es: dict) -> dict:
    base = next(k for k in es["engines"] if k.startswith("torch/"))
    rows = []
    for k, v in es["engines"].items():
        lo, hi = _ratio_range(es["engines"], k, base)
        rows.append(
            [
                k,
                f"{v['output_tok_s']:.0f}",
                f"{v['builtin_speedup']:.2f}x [{lo:.2f}, {hi:.2f}]",
                f"{100 * v['tokens_equal_builtin']:.1f}%",
            ]
        )
    return results.table(
        [
            "engine / dtype",
            "output tok/s (median)",
            "built-in is (per-round range)",
            "greedy tokens equal to built-in",
        ],
        rows,
        ["l", "r", "r", "r"],
    )


def matrix_table(gm: dict) -> dict:
    rows = []
    for r in gm["results"]:
        rows.append(
            [
                r["model"],
                r["dtype_variant"],
                f"{r['isl']}/{r['osl']}",
                str(r["batch"]),
                f"{r['output_tok_s']:.0f}",
                f"{r['speedup_vs_base']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]",
                f"{r['ideal_speedup']:.2f}x",
            ]
        )
    return results.table(
        [
            "model",
            "weights",
            "ISL/OSL",
            "batch",
            "output tok/s",
            "speedup vs 8B [range]",
            "compute ideal",
        ],
        rows,
        ["l", "l", "l", "r", "r", "r", "r"],
    )


def summary_table(gm: dict) -> dict:
    rows = []
    for k, v in gm["summary"].items():
        ideal = f"{v['compute_ideal']:.2f}x" if v["compute_ideal"] else "–"
        rows.append(
            [
                k,
                f"{v['ours_median']:.2f}x",
                ", ".join(f"{x:.2f}" for x in v["ours_per_pair"]),
                ideal,
                f"{v['seed_trtllm_h100']:.1f}x",
            ]
        )
    return results.table(
        [
            "comparison",
            "ours (median of pairs)",
            "per pair (128/128, 2048/128)",
            "compute ideal",
            "seed (TensorRT-LLM, H100)",
        ],
        rows,
        ["l", "r", "r", "r", "r"],
    )


def fp8_linear_table(fl: dict) -> dict:
    rows = [
        [
            str(r["batch"]),
            r["variant"],
            f"{r['us_per_linear']:.1f}",
            fmt_interval(r["speedup_vs_bf16"], r["lo"], r["hi"], unit="x"),
        ]
        for r in fl["rows"]
    ]
    return results.table(
        ["batch (rows)", "variant", "µs per linear", "speed vs BF16 [interval]"],
        rows,
        ["r", "l", "r", "r"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="what gpu_check.sh wrote ($OUT)")
    p.add_argument("--commit", required=True, help="the commit the run's tree was sent from")
    p.add_argument("--dirty", action="store_true", help="the tree had uncommitted changes")
    p.add_argument("--note", action="append", default=[], help="a note for the record")
    args = p.parse_args(argv)
    d = args.folder
    es = json.loads((d / "engine_speed.json").read_text())
    gm = json.loads((d / "gpu_matrix.json").read_text())
    fl_path = d / "fp8_linear_speed.json"
    fl = json.loads(fl_path.read_text()) if fl_path.exists() and fl_path.stat().st_size else None
    env = (d / "env.txt").read_text().splitlines()
    gpu = (d / "nvidia-smi.csv").read_text().splitlines() if (d / "nvidia-smi.csv").exists() else []
    tests = [
        x
        for x in (d / "tests.log").read_text().splitlines()
        if re.search(r"\d+ (passed|failed)", x)
    ]
    when = dt.datetime.fromtimestamp((d / "gpu_matrix.json").stat().st_mtime, dt.timezone.utc)
    rec = results.record(
        "gpu_check",
        title="benchmarks/gpu_check.sh on a lent GPU",
        results={
            "engine_speed": es,
            "gpu_matrix": gm,
            "fp8_linear_speed": fl,
            "env": env,
            "gpu": gpu,
            "tests": tests,
        },
        dtype="bfloat16",
        threads=gm["processor"]["torch_threads"],
        tables={
            "engine": engine_table(es),
            "matrix": matrix_table(gm),
            "summary": summary_table(gm),
            **({"fp8_linear": fp8_linear_table(fl)} if fl else {}),
        },
        notes=[
            "Random weights (the device machine has no network and no GGUF): speed does not "
            "depend on the values; token agreement compares noise-level logits.",
            f"GPU: {gpu[1] if len(gpu) > 1 else '?'}; {env[0] if env else ''}; the host CPU "
            "below is the GPU machine's.",
            *args.note,
        ],
    )
    rec.update(
        command="bash benchmarks/gpu_check.sh",
        git_commit=args.commit,
        git_dirty=args.dirty,
        date=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        processor=gm["processor"],
        load_average=None,  # not recorded on the device machine
    )
    print("\n".join(results.table_markdown(rec["tables"]["summary"])))
    results.write(rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
