"""float32 vs bfloat16 on this CPU: GEMMs and the built-in engine, and whether `auto` picked the
faster one.

On CPUs with AVX512-BF16 or AMX, bf16 GEMMs run natively; on AVX2-only CPUs (AMD Zen 2/3, older
Intel) torch emulates them and they are 10-90x slower than float32. `dtype: auto`
(`minitron_deploy.hardware.compute_dtype`) must pick the faster one on the host it runs on.

Measured in one process, variants interleaved, after a warm-up; medians of `--repeats`:
  - torch.mm at 512 x 512 and at a decode shape (batch x hidden -> 3 x FFN of SmolLM2-135M);
  - the built-in engine on SmolLM2-135M (`--random-weights`: same shapes, no GGUF needed) at
    `--batch`, ISL/OSL `--isl`/`--osl`, in float32 and in bfloat16 (auto is one of the two).
Prints the processor and ends with one JSON line; writes benchmarks/results/cpu_dtype.json and
its .md (`--no-write`: neither). The README's compute-dtype table is that file's `main` table.

    .venv/bin/python benchmarks/cpu_dtype.py [--repeats 3] [--random-weights]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def gemm_gflops(m: int, k: int, n: int, dtypes: list[str], repeats: int) -> dict[str, float]:
    """GFLOP/s of an [m, k] x [k, n] product per dtype (interleaved, median)."""
    import torch

    a = {d: torch.randn(m, k).to(getattr(torch, d)) for d in dtypes}
    b = {d: torch.randn(k, n).to(getattr(torch, d)) for d in dtypes}
    times: dict[str, list[float]] = {d: [] for d in dtypes}
    for d in dtypes:  # warm-up
        torch.mm(a[d], b[d])
    for _ in range(repeats):
        for d in dtypes:
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - t0 < 0.2:
                torch.mm(a[d], b[d])
                reps += 1
            times[d].append((time.perf_counter() - t0) / reps)
    return {d: 2 * m * k * n / statistics.median(t) / 1e9 for d, t in times.items()}


def engine_rounds(
    model: Path, dtypes: list[str], batch: int, isl: int, osl: int, repeats: int
) -> dict[str, list[float]]:
    """Output tokens/s of the built-in engine per dtype and round (interleaved, after a warm-up)."""
    from minitron_deploy.engines import get_engine
    from minitron_deploy.engines.trtllm import synthetic_rows

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    ids = synthetic_rows(isl, batch, vocab, seed=0)
    engines = {d: get_engine("torch", model, dtype=d) for d in dtypes}
    rates: dict[str, list[float]] = {d: [] for d in dtypes}
    for e in engines.values():
        e.generate(ids, osl, ignore_eos=True)  # warm-up
    for _ in range(repeats):
        for d, e in engines.items():
            t0 = time.perf_counter()
            e.generate(ids, osl, ignore_eos=True)
            rates[d].append(batch * osl / (time.perf_counter() - t0))
    for e in engines.values():
        e.close()
    return rates


def engine_tok_s(model: Path, dtypes: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Median output tokens/s of the built-in engine per dtype."""
    rates = engine_rounds(model, dtypes, args.batch, args.isl, args.osl, args.repeats)
    return {d: statistics.median(r) for d, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--isl", type=int, default=16)
    p.add_argument("--osl", type=int, default=8)
    p.add_argument("--model", default="smollm2-135m", help="checkpoint folder or built-in name")
    p.add_argument("--random-weights", action="store_true", help="SmolLM2 shapes, random weights")
    p.add_argument("--skip-engine", action="store_true", help="GEMMs only")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)

    import torch

    from minitron_deploy.hardware import auto_dtype_name, processor

    dtypes = ["float32", "bfloat16"]
    auto = auto_dtype_name("cpu")
    proc = processor()
    print(f"processor: {proc['summary']}")
    print(f"dtype auto resolves to: {auto}")
    result: dict = {"processor": proc, "auto": auto, "threads": torch.get_num_threads()}
    result["gemm_512"] = gemm_gflops(512, 512, 512, dtypes, args.repeats)
    result["gemm_decode"] = gemm_gflops(args.batch, 576, 3 * 1536, dtypes, args.repeats)
    for name in ("gemm_512", "gemm_decode"):
        r = result[name]
        print(
            f"{name}: float32 {r['float32']:.1f} GFLOP/s, bfloat16 {r['bfloat16']:.1f} GFLOP/s "
            f"(bf16/fp32 = {r['bfloat16'] / r['float32']:.3f})"
        )
    measured = result["gemm_512"]
    if not args.skip_engine:
        with tempfile.TemporaryDirectory() as tmp:
            if args.random_weights:
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from engine_speed import random_checkpoint

                model = random_checkpoint(Path(tmp) / "random")
            else:
                from minitron_deploy.commands.bench import parse_models

                ((_, model),) = parse_models([args.model])
            tok = engine_tok_s(model, dtypes, args)
        result["engine_tok_s"] = tok
        print(
            f"engine (batch {args.batch}, {args.isl}/{args.osl}): float32 {tok['float32']:.1f} "
            f"tok/s, bfloat16 {tok['bfloat16']:.1f} tok/s "
            f"(bf16/fp32 = {tok['bfloat16'] / tok['float32']:.3f})"
        )
        measured = tok
    fastest = max(measured, key=measured.get)
    result["fastest"] = fastest
    result["auto_vs_fastest"] = measured[auto] / measured[fastest]
    result["auto_ok"] = result["auto_vs_fastest"] >= 0.9
    print(
        f"fastest here: {fastest}; auto ({auto}) reaches {result['auto_vs_fastest']:.2f}x of it "
        f"-> {'ok' if result['auto_ok'] else 'WRONG CHOICE'} (goal: >= 0.90x)"
    )
    print(json.dumps(result))
    if not args.no_write:
        write_result(result, args, argv)
    return 0 if result["auto_ok"] else 1


