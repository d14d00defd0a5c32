"""`minitron-deploy importance`: activation importance scores (+ optional sensitivity table)."""

from __future__ import annotations

import argparse

NAME = "importance"
HELP = "Score heads, KV groups, MLP neurons, embedding channels and layers on calibration data."


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF Llama checkpoint folder")
    p.add_argument("--data", required=True, help="data source (path or builtin:python-stdlib)")
    p.add_argument(
        "--out", required=True, help="output folder for scores.safetensors + scores.json"
    )
    p.add_argument("--num-samples", type=int, default=1024, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-agg", choices=["l2", "mean", "var"], default="l2")
    p.add_argument("--seq-agg", choices=["mean", "l2", "var"], default="mean")
    p.add_argument(
        "--mlp-activation",
        choices=["pre", "down_input"],
        default="pre",
        help="pre: gate_proj output (paper); down_input: silu(gate)*up (reference code)",
    )
    p.add_argument("--include-final-norm", action="store_true", help="score the final norm too")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per forward call")
    p.add_argument("--dtype", default="float32", help="compute dtype (float32, bfloat16)")
    p.add_argument(
        "--layer-loss-blocks",
        type=_ints,
        default=(),
        metavar="K[,K]",
        help="also rank layers by validation loss with each block of K layers dropped",
    )
    p.add_argument("--val-samples", type=int, default=64, help="validation sequences")
    p.add_argument("--sensitivity", action="store_true", help="zero-shot sensitivity table")
    p.add_argument("--sensitivity-ratios", type=_floats, default=(0.75, 0.5), metavar="R[,R]")
    p.add_argument(
        "--sensitivity-layer-metric",
        choices=["block_loss", "single_loss", "block_importance"],
        default="block_importance",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from pydantic import ValidationError

    from minitron_deploy.console import info, print_json
    from minitron_deploy.data import token_sequences
    from minitron_deploy.errors import InputError
    from minitron_deploy.fsutil import sha256_tree
    from minitron_deploy.importance import (
        ImportanceConfig,
        compute_importance,
        save_scores,
        summarize,
    )
    from minitron_deploy.model.io import PROVENANCE, load_llama, load_tokenizer, read_config

    try:
        cfg = ImportanceConfig(
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            seed=args.seed,
            batch_agg=args.batch_agg,
            seq_agg=args.seq_agg,
            mlp_activation=args.mlp_activation,
            include_final_norm=args.include_final_norm,
            micro_batch=args.micro_batch,
            layer_loss_blocks=args.layer_loss_blocks,
            val_samples=args.val_samples,
        )
    except ValidationError as e:
        raise InputError(f"invalid importance options: {e.errors()[0]['msg']}") from e
    read_config(args.model)
    out = Path(args.out)  # fail before the (long) pass, not after it
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(
            f"output folder {out} already exists and is not empty",
            fix="remove it, choose another --out, or pass --overwrite",
        )
    tok = load_tokenizer(args.model)
    calib = token_sequences(
        tok,
        args.data,
        split="train",
        num_samples=cfg.num_samples,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
    )
    need_val = bool(cfg.layer_loss_blocks) or args.sensitivity
    val = (
        token_sequences(
            tok,
            args.data,
            split="validation",
            num_samples=cfg.val_samples,
            seq_len=cfg.seq_len,
            seed=cfg.seed,
        )
        if need_val
        else None
    )
    model = load_llama(args.model, dtype=args.dtype)
    info(f"importance over {calib.shape[0]}x{calib.shape[1]} tokens of {args.data}")
    t0 = time.perf_counter()
    scores = compute_importance(model, calib, cfg, val_batches=val, progress=True)
    seconds = time.perf_counter() - t0
    meta = {
        "model": {
            "path": str(args.model),
            "sha256": sha256_tree(args.model, exclude=(PROVENANCE,)),
        },
        "data": args.data,
        "samples": int(calib.shape[0]),
        "seq_len": int(calib.shape[1]),
        "val_samples": int(val.shape[0]) if val is not None else 0,
        "dtype": args.dtype,
        "config": cfg.model_dump(mode="json"),
        "seconds": round(seconds, 2),
        "command": " ".join(sys.argv),
    }
    extra = {}
    if args.sensitivity:
        from rich.console import Console

        from minitron_deploy.sensitivity import render_table, sensitivity_report

        report = sensitivity_report(
            model,
            scores,
            val,
            args.sensitivity_ratios,
            layer_metric=args.sensitivity_layer_metric,
            micro_batch=cfg.micro_batch,
            progress=True,
        )
        extra["sensitivity.json"] = report
        Console().print(render_table(report))
    save_scores(scores, out, meta, overwrite=args.overwrite, extra=extra)
    info(f"wrote scores to {out} in {seconds:.1f}s")
    if args.json:
        print_json(
            {
                "out": str(out),
                "seconds": seconds,
                **summarize(scores),
                **({"sensitivity": extra["sensitivity.json"]} if extra else {}),
            }
        )
    return 0
