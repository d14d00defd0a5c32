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
        [--holdout 8] [--repeats 3] [--held-out-repeats 9]

`--held-out-repeats N` measures the held-out shapes with N rounds (the calibration shapes keep
`--repeats`, as the search measures them): with 3 rounds a shape's median moves by up to ~15%
between runs on a shared host, so errors against 3-round medians are mostly the measurement's.

`--from-candidates PATH --dtype DTYPE` measures nothing: it takes a search stage's
`candidates.json`, or a `search_vs_handpicked-<dtype>.json` record that holds them (every shape
the search measured, at the profile's own workload), fits the
current cost model on the shapes that search fitted on, and checks it on every other shape it
measured; it also says how many shapes the current band rule would have measured and whether
every shape whose measured lower bound met the budget was predicted inside the band or above.

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
    ap.add_argument("--repeats", type=int, default=3, help="rounds per calibration shape")
    ap.add_argument(
        "--held-out-repeats",
        type=int,
        help="rounds per held-out shape (default: --repeats); more rounds measure the model's "
        "error rather than the measurement's noise",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--from-candidates",
        type=Path,
        help="a search stage's candidates.json, or a search_vs_handpicked-<dtype>.json record",
    )
    ap.add_argument("--dtype", help="the compute dtype that search ran in (--from-candidates)")
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
    from minitron_deploy.search.cost import beyond_interval, relative_errors
    from minitron_deploy.search.run import Search

    raw = yaml.safe_load(PROFILE.read_text())
    cfg = SearchConfig(**{**raw["search"], "batch": tuple(args.batch)})
    bench = BenchConfig(
        engine="torch", isl_osl=args.isl_osl, warmup=1, repeats=args.repeats, seed=args.seed
    )
    src = builtin_model(raw["source"].split(":", 1)[1])
    if args.from_candidates:
        if not args.dtype:
            ap.error("--from-candidates needs --dtype (the dtype that search computed in)")
        found = json.loads(args.from_candidates.read_text())
        if "results" in found:  # a search_vs_handpicked record: its search stage's candidates
            found = found["results"]["search"]
        cfg = SearchConfig(**raw["search"])
        s = Search(src, {}, cfg, None, Path(tempfile.gettempdir()), progress=False, log=print)
        s.enumerate()
        for r in found["rows"]:
            if r["id"] in s.rows and r.get("measured") and r.get("pair_speedups"):
                keep = ("speedup", "speedup_lo", "speedup_hi", "pair_speedups", "measured")
                s.rows[r["id"]].update({k: r[k] for k in keep})
        fit = found["summary"]["cost_model"]
        calib = list(fit.get("calibration") or fit["fitted_on"])  # refitted: the first fit's
        held = sorted(i for i, r in s.rows.items() if r["measured"] and i not in calib)
        workload = {
            "isl_osl": raw["bench"]["isl_osl"],
            "batch": list(raw["search"]["batch"]),
            "repeats": raw["bench"]["repeats"],
            "from": str(args.from_candidates),
        }
        dtype = args.dtype
    else:
        with tempfile.TemporaryDirectory(prefix="search-cost-") as tmp:
            s = Search(src, {}, cfg, bench, Path(tmp), progress=True, log=print)
            s.enumerate()
            alive = [i for i, r in s.rows.items() if r["rejected"] is None]
            calib = s.calibration_ids(alive)
            rest = sorted(set(alive) - set(calib))
            held = random.Random(args.seed).sample(rest, min(args.holdout, len(rest)))
            held_repeats = args.held_out_repeats or args.repeats
            if held_repeats == args.repeats:
                s.measure(calib + held)  # one interleaved set of rounds for all
            else:  # calibration as the search measures it, the held-out shapes more precisely
                s.measure(calib)
                s.bench = bench.model_copy(update={"repeats": held_repeats})
                s.measure(held)
        workload = {
            "isl_osl": args.isl_osl,
            "batch": args.batch,
            "repeats": args.repeats,
            "held_out_repeats": held_repeats,
        }
        dtype = str(compute_dtype("auto")).replace("torch.", "")
    s.fit_cost_model(calib)
    loo = s.fit["leave_one_out"]
    pred = [s.rows[i]["predicted_speedup"] for i in held]
    meas = [s.rows[i]["speedup"] for i in held]
    out = relative_errors(pred, meas)
    out_beyond = beyond_interval(
        pred, [s.rows[i]["speedup_lo"] for i in held], [s.rows[i]["speedup_hi"] for i in held]
    )
    loo_beyond = s.fit["leave_one_out_beyond_interval"]
    # what the band rule does with this fit: the shapes it would measure, and whether every
    # shape whose measured lower bound met the budget was predicted inside the band or above
    ms = cfg.budget.min_speedup
    alive = [i for i, r in s.rows.items() if r["rejected"] is None and i not in calib]
    low_edge = ms / (1 + s.band)
    in_band = [i for i in alive if low_edge <= s.rows[i]["predicted_speedup"] < ms / (1 - s.band)]
    met = [i for i in held if s.rows[i]["speedup_lo"] >= ms]
    missed = [i for i in met if s.rows[i]["predicted_speedup"] < low_edge]
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
    summary = [
        ["cost model, leave-one-out on the fitted shapes", loo["n"], _pct(loo["median"]),
         _pct(loo["max"])],
        ["cost model, leave-one-out, beyond the measured interval", loo_beyond["n"],
         _pct(loo_beyond["median"]), _pct(loo_beyond["max"])],
        ["cost model, held-out shapes", out["n"], _pct(out["median"]), _pct(out["max"])],
        ["cost model, held-out shapes, beyond the measured interval", out_beyond["n"],
         _pct(out_beyond["median"]), _pct(out_beyond["max"])],
        ["one exponent of the ideal speedup, held-out shapes", old_err["n"],
         _pct(old_err["median"]), _pct(old_err["max"])],
    ]  # fmt: skip
    rec = results_file.record(
        f"{NAME}-{dtype}",
        title=f"The search's cost model on unfitted shapes (torch engine, auto = {dtype})",
        results={
            "workload": workload,
            "calibration": calib,
            "held_out": held,
            "cost_model": s.fit,
            "held_out_errors": out,
            "held_out_beyond_interval": out_beyond,
            "band": {
                "band": s.band,
                "would_measure": len(in_band),
                "alive": len(alive) + len(calib),
                "met_budget_measured": len(met),
                "predicted_below_band": missed,
            },
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
            f"Workload: ISL/OSL {workload['isl_osl']}, source at batch {workload['batch'][0]}, "
            f"candidates at {workload['batch'][1]}, {workload['repeats']} interleaved rounds "
            "after 1 warm-up"
            + (
                f" ({workload['held_out_repeats']} for the held-out shapes, measured in their "
                "own interleaved runs with the source)"
                if workload.get("held_out_repeats", workload["repeats"]) != workload["repeats"]
                else ""
            )
            + (
                f"; the shapes a search measured ({workload['from']}), the profile's own bench."
                if "from" in workload
                else "; the profile's own bench."
                if (workload["isl_osl"], list(workload["batch"]))
                == (raw["bench"]["isl_osl"], list(raw["search"]["batch"]))
                else " (smaller than the profile's bench so that it fits a shared 2-core host)."
            ),
            f"Band (the search's rule: leave-one-out error beyond the measured intervals, at "
            f"least 3%): {s.band:.1%}; it would measure {len(in_band)} of the "
            f"{len(alive)} shapes not fitted on; {len(met)} measured shapes met the budget by "
            f"their lower bound, {len(missed)} of them predicted below the band"
            + (f" ({', '.join(missed)})." if missed else "."),
            "Speedup: the median of per-round ratios [order-statistic interval; the rounds' "
            "range with fewer than 6]. Predicted: the cost model fitted on the calibration "
            "shapes only (for those, the fit without the shape itself).",
        ],
    )
    results_file.write(rec)
    print(json.dumps({"loo": loo, "held_out": out, "beyond": out_beyond, "former": old_err}))


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    main()