def write_result(result: dict, args: argparse.Namespace, argv: list[str] | None) -> None:
    """benchmarks/results/cpu_dtype.json + .md, with the README's table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import results

    proc = result["processor"]
    g5, gd = result["gemm_512"], result["gemm_decode"]
    tok = result.get("engine_tok_s")
    slower = g5["float32"] / g5["bfloat16"]
    rel = f"bf16 {slower:.1f}x slower" if slower >= 1 else f"bf16 {1 / slower:.1f}x faster"
    native = "yes" if "bfloat16" in proc.get("native_dtypes", []) else "no"
    row = [
        f"{proc['model']} ({proc['capability']}; native bf16 {native})",
        result["auto"],
        f"{g5['float32']:.1f} / {g5['bfloat16']:.1f} ({rel})",
        f"{gd['float32']:.1f} / {gd['bfloat16']:.1f}",
        f"{tok['float32']:.1f} / {tok['bfloat16']:.1f}" if tok else "not run",
        f"{result['auto_vs_fastest']:.2f}x",
    ]
    table = results.table(
        [
            "processor",
            "dtype auto",
            "GEMM 512³ fp32 / bf16 GFLOP/s",
            f"decode GEMM ({args.batch} x 576 x 4608) fp32 / bf16",
            "engine tok/s fp32 / bf16",
            "auto vs the faster",
        ],
        [row],
    )
    rec = results.record(
        "cpu_dtype",
        title="float32 vs bfloat16 on this CPU",
        results=result | {"batch": args.batch, "isl": args.isl, "osl": args.osl},
        dtype=f"float32 and bfloat16 (auto = {result['auto']})",
        threads=result["threads"],
        tables={"main": table},
        notes=[
            f"SmolLM2-135M built-in engine, batch {args.batch}, ISL/OSL {args.isl}/{args.osl}; "
            f"medians of {args.repeats} interleaved repeats after a warm-up"
        ],
        argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
    )
    results.write(rec)


if __name__ == "__main__":
    raise SystemExit(main())
