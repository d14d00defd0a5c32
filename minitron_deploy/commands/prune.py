"""`minitron-deploy prune`: width and depth pruning of a checkpoint by importance scores."""

from __future__ import annotations

import argparse

NAME = "prune"
HELP = "Prune a Llama checkpoint (hidden, FFN, heads, KV groups, layers) into a new one."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF Llama checkpoint folder")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--scores", help="importance scores folder (from `importance`)")
    p.add_argument("--hidden-size", type=int, help="embedding channels to keep")
    p.add_argument("--intermediate-size", type=int, help="MLP neurons to keep")
    p.add_argument("--num-attention-heads", type=int, help="query heads to keep")
    p.add_argument("--num-key-value-heads", type=int, help="KV groups to keep")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--num-layers", type=int, help="layers to keep (see --layer-metric)")
    depth.add_argument("--drop-layers", help="layers to drop, e.g. 16-31 or 1,3,5-7")
    p.add_argument(
        "--layer-metric",
        choices=["block_loss", "single_loss", "block_importance"],
        default="block_loss",
        help="how --num-layers picks layers (block_loss: P2 contiguous block, needs --data "
        "or scores with layer losses)",
    )
    p.add_argument("--data", help="data source whose validation split ranks layers by loss")
    p.add_argument("--val-samples", type=int, default=16, help="validation sequences for ranking")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per validation sequence")
    p.add_argument("--random", action="store_true", help="random selection (a baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")


def run(args: argparse.Namespace) -> int:
    import sys

    from pydantic import ValidationError

    from minitron_deploy.console import info, print_json
    from minitron_deploy.errors import InputError
    from minitron_deploy.model.shapes import human
    from minitron_deploy.prune import PruneConfig, prune_checkpoint

    try:
        cfg = PruneConfig(
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_key_value_heads,
            num_layers=args.num_layers,
            drop_layers=args.drop_layers,
            layer_metric=args.layer_metric,
            selection="random" if args.random else "importance",
            seed=args.seed,
            val_samples=args.val_samples,
            val_seq_len=args.seq_len,
        )
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ())) or "options"
        raise InputError(f"invalid prune option {field}: {err['msg']}") from e
    rec = prune_checkpoint(
        args.model,
        args.out,
        cfg,
        scores_path=args.scores,
        val_data=args.data,
        overwrite=args.overwrite,
        command=" ".join(sys.argv),
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
