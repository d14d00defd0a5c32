"""`minitron-deploy distill`: knowledge distillation (or teacher correction) of a Llama student.

Single process: `minitron-deploy distill --teacher T --student S --data SRC --steps N --out O`.
Many GPUs / nodes: the same arguments under `torchrun` (see README "## Distillation").
`--estimate` prints the per-GPU memory plan instead of training.
"""

from __future__ import annotations

import argparse

NAME = "distill"
HELP = "Distill a teacher into a (pruned) student with forward KL; resumable, torchrun-ready."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder or builtin:NAME")
    p.add_argument("--student", help="student checkpoint folder (not with --teacher-correction)")
    p.add_argument("--data", help="training data source (path, JSONL, builtin:python-stdlib)")
    p.add_argument("--val-data", help="held-out source (default: validation split of --data)")
    p.add_argument("--out", help="output folder: metrics.jsonl, checkpoints/, final/")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--global-batch", type=int, default=8, help="sequences per step, all ranks")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward per rank")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=1e-4, help="peak LR (P2: 1e-4)")
    p.add_argument("--min-lr", type=float, default=1e-5, help="final LR of the cosine decay")
    p.add_argument("--warmup-steps", type=int, default=40, help="linear warm-up steps")
    p.add_argument("--temperature", type=float, default=1.0, help="KL temperature")
    p.add_argument("--top-k", type=int, help="keep only the teacher's top-K logits")
    p.add_argument("--ce-weight", type=float, default=0.0, help="CE weight in the logit loss")
    p.add_argument("--intermediate", action="store_true", help="add hidden-state cosine losses")
    p.add_argument("--embedding-loss", action="store_true", help="add embedding-output loss")
    p.add_argument(
        "--layer-map", help="teacher:student layer pairs, e.g. '-2:-2,10:5' (default -2:-2)"
    )
    p.add_argument("--eval-every", type=int, default=50, help="validate every N steps")
    p.add_argument("--eval-samples", type=int, default=32, help="validation sequences")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--kl-chunk-tokens", type=int, default=1024, help="tokens per KL chunk")
    p.add_argument("--seed", type=int, default=0, help="data-order seed")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute layers")
    p.add_argument(
        "--teacher-correction", action="store_true", help="CE fine-tune the teacher itself (P2)"
    )
    p.add_argument("--no-teacher-check", action="store_true", help="skip the teacher sanity check")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print per-GPU memory (teacher/student may be presets such as llama-3.1-8b)",
    )
    p.add_argument("--world-size", type=int, default=1, help="GPUs for --estimate")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="GPU memory for --estimate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def _layer_map(text: str | None) -> list[tuple[int, int]] | None:
    from minitron_deploy.errors import ConfigError

    if not text:
        return None
    try:
        return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",")]  # type: ignore[misc]
    except ValueError as e:
        raise ConfigError(
            f"cannot parse --layer-map {text!r}", fix="use teacher:student pairs like -2:-2,8:4"
        ) from e


def _config(args: argparse.Namespace):
    from pydantic import ValidationError

    from minitron_deploy.distill.config import DistillConfig
    from minitron_deploy.errors import ConfigError

    try:
        return DistillConfig(
            steps=args.steps,
            global_batch=args.global_batch,
            micro_batch=args.micro_batch,
            seq_len=args.seq_len,
            lr=args.lr,
            min_lr=min(args.min_lr, args.lr),
            warmup_steps=args.warmup_steps,
            temperature=args.temperature,
            top_k=args.top_k,
            ce_weight=args.ce_weight,
            intermediate=args.intermediate or args.embedding_loss,
            layer_map=_layer_map(args.layer_map),
            embedding_loss=args.embedding_loss,
            eval_every=args.eval_every,
            eval_samples=args.eval_samples,
            checkpoint_every=args.checkpoint_every,
            kl_chunk_tokens=args.kl_chunk_tokens,
            seed=args.seed,
            dtype=args.dtype,
            gradient_checkpointing=args.gradient_checkpointing,
            teacher_correction=args.teacher_correction,
            teacher_check=not args.no_teacher_check,
        )
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'config'}: {x['msg']}" for x in e.errors()
        )
        raise ConfigError(f"invalid distillation settings: {problems}") from e


def _estimate(args: argparse.Namespace) -> int:
    from minitron_deploy.console import print_json
    from minitron_deploy.distill.memory import PRESETS, estimate_memory, format_estimate
    from minitron_deploy.model.teacher import resolve_model

    def ref(x: str):
        return x if x in PRESETS else resolve_model(x)

    est = estimate_memory(
        ref(args.teacher),
        ref(args.student or args.teacher),
        args.world_size,
        args.micro_batch,
        args.seq_len,
        gpu_memory_gb=args.gpu_mem_gb,
        gradient_checkpointing=args.gradient_checkpointing,
        kl_chunk_tokens=args.kl_chunk_tokens,
    )
    print(format_estimate(est))
    if args.json:
        print_json(est)
    return 0


def run(args: argparse.Namespace) -> int:
    from minitron_deploy.errors import ConfigError

    if args.estimate:
        return _estimate(args)
    missing = [f"--{n}" for n in ("data", "out") if not getattr(args, n)]
    if not args.teacher_correction and not args.student:
        missing.append("--student")
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}", fix="see `minitron-deploy distill -h`")
    cfg = _config(args)
    from minitron_deploy.console import info, print_json
    from minitron_deploy.distill.trainer import run_distillation
    from minitron_deploy.model.teacher import resolve_model

    summary = run_distillation(
        resolve_model(args.teacher),
        resolve_model(args.student) if args.student else None,
        args.out,
        cfg,
        train_data=args.data,
        val_data=args.val_data,
        resume=args.resume,
        progress=not args.no_progress,
    )
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        info(
            f"val loss {summary.get('val_loss_before')} -> {summary.get('val_loss_after')}; "
            f"student written to {summary['final']}"
        )
        if args.json:
            print_json(summary)
    return 0
