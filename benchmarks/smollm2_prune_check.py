"""Real-model check: SmolLM2-135M importance, width and depth pruning vs random slicing.

Steps: importance over `--samples` x `--seq-len` calibration tokens (timed, extrapolated to
1024 x 512), a determinism check (two passes over the first `--det-samples` sequences must be
bitwise equal), then zero-shot validation loss of
    width: hidden 384 / FFN 1024 / 6 heads (3 KV groups kept), by importance and at random
    depth: 15 of 30 layers, by block_loss (P2), by block importance, and at random
each over `--val-samples` x `--seq-len` validation tokens.

    .venv/bin/python benchmarks/smollm2_prune_check.py                   # ~15-30 min on 2 cores
    .venv/bin/python benchmarks/smollm2_prune_check.py --samples 1024    # the full calibration

Every result is also appended to `--log` as it arrives; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin:python-stdlib")
    ap.add_argument("--samples", type=int, default=64, help="calibration sequences")
    ap.add_argument(
        "--det-samples", type=int, default=8, help="sequences for the determinism check"
    )
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--val-samples", type=int, default=64, help="validation sequences for eval")
    ap.add_argument(
        "--rank-samples", type=int, default=8, help="validation sequences for block_loss"
    )
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--log", default="smollm2_prune_check.jsonl")
    args = ap.parse_args()

    import torch

    from minitron_deploy.compress.config import ImportanceConfig, PruneConfig
    from minitron_deploy.compress.importance import compute_importance
    from minitron_deploy.compress.layers import layer_loss_ranking
    from minitron_deploy.compress.slicing import prune_model
    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.evaluation.loss import evaluate_loss
    from minitron_deploy.model.io import load_llama
    from minitron_deploy.model.teacher import builtin_model

    results: dict = {"threads": torch.get_num_threads()}

    def log(key: str, value) -> None:
        results[key] = value
        with open(args.log, "a") as f:
            f.write(json.dumps({key: value}) + "\n")
        print(f"{key}: {value}", flush=True)

    path = builtin_model("smollm2-135m")
    model = load_llama(path, dtype="float32")
    calib = load_tokens(
        path, DataRef(source=args.data), num_samples=args.samples, seq_len=args.seq_len
    )
    val = load_tokens(
        path,
        DataRef(source=args.data, split="validation"),
        num_samples=args.val_samples,
        seq_len=args.seq_len,
    )
    cfg = ImportanceConfig(micro_batch=args.micro_batch)

    t0 = time.perf_counter()
    scores = compute_importance(model, calib, cfg)
    sec = time.perf_counter() - t0
    tokens = calib.numel()
    log(
        "importance",
        {
            "samples": int(calib.shape[0]),
            "seq_len": int(calib.shape[1]),
            "seconds": round(sec, 1),
            "tokens_per_s": round(tokens / sec, 1),
            "extrapolated_1024x512_s": round(1024 * 512 / (tokens / sec), 0),
        },
    )
    a = compute_importance(model, calib[: args.det_samples], cfg)
    b = compute_importance(model, calib[: args.det_samples], cfg)
    log("deterministic", all(torch.equal(a[k], b[k]) for k in a))

    def ev(name: str, m) -> None:
        t = time.perf_counter()
        r = evaluate_loss(m, val, args.micro_batch)
        log(
            f"eval_{name}",
            {
                "loss": round(r["loss"], 4),
                "ppl": round(r["ppl"], 2),
                "tokens": r["tokens"],
                "params": m.num_parameters(),
                "seconds": round(time.perf_counter() - t, 1),
            },
        )

    ev("base", model)
    width = dict(hidden_size=384, intermediate_size=1024, num_attention_heads=6)
    for sel in ("importance", "random"):
        m, _ = prune_model(model, scores, PruneConfig(**width, selection=sel))
        ev(f"width_{sel}", m)
        del m
    rank = val[: args.rank_samples]
    t = time.perf_counter()
    losses = layer_loss_ranking(model, rank, (15,), args.micro_batch)
    scores.update(losses)
    log(
        "block15_losses",
        {
            "by_start": [round(float(x), 3) for x in losses["layer_loss_drop15"]],
            "seconds": round(time.perf_counter() - t, 1),
        },
    )
    for name, c in (
        ("block_loss", PruneConfig(num_layers=15)),
        ("block_importance", PruneConfig(num_layers=15, layer_metric="block_importance")),
        ("random", PruneConfig(num_layers=15, selection="random")),
    ):
        m, rec = prune_model(model, scores, c)
        log(f"depth_{name}_dropped", rec["dropped_layers"])
        ev(f"depth_{name}", m)
        del m
    from minitron_deploy.hardware import processor

    results["processor"] = processor()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
