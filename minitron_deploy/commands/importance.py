"""`minitron-deploy importance`: activation importance scores (+ optional sensitivity table)."""

from __future__ import annotations

import argparse

NAME = "importance"
HELP = "Score heads, KV groups, MLP neurons, embedding channels and layers on calibration data."


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from minitron_deploy.cliopts import add_options
    from minitron_deploy.compress.config import ImportanceConfig
    from minitron_deploy.compress.layers import DEPTH_METRICS

    p.add_argument("--model", required=True, help="HF Llama checkpoint folder")
    p.add_argument("--data", required=True, help="text source (path or builtin:python-stdlib)")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --data held out (default 0.05)"
    )
    p.add_argument(
        "--out", required=True, help="output folder for scores.safetensors + scores.json"
    )
    add_options(p.add_argument_group("importance settings (ImportanceConfig)"), ImportanceConfig)
    p.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype: auto (bf16 where the CPU/GPU has it natively, else float32), "
        "float32, bfloat16",
    )
    s = p.add_argument_group("sensitivity")
    s.add_argument("--sensitivity", action="store_true", help="zero-shot sensitivity table")
    s.add_argument("--sensitivity-ratios", type=_floats, default=(0.75, 0.5), metavar="R[,R]")
    s.add_argument(
        "--sensitivity-layer-metric",
        choices=[m.name for m in DEPTH_METRICS.values() if m.reads != "task"],
        default="block_importance",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from minitron_deploy.cliopts import build
    from minitron_deploy.compress.config import ImportanceConfig
    from minitron_deploy.data.refs import DataRef, check_source
    from minitron_deploy.fsutil import check_output_dir
    from minitron_deploy.model.io import read_config

    cfg = build(ImportanceConfig, args, what="invalid importance settings")
    read_config(args.model)
    out = check_output_dir(args.out, overwrite=args.overwrite)  # before the (long) pass
    calib_ref = DataRef(source=args.data, split="train", val_fraction=args.val_fraction)
    val_ref = DataRef(source=args.data, split="validation", val_fraction=args.val_fraction)
    need_val = bool(cfg.layer_loss_blocks) or args.sensitivity
    check_source(calib_ref)
    if need_val:
        check_source(val_ref)

    from minitron_deploy.compress.importance import score_checkpoint
    from minitron_deploy.compress.scores import save_scores, summarize
    from minitron_deploy.console import info, print_json
    from minitron_deploy.data.refs import open_split

    info(f"importance over {cfg.num_samples}x{cfg.seq_len} tokens of {args.data}")
    res = score_checkpoint(
        args.model,
        open_split(calib_ref, args.model),
        cfg,
        validation=open_split(val_ref, args.model) if need_val else None,
        dtype=args.dtype,
        keep_model=args.sensitivity,
        progress=True,
        command=" ".join(sys.argv),
    )
    scores, meta, model, val = res.scores, res.meta, res.model, res.val
    seconds = meta["seconds"]
    extra = {}
    if args.sensitivity:
        from rich.console import Console

        from minitron_deploy.compress.sensitivity import render_table, sensitivity_report

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
        Console(stderr=True).print(render_table(report))
    save_scores(scores, Path(out), meta, overwrite=args.overwrite, extra=extra)
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
