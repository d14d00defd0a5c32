"""`minitron-deploy eval`: validation loss and perplexity of a checkpoint."""

from __future__ import annotations

import argparse

NAME = "eval"
HELP = "Validation loss and perplexity of a checkpoint on a data source and held-out domains."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF Llama checkpoint folder")
    p.add_argument("--data", required=True, help="data source (path or builtin:python-stdlib)")
    p.add_argument("--num-samples", type=int, default=64, help="sequences to evaluate")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    p.add_argument("--split", choices=["validation", "train", "all"], default="validation")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --data held out (default 0.05)"
    )
    p.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="SRC",
        help="a held-out domain (e.g. builtin:manpages), evaluated whole and reported on its "
        "own; repeat for several",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per forward call")
    p.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype: auto (bf16 where native, else float32), float32, bfloat16",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from minitron_deploy.console import info, print_json
    from minitron_deploy.data.refs import DataRef, check_source, load_tokens
    from minitron_deploy.evaluation.loss import evaluate_loss
    from minitron_deploy.model.io import load_llama, read_config

    read_config(args.model)
    from minitron_deploy.data.refs import holdout_label
    from minitron_deploy.errors import ConfigError

    ref = DataRef(source=args.data, split=args.split, val_fraction=args.val_fraction)
    held = {holdout_label(h): DataRef(source=h, split="all") for h in args.holdout}
    if len(held) != len(args.holdout):
        raise ConfigError("two --holdout sources have the same name", fix="rename one")
    for r in (ref, *held.values()):
        check_source(r)  # cheap checks before any model or tokenizer loads

    def tokens(r: DataRef):
        return load_tokens(
            args.model, r, num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed
        )

    ids = tokens(ref)
    held_ids = {name: tokens(r) for name, r in held.items()}
    from minitron_deploy.hardware import compute_dtype

    model = load_llama(args.model, dtype=compute_dtype(args.dtype))
    res = evaluate_loss(model, ids, args.micro_batch, progress=True)
    res.update(model=str(args.model), data=args.data, split=args.split, samples=int(ids.shape[0]))
    res["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    res["seq_len"] = int(ids.shape[1])
    if held_ids:
        res["holdout"] = {
            name: {
                "source": held[name].source,
                "samples": int(x.shape[0]),
                **evaluate_loss(model, x, args.micro_batch, progress=True),
            }
            for name, x in held_ids.items()
        }
    info(f"loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  over {res['tokens']} tokens")
    for name, h in res.get("holdout", {}).items():
        info(f"held-out {name}: loss {h['loss']:.4f}  ppl {h['ppl']:.2f}  over {h['tokens']}")
    if args.json:
        print_json(res)
    else:
        print(f"loss={res['loss']:.6f} ppl={res['ppl']:.4f} tokens={res['tokens']}")
        for name, h in res.get("holdout", {}).items():
            print(f"holdout {name}: loss={h['loss']:.6f} ppl={h['ppl']:.4f} tokens={h['tokens']}")
    return 0
