"""The built-in engine on the CPU with glibc's default heap vs the steady heap the bench sets
(`minitron_deploy.hardware.steady_heap`): time per generation, minor page faults per
generation, and the speedup of a student over the source measured each way.

The setting is process-wide and kept, so each variant runs in a process of its own: `--rounds`
rounds, each starting one process per variant (the order alternating between rounds); a process
builds the engines (random weights of the shape: speed does not depend on the values), warms
each up once and times `--repeats` generations of each, interleaved (source at batch 32, the
student at batch 64, ISL/OSL `--isl-osl`: the search profile's workload). Reported per variant:
the median over every timed call with its 95% order-statistic interval, the median and range of
page faults per call, the spread of call times (max / min - 1, median over processes) and the
student's speedup over the source (per process, median of per-call ratios); and the steady heap
over the default, paired by round.

    .venv/bin/python benchmarks/steady_heap.py [--rounds 4] [--repeats 4] [--dtype float32]

Writes benchmarks/results/steady_heap.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

from minitron_deploy.hardware import STEADY_HEAP_ENV  # noqa: E402
from minitron_deploy.stats import median_interval  # noqa: E402

STUDENT = {"num_hidden_layers": 15}  # the depth seed's shape (h576-f1536-a9x3-l15)
VARIANTS = {"default": "0", "steady": "1"}


def worker(args: argparse.Namespace) -> None:
    """One process: time the source and the student, print one JSON line."""
    import torch

    from minitron_deploy.engines.torch_engine import TorchEngine
    from minitron_deploy.engines.torch_weights import random_state_dict
    from minitron_deploy.hardware import steady_heap
    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.teacher import resolve_model

    on = steady_heap()  # False with MINITRON_STEADY_HEAP=0 (the default heap's processes)
    isl, osl = (int(x) for x in args.isl_osl.split("/"))
    base_cfg = read_config(resolve_model(args.teacher))
    engines = {}
    for name, extra in (("source", {}), ("student", STUDENT)):
        cfg = {**base_cfg, **extra}
        sd = random_state_dict(cfg, torch.bfloat16, seed=0)
        engines[name] = TorchEngine(None, config=cfg, state_dict=sd, dtype=args.dtype)
    batch = {"source": 32, "student": 64}
    ids = {
        n: torch.randint(0, 30000, (b, isl), generator=torch.Generator().manual_seed(0))
        for n, b in batch.items()
    }

    def call(n: str) -> tuple[float, int]:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        engines[n].generate(ids[n], max_new_tokens=osl, ignore_eos=True)
        t = time.perf_counter() - t0
        return t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    for n in engines:
        call(n)  # warm-up
    out = {
        "steady_heap": on,
        "threads": torch.get_num_threads(),
        "times": {n: [] for n in engines},
        "faults": {n: [] for n in engines},
    }
    for _ in range(args.repeats):
        for n in engines:
            t, f = call(n)
            out["times"][n].append(t)
            out["faults"][n].append(f)
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--isl-osl", default="64/16")
    ap.add_argument("--teacher", default="builtin:smollm2-135m")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            env = {**os.environ, STEADY_HEAP_ENV: VARIANTS[v]}
            cmd = [sys.executable, __file__, "--worker", *sys.argv[1:]]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if p.returncode:
                raise SystemExit(f"worker failed ({p.returncode}):\n{p.stderr[-2000:]}")
            runs[v].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {v}: done", file=sys.stderr, flush=True)
    summary, rows = {}, []
    for v, procs in runs.items():
        s = {"steady_heap": [p["steady_heap"] for p in procs]}
        for n in ("source", "student"):
            ts = [t for p in procs for t in p["times"][n]]
            fs = [f for p in procs for f in p["faults"][n]]
            spread = [max(p["times"][n]) / min(p["times"][n]) - 1 for p in procs]
            s[n] = {
                "seconds": median_interval(ts),
                "faults_median": statistics.median(fs),
                "faults_min": min(fs),
                "faults_max": max(fs),
                "spread_median": statistics.median(spread),
            }
        sp = [
            statistics.median(
                2 * a / b for a, b in zip(p["times"]["source"], p["times"]["student"], strict=True)
            )
            for p in procs
        ]  # the student runs 2x the tokens
        s["speedup"] = {"per_process": sp, **median_interval(sp)}
        summary[v] = s
        for n in ("source", "student"):
            m = s[n]["seconds"]
            rows.append(
                [
                    v,
                    n,
                    f"{m['median']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]",
                    f"{s[n]['spread_median']:.1%}",
                    f"{s[n]['faults_median']:,.0f} ({s[n]['faults_min']:,}-{s[n]['faults_max']:,})",
                ]
            )
    ratio = {
        n: [
            statistics.median(a["times"][n]) / statistics.median(b["times"][n])
            for a, b in zip(runs["steady"], runs["default"], strict=True)
        ]
        for n in ("source", "student")
    }
    summary["steady_over_default"] = {
        n: median_interval(x) | {"per_round": x} for n, x in ratio.items()
    }
    sp_rows = [
        [
            v,
            f"{summary[v]['speedup']['median']:.3f}",
            ", ".join(f"{x:.3f}" for x in summary[v]["speedup"]["per_process"]),
        ]
        for v in VARIANTS
    ]
    rec = results.record(
        "steady_heap",
        title="The CPU engine with glibc's default heap vs the steady heap",
        results={
            **summary,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "isl_osl": args.isl_osl,
            "student": STUDENT,
        },
        dtype=args.dtype,
        threads=runs["default"][0]["threads"],
        tables={
            "calls": results.table(
                [
                    "heap",
                    "model",
                    "seconds per call [95%]",
                    "spread in a process (median)",
                    "minor page faults per call (range)",
                ],
                rows,
                ["l", "l", "r", "r", "r"],
            ),
            "speedup": results.table(
                ["heap", "student speedup (median of processes)", "per process"], sp_rows
            ),
            "ratio": results.table(
                ["model", "steady / default time (median of rounds)", "per round"],
                [
                    [
                        n,
                        f"{summary['steady_over_default'][n]['median']:.3f}",
                        ", ".join(
                            f"{x:.3f}" for x in summary["steady_over_default"][n]["per_round"]
                        ),
                    ]
                    for n in ("source", "student")
                ],
            ),
        },
        notes=[
            f"SmolLM2-135M-Instruct's shape with random weights (source, batch 32) and a 15-layer "
            f"student (batch 64), ISL/OSL {args.isl_osl}, {args.dtype}; {args.rounds} rounds of "
            f"one process per heap setting (order alternating), each {args.repeats} timed calls "
            "per model after one warm-up, interleaved. Faults: ru_minflt around each call. "
            "Speedup: 2 x source time / student time per call pair (the student's batch is twice "
            "the source's), median per process.",
        ],
    )
    results.write(rec)
    print(json.dumps(summary["steady_over_default"], indent=1))


if __name__ == "__main__":
    main()
