"""How close `plan`'s time estimate comes to the run: predicted vs actual seconds per stage.

For each profile and compute dtype asked for: `plan --json` then `run --json` in a fresh work
folder (nothing cached), as `make demo` does, reading the actual seconds of every stage from the
run record. `MINITRON_AUTO_DTYPE=float32` makes this host (native bf16) choose float32 as an
AVX2-only host's `auto` would (the probe and the factors then are float32's); `bfloat16` is this
host's own choice. Runs interleave the dtypes per profile. Each measurement keeps the probe rate
the plan used, the load average around it, and the run's console log (stderr, not a terminal):
the longest line and the lines over 200 characters, so the same run checks that third-party
output stayed in the stages' log files.

The report recomputes every prediction with the current factors of
`minitron_deploy/pipeline/estimate.py` (and each stage module's `estimate`) from the stored
probe rate (`predicted`), beside what the plan said at the time (`plan then`); `--calibrate`
prints the factors that fit the stored runs (fixed part of a stage from the tiny profile, share
of the probe's rate from the rest).

    .venv/bin/python benchmarks/estimates.py --profile profiles/ci-tiny.yaml \\
        --dtype bfloat16 --dtype float32
    .venv/bin/python benchmarks/estimates.py --profile profiles/smollm2-135m.yaml --dtype bfloat16
    .venv/bin/python benchmarks/estimates.py --report      # re-render from the stored runs
    .venv/bin/python benchmarks/estimates.py --render-from OLD.json  # the same, from that file
    .venv/bin/python benchmarks/estimates.py --calibrate   # factors that fit the stored runs

Results accumulate in benchmarks/results/estimates.json, a record of benchmarks/results.py whose
`results.measurements` hold one entry per profile and dtype (a new measurement replaces the old
one of the same pair), and estimates.md is rendered from it. A re-rendered record (`--report`,
`--render-from`) carries the latest measurement's command, commit, date and processor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, also where another one is installed
sys.path.insert(0, str(REPO / "benchmarks"))
import results as result_file  # noqa: E402  (benchmarks/results.py, beside this script)

RESULTS = REPO / "benchmarks" / "results"
OUT_JSON = RESULTS / "estimates.json"
OUT_MD = RESULTS / "estimates.md"
LONG = 200  # a console line longer than this is not one the project writes


def _label(profile: Path, sets: list[str], only: str | None = None) -> str:
    return profile.stem + (f"-only-{only}" if only else "") + ("-scaled" if sets else "")


def _git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def _env(dtype: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MINITRON_AUTO_DTYPE", None)
    if dtype != "auto":
        env["MINITRON_AUTO_DTYPE"] = dtype
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(args: list[str], env: dict[str, str], log: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "minitron_deploy", *args, "--json"]
    with open(log or os.devnull, "w") as err:
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = r.stdout.strip().splitlines()
    if not lines:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"{shlex.join(cmd)} exited {r.returncode}:\n{tail}")
    out = json.loads(lines[-1])
    out["returncode"] = r.returncode
    return out


def _fresh_probe(dtype: str, size: int = 1024) -> float:
    """The plan's GEMM probe measured now, not from its cache (GFLOP/s, best of 5): beside
    the cached rate the plan used, it shows what the load around the run did to it."""
    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    torch.mm(a, a)
    best = 0.0
    for _ in range(5):
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.02 or reps < 2:
            torch.mm(a, a)
            reps += 1
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def _console_check(log: Path) -> dict:
    """Longest line and the lines over LONG characters of a run's console output (a carriage
    return inside a line counts as part of it, as in a log file)."""
    lines = log.read_text(errors="replace").split("\n")
    long = [ln for ln in lines if len(ln) > LONG]
    return {
        "lines": len(lines),
        "longest": max((len(ln) for ln in lines), default=0),
        "over_200": len(long),
        "over_200_examples": [ln[:160] for ln in long[:3]],
    }


def measure(
    profile: Path,
    dtype: str,
    keep: Path | None = None,
    sets: list[str] = (),
    only: str | None = None,
) -> dict:
    """One plan + run of `profile` in a fresh work folder with `auto` = `dtype`; its console
    output is kept beside the results (`estimates-<profile>-<dtype>.console.log`), and the
    work folder under `keep` when given."""
    env = _env(dtype)
    with tempfile.TemporaryDirectory(prefix="estimates-", dir=keep) as tmp:
        work = Path(tmp) / "work"
        over = [x for kv in sets for x in ("--set", kv)] + (["--only", only] if only else [])
        plan = _cli(["plan", str(profile), "--workdir", str(work), *over], env)
        fresh0 = _fresh_probe(plan["probe"]["dtype"])
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        console = Path(tmp) / "console.log"
        out = _cli(["run", str(profile), "--workdir", str(work), *over], env, console)
        wall = time.perf_counter() - t0
        load1 = os.getloadavg()
        fresh1 = _fresh_probe(plan["probe"]["dtype"])
        record = json.loads((Path(out["run_dir"]) / "run.json").read_text())
        check = _console_check(console)
        tail = console.read_text(errors="replace")[-1500:]
        RESULTS.mkdir(parents=True, exist_ok=True)
        label = _label(profile, sets, only)
        saved = RESULTS / f"estimates-{label}-{record['compute_dtype']}.console.log"
        saved.write_text(console.read_text(errors="replace").replace(tmp, "$WORK"))
        if keep is not None:
            Path(tmp, "KEEP").write_text("kept by benchmarks/estimates.py --keep\n")
            os.rename(tmp, f"{tmp}-kept")
            os.mkdir(tmp)  # for the context manager to remove
    if record["status"] != "ok":
        raise SystemExit(f"{profile.name} ({dtype}) failed: {record.get('error')}\n{tail}")
    said = {r["node"]: r["est_seconds"] for r in plan["plan"]}
    return {
        "profile": str(profile.relative_to(REPO)),
        "set": list(sets),
        "only": only,
        "label": _label(profile, sets, only),
        "dtype_setting": dtype,
        "compute_dtype": record["compute_dtype"],
        "probe": plan.get("probe"),
        "probe_fresh_before_after": [fresh0, fresh1],
        "plan_estimate_line": plan["estimate"],
        "wall_s": round(wall, 1),
        "run_seconds": record["seconds"],
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "stages": [
            {
                "node": s["node"],
                "stage": s["stage"],
                "actual_s": s["seconds"],
                "cpu_s": s.get("cpu_seconds"),
                "cached": bool(s.get("cached")),
                "plan_then_s": said.get(s["node"]),
            }
            for s in record["stages"]
        ],
        "console": check,
        "processor": record["processor"],
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def predictions(m: dict) -> dict[str, tuple[float | None, float | None]]:
    """node -> (seconds predicted by the current factors at the stored probe rate, FLOPs)."""
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.pipeline.stages import estimate
    from minitron_deploy.profile import load_profile

    old = os.environ.get("MINITRON_AUTO_DTYPE")
    if m["dtype_setting"] != "auto":
        os.environ["MINITRON_AUTO_DTYPE"] = m["dtype_setting"]
    try:
        profile = REPO / m["profile"]
        with tempfile.TemporaryDirectory() as tmp:
            pipe = Pipeline(load_profile(profile, m.get("set") or []), Path(tmp), profile)
            selected = {n.id for n in pipe.select(m.get("only"))}
            gflops, dtype = probe_rate(m), m["probe"]["dtype"]
            out, seen = {}, set()
            for node in pipe.nodes:
                if node.id not in selected:
                    continue
                if node.key in seen:  # the same artifact again: cached by then, as plan says
                    out[node.id] = (0.0, 0.0)
                    continue
                seen.add(node.key)
                secs, _, flops = estimate(node, gflops, dtype)
                out[node.id] = (secs, flops)
            return out
    finally:
        if old is None:
            os.environ.pop("MINITRON_AUTO_DTYPE", None)
        else:
            os.environ["MINITRON_AUTO_DTYPE"] = old


def probe_rate(m: dict) -> float:
    """The probe rate predictions use: the one stored with the measurement (the plan's on-CPU
    probe of the measurement's dtype), so a report renders from the stored runs alone, the
    same on any machine."""
    return float(m["probe"]["gflops"])


def _ratio(pred: float | None, actual: float) -> float | None:
    return None if pred is None or actual <= 0 else pred / actual


def _off(r: float | None) -> float:
    return 0.0 if r is None else max(r, 1 / r)


def _threads(m: dict) -> int:
    return int(m["processor"].get("torch_threads") or 1)


def _idle(s: dict, threads: int) -> float | None:
    """A stage's seconds on a machine it had to itself, from its CPU seconds: between CPU
    seconds / threads (every thread busy, as in the probe's GEMM) and CPU seconds (serial);
    this is the middle of that range on a log scale, what the factors are fitted to."""
    return None if s.get("cpu_s") is None else s["cpu_s"] / threads**0.5


def analyse(results: dict) -> dict:
    """Per measurement: per-stage predicted (current factors) vs the idle-machine seconds (CPU
    seconds / threads) and vs the wall seconds under the load there was, with totals."""
    from minitron_deploy.pipeline.estimate import ACCURACY

    rows = []
    for m in results["measurements"]:
        pred = predictions(m)
        th = _threads(m)
        stages = []
        for s in m["stages"]:
            p, flops = pred.get(s["node"], (None, None))
            idle = _idle(s, th)
            stages.append(
                {
                    **s,
                    "predicted_s": p,
                    "flops": flops,
                    "idle_s": idle,
                    "ratio_idle": None if idle is None else _ratio(p, idle),
                    "ratio_wall": _ratio(p, s["actual_s"]),
                }
            )
        total_p = sum(s["predicted_s"] or 0 for s in stages)
        total_w = sum(s["actual_s"] for s in stages)
        has_cpu = all(s["idle_s"] is not None for s in stages)
        total_i = sum(s["idle_s"] for s in stages) if has_cpu else None
        total_cpu = sum(s["cpu_s"] for s in stages) if has_cpu else None
        # the idle total lies between CPU s / threads and CPU s: off by the worse end
        ends = (total_cpu / th, total_cpu) if has_cpu else None
        off = max(_off(_ratio(total_p, e)) for e in ends) if ends else None
        big = [s for s in stages if (s["idle_s"] or 0) >= 20 or (s["predicted_s"] or 0) >= 20]
        rows.append(
            {
                "measurement": m,
                "stages": stages,
                "predicted_total_s": total_p,
                "wall_total_s": total_w,
                "idle_total_s": total_i,
                "plan_then_total_s": sum(s["plan_then_s"] or 0 for s in m["stages"]),
                "ratio_idle": None if total_i is None else _ratio(total_p, total_i),
                "idle_range_s": ends,
                "off_range": off,
                "ratio_wall": _ratio(total_p, total_w),
                "worst_stage_off_20s": max((_off(s["ratio_idle"]) for s in big), default=0.0),
            }
        )
    worst = max((r["off_range"] for r in rows if r["off_range"] is not None), default=0.0)
    return {"rows": rows, "accuracy_stated": ACCURACY, "worst_total_off": worst}


def quiet(m: dict) -> bool:
    """The run had the machine to itself, as far as its numbers tell: its wall time lies inside
    its idle range (CPU seconds / threads .. CPU seconds). Then its stages' wall seconds are
    what a user's idle machine sees; a loaded run's are not (its CPU seconds are used)."""
    cpu = [s["cpu_s"] for s in m["stages"] if s.get("cpu_s") is not None]
    return bool(cpu) and sum(cpu) / _threads(m) <= m["run_seconds"] <= sum(cpu)


def _fit_s(s: dict, m: dict) -> float | None:
    """The seconds the factors are fitted to: a quiet run's stage wall seconds, else the
    middle of the idle range (`_idle`)."""
    return s.get("actual_s") if quiet(m) else _idle(s, _threads(m))


def calibrate(results: dict) -> dict:
    """Factors that fit the stored runs' seconds (`_fit_s`: a quiet run's wall seconds, a
    loaded one's CPU s / sqrt(threads)): fixed seconds per stage (median over the tiny
    profile's nodes of the stage), then per dtype and stage the median share of the probe rate
    over the nodes whose work is at least 5 s."""
    from minitron_deploy.pipeline.estimate import FIXED_S

    fixed: dict[str, list[float]] = {}
    shares: dict[str, dict[str, list[float]]] = {}
    per = [(m, predictions(m)) for m in results["measurements"]]
    for m, _ in per:
        if "ci-tiny" in m["profile"]:
            for s in m["stages"]:
                if not s.get("cached") and _fit_s(s, m) is not None:
                    fixed.setdefault(s["stage"], []).append(_fit_s(s, m))
    # the mean, not the median: a plan's total is a sum, and the first stage of a kind pays
    # the library imports (the first export ~4-7 s, the rest ~0.3 s)
    fit_fixed = {k: round(statistics.fmean(v), 1) for k, v in fixed.items()}
    for m, pred in per:
        gflops, dtype = probe_rate(m), m["probe"]["dtype"]
        for s in m["stages"]:
            flops = pred.get(s["node"], (None, None))[1]
            idle = _fit_s(s, m)
            if idle is None or not flops:
                continue
            work = idle - fit_fixed.get(s["stage"], FIXED_S.get(s["stage"], 1))
            if work >= 5:
                shares.setdefault(dtype, {}).setdefault(s["stage"], []).append(
                    flops / (work * gflops * 1e9)
                )
    from minitron_deploy.pipeline.estimate import PREPARE_CHARS_PER_S

    rates = []  # data: characters per idle second, the characters backed out of the prediction
    for m, pred in per:
        for s in m["stages"]:
            secs, idle = pred.get(s["node"], (None, None))[0], _fit_s(s, m)
            if s["stage"] == "data" and secs and idle and not s.get("cached"):
                chars = (secs - FIXED_S["data"]) * PREPARE_CHARS_PER_S
                if idle > FIXED_S["data"] + 5:
                    rates.append(chars / (idle - FIXED_S["data"]))
    return {
        "fixed_s": fit_fixed,
        "prepare_chars_per_s": round(statistics.median(rates), -4) if rates else None,
        "efficiency": {
            d: {k: round(statistics.median(v), 3) for k, v in st.items()}
            for d, st in shares.items()
        },
    }


def _clock(s: float | None) -> str:
    if s is None:
        return "?"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}:{sec:02d}"


def _f(x: float | None, spec: str = ".2f") -> str:
    return "?" if x is None else format(x, spec)


EXPLAINED = (
    "Each measurement: `plan --json` then `run --json` of the profile in a fresh work "
    "folder, nothing cached. `predicted` = the current factors of "
    "`minitron_deploy/pipeline/estimate.py` at this machine's on-CPU probe rate; "
    "`plan then` = what plan printed at the time (the code of that commit). dtype "
    "`float32` is forced with `MINITRON_AUTO_DTYPE=float32` on this bf16-native host, the "
    "choice an AVX2-only host's `auto` makes (its probe and factors are float32's; the "
    "processor is still this one). The machine was shared by several jobs (load average "
    "around each run in the table, on 2 cores): the wall seconds are those of a loaded machine, "
    "so a run's seconds on a machine it has to itself lie between its CPU seconds / torch "
    "threads (every thread busy) and its CPU seconds (serial): the `idle range`; the "
    "factors are fitted to its middle on a log scale (CPU s / sqrt(threads), `idle s` per "
    "stage), and the probe is the on-CPU rate (FLOPs per CPU second x threads). The stated "
    "accuracy must hold against both ends of each run's idle range (`off`: the worse "
    "ratio); `predicted/wall` shows what the load did. Caveat: under heavy load the CPU "
    "seconds of multi-threaded work include threads spinning while their partner waits for "
    "a core (a demo distillation step took 73 CPU s at load ~12, ~1.5 s at the 334 "
    "tokens/s of an idle run), so the idle range is then too high for GEMM-heavy stages; "
    "ci-tiny is mostly serial Python."
)


def _summary(a: dict) -> dict:
    return {
        "accuracy_stated": a["accuracy_stated"],
        "worst_total_off": round(a["worst_total_off"], 3),
        "totals": [
            {
                "profile": r["measurement"]["profile"],
                "dtype": r["measurement"]["compute_dtype"],
                "predicted_s": round(r["predicted_total_s"], 1),
                "idle_s": None if r["idle_total_s"] is None else round(r["idle_total_s"], 1),
                "wall_s": round(r["wall_total_s"], 1),
                "ratio_idle": None if r["ratio_idle"] is None else round(r["ratio_idle"], 3),
            }
            for r in a["rows"]
        ],
    }


def build_record(measured: dict, argv: list[str] | None = None) -> dict:
    """The result record (benchmarks/results.py) of the stored measurements: each one kept
    whole in `results`, with the summary; the totals table and one table per measurement, as
    printed. The provenance of each measurement is in its table's note."""
    a = analyse(measured)
    main_rows = []
    for r in a["rows"]:
        m = r["measurement"]
        c = m["console"]
        idle = r["idle_range_s"]
        main_rows.append(
            [
                m.get("label", Path(m["profile"]).stem),
                m["compute_dtype"],
                f"{probe_rate(m):.1f}",
                _clock(r["predicted_total_s"]),
                _clock(r["plan_then_total_s"]),
                f"{_clock(idle[0])}-{_clock(idle[1])}" if idle else "?",
                _clock(r["wall_total_s"]),
                f"{_f(r['off_range'])}x",
                _f(r["ratio_wall"]),
                f"{r['worst_stage_off_20s']:.2f}x",
                f"{m['loadavg_before'][0]} / {m['loadavg_after'][0]}",
                f"{c['longest']}, {c['over_200']}",
            ]
        )
    tables = {
        "main": {"title": "Per profile and dtype: totals"}
        | result_file.table(
            [
                "profile",
                "dtype",
                "probe GFLOP/s",
                "predicted",
                "plan then",
                "idle range",
                "wall",
                "off (worse end)",
                "predicted/wall",
                "worst stage >= 20 s (vs idle s)",
                "load avg before/after",
                "console: longest line, lines > 200",
            ],
            main_rows,
            ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "l", "l"],
        )  # fmt: skip
    }
    keep = (0, 1, 2, 3, 5, 6, 7, 10)  # the columns the README quotes
    tables["totals"] = {"title": "Totals (the README's table)"} | result_file.table(
        [tables["main"]["columns"][i] for i in keep],
        [[row[i] for i in keep] for row in main_rows],
        [tables["main"]["align"][i] for i in keep],
    )
    holds = a["worst_total_off"] <= a["accuracy_stated"]
    notes = [
        f'Stated accuracy (plan: "within about {a["accuracy_stated"]:g}x"): worst total '
        f"measured {a['worst_total_off']:.2f}x off the far end of a run's idle range -> "
        + ("**holds**." if holds else "**does not hold**."),
        EXPLAINED,
    ]
    for r in a["rows"]:
        m = r["measurement"]
        label = f"{m.get('label', Path(m['profile']).stem)}, {m['compute_dtype']}"
        fresh = m.get("probe_fresh_before_after")
        tables[label.replace(", ", "-")] = {"title": label} | result_file.table(
            ["stage", "GFLOP", "predicted s", "plan then s", "idle s", "wall s",
             "predicted/idle"],
            [
                [f"{s['node']}{' (cached)' if s.get('cached') else ''}",
                 "-" if not s["flops"] else f"{s['flops'] / 1e9:,.0f}",
                 _f(s["predicted_s"], ".1f"), _f(s["plan_then_s"], ".1f"),
                 _f(s["idle_s"], ".1f"), f"{s['actual_s']:.1f}", _f(s["ratio_idle"])]
                for s in r["stages"]
            ],
            ["l", "r", "r", "r", "r", "r", "r"],
        )  # fmt: skip
        notes.append(
            f"{label}: {m['processor']['summary']}; torch threads {_threads(m)}; "
            f"commit `{m['git_commit'][:10]}`; {m['date']}; run {m['run_seconds']:.0f} s; "
            f"`{m['command']}`; plan then: {m['plan_estimate_line']}; "
            f"probe rate (on-CPU, cached): {probe_rate(m):.1f} GFLOP/s; the plan then used "
            f"{m['probe']['gflops']:.1f}"
            + "; wall-clock rate measured afresh just before / after the run: "
            + (" / ".join(f"{x:.1f}" for x in fresh) if fresh else "not measured")
            + f"; load average (1/5/15 min) before {m['loadavg_before']}, after "
            f"{m['loadavg_after']}"
            + (f"; profile overrides: `{' '.join(m['set'])}`" if m.get("set") else "")
            + (f"; `--only {m['only']}`" if m.get("only") else "")
            + f"; console log: benchmarks/results/estimates-{label.replace(', ', '-')}"
            ".console.log"
        )
    ms = measured["measurements"]
    return result_file.record(
        "estimates",
        title="Plan's time estimate vs the run (benchmarks/estimates.py)",
        results={"measurements": ms, "summary": _summary(a)},
        dtype=",".join(dict.fromkeys(m["compute_dtype"] for m in ms)) or None,
        threads=max((_threads(m) for m in ms), default=None),
        tables=tables,
        notes=notes,
        argv=argv,
    )


def _stored(path: Path = OUT_JSON) -> dict:
    """The measurements of a result file: a record, or this script's older form of it."""
    if not path.is_file():
        return {"measurements": []}
    data = json.loads(path.read_text())
    return data["results"] if "results" in data and "tables" in data else data


def _rendered(measured: dict, source: Path, argv: list[str]) -> dict:
    """The record re-rendered from stored measurements (no new one): the provenance is the
    latest measurement's, with a note saying when and by what it was re-rendered."""
    rec = build_record(measured, argv)
    if not measured["measurements"]:
        return rec
    last = max(measured["measurements"], key=lambda m: m["date"])
    return result_file.rerendered(rec, last, source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", type=Path, default=[])
    ap.add_argument("--dtype", action="append", choices=["auto", "bfloat16", "float32"], default=[])
    ap.add_argument("--report", action="store_true", help="only re-render from stored runs")
    ap.add_argument("--keep", type=Path, help="keep each run's work folder under this folder")
    ap.add_argument("--only", metavar="VARIANT", help="plan and run only this variant")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile field for plan and run (the measurement is labelled scaled)",
    )
    ap.add_argument("--calibrate", action="store_true", help="print factors that fit")
    result_file.add_render_from(ap, "estimates.json and .md")
    args = ap.parse_args(argv)
    this_argv = [__file__, *(sys.argv[1:] if argv is None else argv)]
    results = _stored()
    if args.calibrate:
        print(json.dumps(calibrate(results), indent=1))
        return 0
    if args.report or args.render_from:
        src = (args.render_from or OUT_JSON).resolve()
        result_file.write(_rendered(_stored(src), src, this_argv))
        print(OUT_MD.read_text())
        return 0
    for profile in args.profile or [REPO / "profiles" / "ci-tiny.yaml"]:
        profile = profile.resolve()
        for dtype in args.dtype or ["auto"]:
            print(f"measuring {profile.name} with auto = {dtype} ...", flush=True)
            m = measure(profile, dtype, args.keep, args.set, args.only)
            results = _stored()  # as it is now: another measurement may have ended meanwhile
            results["measurements"] = [
                x
                for x in results["measurements"]
                if (x.get("label", Path(x["profile"]).stem), x["compute_dtype"])
                != (m["label"], m["compute_dtype"])
            ] + [m]
            # after each: a long session keeps what it measured; the record's provenance is
            # the latest measurement's, as `--report` renders it
            result_file.write(_rendered(results, OUT_JSON, this_argv))
    print(OUT_MD.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
