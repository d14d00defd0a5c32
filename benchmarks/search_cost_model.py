"""The search's cost model against the real engine, on shapes it was not fitted on.

Takes the grid of `profiles/smollm2-135m-search.yaml` (SmolLM2-135M-Instruct and its seed
shapes), measures on the built-in torch engine (random weights of each shape; the source at
`--batch[0]`, candidates at `--batch[1]`, ISL/OSL `--isl-osl`, interleaved rounds) the
`calibration_shapes` the search would pick plus `--holdout` more drawn at random (seeded) from
the rest, fits the cost model (`minitron_deploy/search/cost.py`) on the calibration shapes only,
and reports its |relative error| leave-one-out and on the held-out shapes. Beside it, the
search's former model (one exponent of the compute-ideal speedup, fitted on the same shapes).
The workload defaults are smaller than the profile's bench (32/32 and 64/16 at batch 32 vs 64)
so that it fits a shared 2-core host; the record says which were used.

    .venv/bin/python benchmarks/search_cost_model.py [--isl-osl 16/8] [--batch 8 16]
        [--holdout 8] [--repeats 3]

Writes benchmarks/results/search_cost_model-<dtype>.json and its .md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "smollm2-135m-search.yaml"
NAME = "search_cost_model"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--isl-osl", default="16/8")
    ap.add_argument("--batch", type=int, nargs=2, default=[8, 16])
    ap.add_argument("--holdout", type=int, default=8, help="shapes measured, never fitted on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results as results_file
    import torch
    import yaml

    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.hardware import compute_dtype
    from minitron_deploy.model.teacher import builtin_model
    from minitron_deploy.search.config import SearchConfig
    from minitron_deploy.search.cost import relative_errors
    from minitron_deploy.search.run import Search

    raw = yaml.safe_load(PROFILE.read_text())
    cfg = SearchConfig(**{**raw["search"], "batch": tuple(args.batch)})
    bench = BenchConfig(
        engine="torch", isl_osl=args.isl_osl, warmup=1, repeats=args.repeats, seed=args.seed
    )
    src = builtin_model(raw["source"].split(":", 1)[1])
    with tempfile.TemporaryDirectory(prefix="search-cost-") as tmp:
        s = Search(src, {}, cfg, bench, Path(tmp), progress=True, log=print)
        s.enumerate()
        alive = [i for i, r in s.rows.items() if r["rejected"] is None]
        calib = s.calibration_ids(alive)
        rest = sorted(set(alive) - set(calib))
        held = random.Random(args.seed).sample(rest, min(args.holdout, len(rest)))
        s.measure(calib + held)  # one interleaved set of rounds for all
    s.fit_cost_model(calib)
    loo = s.fit["leave_one_out"]
    pred = [s.rows[i]["predicted_speedup"] for i in held]
    meas = [s.rows[i]["speedup"] for i in held]
    out = relative_errors(pred, meas)
    # the former model: log(speedup) = a + b log(ideal), on the same calibration shapes
    xs = [math.log(s.rows[i]["ideal_speedup"]) for i in calib]
    ys = [math.log(s.rows[i]["speedup"]) for i in calib]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    a = my - b * mx
    old = [math.exp(a + b * math.log(s.rows[i]["ideal_speedup"])) for i in held]
    old_err = relative_errors(old, meas)
    rows = []
    for i in calib + held:
        r = s.rows[i]
        p = r["loo_speedup"] if i in calib else r["predicted_speedup"]
        rows.append(
            [i, r["family"], "fitted (leave-one-out)" if i in calib else "held out",
             f"{r['speedup']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]",
             f"{p:.2f}x", f"{p / r['speedup'] - 1:+.1%}"]
        )  # fmt: skip
    dtype = str(compute_dtype("auto")).replace("torch.", "")
    summary = [
        ["cost model, leave-one-out on the fitted shapes", loo["n"], _pct(loo["median"]),
         _pct(loo["max"])],
        ["cost model, held-out shapes", out["n"], _pct(out["median"]), _pct(out["max"])],
        ["one exponent of the ideal speedup, held-out shapes", old_err["n"],
         _pct(old_err["median"]), _pct(old_err["max"])],
    ]  # fmt: skip
    rec = results_file.record(
        f"{NAME}-{dtype}",
        title=f"The search's cost model on unfitted shapes (torch engine, auto = {dtype})",
        results={
            "workload": {"isl_osl": args.isl_osl, "batch": args.batch, "repeats": args.repeats},
            "calibration": calib,
            "held_out": held,
            "cost_model": s.fit,
            "held_out_errors": out,
            "former_model": {"a": a, "b": b, "held_out_errors": old_err},
            "rows": {i: s.rows[i] for i in calib + held},
        },
        dtype=dtype,
        threads=torch.get_num_threads(),
        tables={
            "summary": results_file.table(
                ["model, shapes", "n", "median abs rel error", "max"],
                summary,
                ["l", "r", "r", "r"],
            ),
            "shapes": results_file.table(
                ["shape", "family", "role", "measured speedup", "predicted", "error"],
                rows,
                ["l", "l", "l", "l", "r", "r"],
            ),
        },  # fmt: skip
        notes=[
            f"Workload: ISL/OSL {args.isl_osl}, source at batch {args.batch[0]}, candidates at "
            f"{args.batch[1]}, {args.repeats} interleaved rounds after 1 warm-up (smaller than "
            "the profile's bench so that it fits a shared 2-core host).",
            "Speedup: the median of per-round ratios [order-statistic interval; the rounds' "
            "range with fewer than 6]. Predicted: the cost model fitted on the calibration "
            "shapes only (for those, the fit without the shape itself).",
        ],
    )
    results_file.write(rec)
    print(json.dumps({"loo": loo, "held_out": out, "former": old_err}))


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    main()
