"""`minitron-deploy eval`: validation loss and perplexity of a checkpoint on text and held-out
domains, and downstream tasks through lm-evaluation-harness (`--tasks`)."""

from __future__ import annotations

import argparse

from minitron_deploy.console import info, print_json
from minitron_deploy.data.refs import DataRef, check_source, holdout_label, load_tokens
from minitron_deploy.errors import ConfigError
from minitron_deploy.evaluation.harness import (
    evaluate_tasks,
    load_for_eval,
    resolve_tasks,
    results_markdown,
)
from minitron_deploy.evaluation.loss import compare_losses, evaluate_loss
from minitron_deploy.fsutil import atomic_dir
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import load_llama, read_config

NAME = "eval"
HELP = "Loss on text and held-out domains, and downstream tasks (lm-eval) of a checkpoint."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="HF Llama checkpoint folder (or an HF-FP8 export)"
    )
    p.add_argument("--data", help="text whose loss to measure (path or builtin:<name>)")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="with --data: also score this checkpoint (e.g. the teacher) on the same windows and "
        "report the loss difference with a 95%% paired bootstrap interval over windows",
    )
    t = p.add_argument_group("downstream tasks (lm-evaluation-harness)")
    t.add_argument(
        "--tasks",
        help="comma-separated: offline tasks (minitron_cloze_code, minitron_cloze_prose, "
        "minitron_last_word, minitron_next_line), task YAML files or folders, or lm-eval "
        "registry names",
    )
    t.add_argument("--num-fewshot", type=int, help="few-shot examples per item (task default)")
    t.add_argument("--limit", type=int, help="at most this many items per task")
    t.add_argument("--batch-size", type=int, default=8, help="sequences per forward call (8)")
    t.add_argument("--out", help="folder for results.json and results.md (written atomically)")
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
    if not args.data and not args.tasks:
        raise ConfigError("nothing to evaluate", fix="pass --data SRC and/or --tasks T1,T2")
    if args.holdout and not args.data:
        raise ConfigError("--holdout goes with --data", fix="add --data SRC")
    if args.baseline and not args.data:
        raise ConfigError("--baseline goes with --data", fix="add --data SRC")
    if args.tasks:
        for name, v in (("--limit", args.limit), ("--num-fewshot", args.num_fewshot)):
            if v is not None and v < (1 if name == "--limit" else 0):
                raise ConfigError(f"{name} {v} is out of range")
        specs = [t.strip() for t in args.tasks.split(",") if t.strip()]
        resolved = resolve_tasks(specs)  # unknown or download-only tasks fail before loading
    res: dict = {"model": str(args.model)}
    if args.data:
        res.update(_loss(args))
    if args.tasks:
        res["downstream"] = _tasks(args, specs, resolved)
    if args.out:
        _write(args.out, res)
    if args.json:
        print_json(res)
    else:
        if args.data:
            print(f"loss={res['loss']:.6f} ppl={res['ppl']:.4f} tokens={res['tokens']}")
            for name, h in res.get("holdout", {}).items():
                print(
                    f"holdout {name}: loss={h['loss']:.6f} ppl={h['ppl']:.4f} tokens={h['tokens']}"
                )
        if args.tasks:
            print(results_markdown(res["downstream"]), end="")
    return 0


def _tasks(args: argparse.Namespace, specs: list[str], resolved) -> dict:
    model, tok = load_for_eval(args.model, args.dtype)
    info(f"lm-eval: {', '.join(specs)} on {args.model}")
    return evaluate_tasks(
        model,
        tok,
        specs,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        resolved=resolved,
    )


def _write(out: str, res: dict) -> None:
    from pathlib import Path

    text = []
    if "loss" in res:
        text.append(f"loss {res['loss']:.4f} (ppl {res['ppl']:.2f}) on {res['data']}")
        for name, h in res.get("holdout", {}).items():
            text.append(f"held-out {name}: loss {h['loss']:.4f} (ppl {h['ppl']:.2f})")
    if "downstream" in res:
        text.append(results_markdown(res["downstream"], f"{res['model']}"))
    import json

    with atomic_dir(Path(out), overwrite=True) as tmp:
        (tmp / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        (tmp / "results.md").write_text("\n\n".join(text) + "\n")


def _loss(args: argparse.Namespace) -> dict:
    cfg = read_config(args.model)
    if args.baseline:
        base_cfg = read_config(args.baseline)
        if base_cfg.get("vocab_size") != cfg.get("vocab_size"):
            raise ConfigError(
                f"--baseline {args.baseline} has vocabulary {base_cfg.get('vocab_size')}, "
                f"--model {cfg.get('vocab_size')}: the same windows need the same tokenizer",
                fix="compare checkpoints pruned from the same source",
            )
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

    model = load_llama(args.model, dtype=compute_dtype(args.dtype))
    res = evaluate_loss(model, ids, args.micro_batch, progress=True)
    res.update(data=args.data, split=args.split, samples=int(ids.shape[0]))
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
    if args.baseline:
        del model
        base = load_llama(args.baseline, dtype=compute_dtype(args.dtype))
        ref_res = evaluate_loss(base, ids, args.micro_batch, progress=True)
        res["baseline"] = {"model": args.baseline, "loss": ref_res["loss"]}
        res["vs_baseline"] = compare_losses(res, ref_res)
        for name, x in held_ids.items():
            h = evaluate_loss(base, x, args.micro_batch, progress=True)
            res["holdout"][name]["baseline_loss"] = h["loss"]
            res["holdout"][name]["vs_baseline"] = compare_losses(res["holdout"][name], h)
    info(
        f"loss {res['loss']:.4f} [{res['loss_lo']:.4f}, {res['loss_hi']:.4f}]  "
        f"ppl {res['ppl']:.2f}  over {res['tokens']} tokens"
    )
    for name, h in [("", res), *res.get("holdout", {}).items()]:
        label = f"held-out {name}: " if name else ""
        if name:
            info(f"{label}loss {h['loss']:.4f} [{h['loss_lo']:.4f}, {h['loss_hi']:.4f}]")
        if "vs_baseline" in h:
            d = h["vs_baseline"]
            info(
                f"{label}vs baseline: {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] nats "
                f"(paired over {d['n']} windows)"
            )
    return res
