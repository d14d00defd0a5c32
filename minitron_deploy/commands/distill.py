"""`minitron-deploy distill`: knowledge distillation (or teacher correction) of a Llama student.

Single process: `minitron-deploy distill --teacher T --student S --data SRC --steps N --out O`.
Many GPUs / nodes: the same arguments under `torchrun` (see README "## Distillation").
`--estimate` prints the per-GPU memory plan instead of training. Every training option comes
from `DistillConfig` (names, defaults and help are declared there once).
"""

from __future__ import annotations

import argparse

from minitron_deploy.cliopts import add_options, build
from minitron_deploy.console import info, print_json
from minitron_deploy.data.refs import DataRef, check_source, holdout_label, validation_ref
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.distill.memory import PRESETS, estimate_memory, format_estimate
from minitron_deploy.errors import ConfigError
from minitron_deploy.model.teacher import resolve_model

NAME = "distill"
HELP = "Distill a teacher into a (pruned) student with forward KL; resumable, torchrun-ready."


def _layer_map(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot parse {text!r}; use teacher:student pairs like -2:-2,8:4"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder or builtin:NAME")
    p.add_argument("--student", help="student checkpoint folder (not with --teacher-correction)")
    p.add_argument("--data", help="training text (path, JSONL, builtin:python-stdlib)")
    p.add_argument("--val-data", help="held-out text (default: the validation split of --data)")
    p.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="SRC",
        help="a held-out domain (text of a kind absent from --data, e.g. builtin:manpages) "
        "whose loss and KL are logged with the validation loss; repeat for several",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --data held out (default 0.05)"
    )
    p.add_argument("--out", help="output folder: metrics.jsonl, checkpoints/, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--extend",
        action="store_true",
        help="with --resume: continue a (finished) run with more --steps; the LR schedule is "
        "recomputed for the new length from there",
    )
    add_options(
        p.add_argument_group("training settings (DistillConfig)"),
        DistillConfig,
        parsers={"layer_map": _layer_map},
        metavars={"layer_map": "T:S[,T:S]"},
    )
    e = p.add_argument_group("memory plan")
    e.add_argument(
        "--estimate",
        action="store_true",
        help="print per-GPU memory (teacher/student may be presets such as llama-3.1-8b)",
    )
    e.add_argument("--world-size", type=int, default=1, help="GPUs for --estimate")
    e.add_argument("--gpu-mem-gb", type=float, default=80.0, help="GPU memory for --estimate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def _estimate(args: argparse.Namespace, cfg) -> int:
    def ref(x: str):
        return x if x in PRESETS else resolve_model(x)

    est = estimate_memory(
        ref(args.teacher),
        ref(args.student or args.teacher),
        args.world_size,
        cfg.micro_batch,
        cfg.seq_len,
        gpu_memory_gb=args.gpu_mem_gb,
        gradient_checkpointing=cfg.gradient_checkpointing,
        kl_chunk_tokens=cfg.kl_chunk_tokens,
    )
    print(format_estimate(est))
    if args.json:
        print_json(est)
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    cfg = build(DistillConfig, args, what="invalid distillation settings")
    if args.estimate:
        return _estimate(args, cfg)
    missing = [f"--{n}" for n in ("data", "out") if not getattr(args, n)]
    if not cfg.teacher_correction and not args.student:
        missing.append("--student")
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}", fix="see `minitron-deploy distill -h`")
    if args.extend and not args.resume:
        raise ConfigError("--extend continues a stored run", fix="add --resume")
    from minitron_deploy.distill.inputs import check_out

    check_out(Path(args.out), args.resume)  # before any model loads
    train = DataRef(source=args.data, split="train", val_fraction=args.val_fraction)
    val = validation_ref(args.data, args.val_data, args.val_fraction)
    check_source(train)
    check_source(val)

    held = {holdout_label(h): DataRef(source=h, split="all") for h in args.holdout}
    if len(held) != len(args.holdout):
        raise ConfigError("two --holdout sources have the same name", fix="rename one")
    for ref in held.values():
        check_source(ref)
    from minitron_deploy.distill.trainer import run_distillation

    summary = run_distillation(
        resolve_model(args.teacher),
        resolve_model(args.student) if args.student else None,
        args.out,
        cfg,
        train_data=train,
        val_data=val,
        holdout=held,
        resume=args.resume,
        extend=args.extend,
        progress=not args.no_progress,
    )
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        if summary.get("already_finished"):
            info(f"{args.out} already holds this finished run (nothing to do)")
        info(
            f"val loss {summary.get('val_loss_before')} -> {summary.get('val_loss_after')}; "
            f"student written to {Path(args.out) / summary['final']}"
        )
        for name in held:
            info(
                f"held-out {name}: loss {summary.get(f'holdout_{name}_loss_before')} -> "
                f"{summary.get(f'holdout_{name}_loss_after')} "
                f"(teacher {summary.get(f'teacher_holdout_{name}_loss')})"
            )
        if args.json:
            print_json(summary)
    return 0
