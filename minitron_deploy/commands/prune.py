"""`minitron-deploy prune`: width and depth pruning of a checkpoint by importance scores."""

from __future__ import annotations

import argparse

from minitron_deploy.cliopts import add_options, build
from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.slicing import prune_checkpoint
from minitron_deploy.console import info, print_json
from minitron_deploy.data.refs import DataRef
from minitron_deploy.model.shapes import human

NAME = "prune"
HELP = "Prune a Llama checkpoint (hidden, FFN, heads, KV groups, layers) into a new one."
RENAME = {"val_seq_len": "seq_len"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF Llama checkpoint folder")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--scores", help="importance scores folder (from `importance`)")
    p.add_argument("--data", help="text whose validation split ranks layers by loss")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --data held out (default 0.05)"
    )
    add_options(
        p.add_argument_group("targets and selection (PruneConfig)"),
        PruneConfig,
        exclude=("selection",),
        rename=RENAME,
        parsers={"drop_layers": str},
        metavars={"drop_layers": "16-31|1,3,5-7"},
    )
    p.add_argument("--random", action="store_true", help="random selection (a baseline)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")


def run(args: argparse.Namespace) -> int:
    import sys

    extra = {"selection": "random"} if args.random else {}
    cfg = build(PruneConfig, args, what="invalid prune options", rename=RENAME, **extra)
    val = (
        DataRef(source=args.data, split="validation", val_fraction=args.val_fraction)
        if args.data
        else None
    )
    rec = prune_checkpoint(
        args.model,
        args.out,
        cfg,
        scores_path=args.scores,
        val_data=val,
        overwrite=args.overwrite,
        command=" ".join(sys.argv),
        progress=True,
    )
    before, after = rec["params_before"], rec["params_after"]
    t = rec["target_shape"]
    info(
        f"pruned {args.model} -> {args.out}: params {human(before)} -> {human(after)} "
        f"({after / before:.1%}); hidden {t['hidden_size']}, ffn {t['intermediate_size']}, "
        f"heads {t['num_attention_heads']}/{t['num_key_value_heads']}, layers "
        f"{t['num_hidden_layers']} (dropped {rec['dropped_layers']})"
    )
    if args.json:
        print_json(
            {
                "out": str(args.out),
                "params_before": before,
                "params_after": after,
                "target_shape": t,
                "dropped_layers": rec["dropped_layers"],
            }
        )
    return 0
