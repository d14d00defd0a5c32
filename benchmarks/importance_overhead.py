"""Cost of the importance pass relative to a plain forward over the same tokens.

Variants, interleaved in one process and repeated (medians reported):
    lm_forward    model(input_ids)               -- a plain forward with logits
    base_forward  model.model(input_ids)         -- the decoder alone, no hooks
    importance    compute_importance(model, ids) -- the decoder with all scoring hooks

`importance` skips lm_head (scores need no logits), so `ratio_vs_lm_forward` is the cost a user
sees, and `ratio_vs_base_forward` isolates the hooks' own overhead. Target: <= 1.15x.

    .venv/bin/python benchmarks/importance_overhead.py            # SmolLM2-135M, 4x512, 5 reps
    .venv/bin/python benchmarks/importance_overhead.py --model tiny --samples 8 --seq-len 128

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="folder, smollm2-135m or tiny")
    ap.add_argument("--data", default="builtin:python-stdlib")
    ap.add_argument("--samples", type=int, default=4, help="sequences per timed pass")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each variant")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mlp-activation", default="pre", choices=["pre", "down_input"])
    args = ap.parse_args()

    import torch

    from minitron_deploy.compress.config import ImportanceConfig
    from minitron_deploy.compress.importance import compute_importance

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "tiny":
        from minitron_deploy.testing import tiny_llama

        model = tiny_llama(0)
        ids = torch.randint(0, model.config.vocab_size, (args.samples, args.seq_len))
        name = "tiny-llama"
    else:
        from minitron_deploy.data.refs import DataRef, load_tokens
        from minitron_deploy.model.io import load_llama
        from minitron_deploy.model.teacher import builtin_model

        path = builtin_model(args.model) if args.model == "smollm2-135m" else Path(args.model)
        model = load_llama(path, dtype=args.dtype)
        ids = load_tokens(
            path, DataRef(source=args.data), num_samples=args.samples, seq_len=args.seq_len
        )
        name = str(args.model)
    cfg = ImportanceConfig(micro_batch=args.micro_batch, mlp_activation=args.mlp_activation)
    chunks = ids.split(args.micro_batch)

    def lm_forward() -> None:
        with torch.inference_mode():
            for c in chunks:
                model(input_ids=c, use_cache=False)

    def base_forward() -> None:
        with torch.inference_mode():
            for c in chunks:
                model.model(input_ids=c, use_cache=False)

    def importance() -> None:
        compute_importance(model, ids, cfg)

    variants = {"lm_forward": lm_forward, "base_forward": base_forward, "importance": importance}
    for fn in variants.values():  # warm-up, not timed
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.reps):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            t0 = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # Load from other processes drifts; ratios of runs made back to back are steadier.
    pair = {
        b: statistics.median(i / x for i, x in zip(times["importance"], times[b], strict=True))
        for b in ("lm_forward", "base_forward")
    }
    tokens = ids.numel()
    res = {
        "model": name,
        "tokens_per_pass": tokens,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in med.items()},
        "ratio_vs_lm_forward": round(med["importance"] / med["lm_forward"], 4),
        "ratio_vs_base_forward": round(med["importance"] / med["base_forward"], 4),
        "paired_ratio_vs_lm_forward": round(pair["lm_forward"], 4),
        "paired_ratio_vs_base_forward": round(pair["base_forward"], 4),
        "target": 1.15,
    }
    for k in variants:
        print(f"{k:13s} median {med[k]:.3f}s  ({tokens / med[k]:.0f} tok/s)  all {times[k]}")
    print(
        f"importance / lm_forward = {res['ratio_vs_lm_forward']:.3f}x; "
        f"importance / base_forward = {res['ratio_vs_base_forward']:.3f}x (target <= 1.15x)"
    )
    print(
        f"paired medians: vs lm_forward {pair['lm_forward']:.3f}x, "
        f"vs base_forward {pair['base_forward']:.3f}x"
    )
    from minitron_deploy.hardware import processor

    res["processor"] = processor()
    print(f"processor: {res['processor']['summary']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
