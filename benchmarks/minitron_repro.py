"""The Minitron paper in miniature: SmolLM2-135M teacher, pruned students, same token budget.

Arms (every one trains on the same batches: steps x global_batch x seq_len tokens):
    width_kd            width-pruned + KD (logit only)
    width_ce            width-pruned + plain CE fine-tuning
    random_kd           random init (width-pruned shape) + KD (logit)
    width_kd_inter      width-pruned + KD (logit + intermediate (-2:-2) + embedding)
    depth_kd            depth-pruned (15 of 30 layers) + KD (logit)
Width: hidden 576->384, FFN 1536->1024, query heads 9->6 (3 KV groups kept), by activation
importance (minitron_deploy.compress: importance, slicing). Depth: the contiguous block of 15 layers
whose removal hurts validation loss least (P2). Reported: held-out LM loss (validation split of
the data source, documents never seen in training) before and after, and the KL to the teacher.
The papers predict width_kd < width_ce < random_kd and width_kd < depth_kd.

    .venv/bin/python benchmarks/minitron_repro.py                      # tiny CPU budget
    .venv/bin/python benchmarks/minitron_repro.py --steps 400 --global-batch 32 --seq-len 512

Each arm's run folder is kept under --work, so an interrupted script skips finished arms.
Writes the results table to benchmarks/minitron_repro.md; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {  # in order of interest, so a budget cut keeps the main comparisons
    "width_kd": ("width", {}),
    "width_ce": ("width", {"ce_weight": 1.0}),
    "random_kd": ("random", {}),
    "width_kd_inter": ("width", {"intermediate": True, "embedding_loss": True}),
    "depth_kd": ("depth", {}),
}


def make_students(work: Path, teacher_dir: Path, args) -> dict[str, Path]:
    """Width- and depth-pruned students (by importance) and a random-init one."""
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.compress.config import ImportanceConfig, PruneConfig
    from minitron_deploy.compress.importance import compute_importance
    from minitron_deploy.compress.slicing import prune_model
    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.model.io import load_llama, save_llama

    out = {k: work / "students" / k for k in ("width", "depth", "random")}
    if all((p / "config.json").is_file() for p in out.values()):
        return out
    teacher = load_llama(teacher_dir, dtype="float32")
    calib = load_tokens(
        teacher_dir,
        DataRef(source=args.data),
        num_samples=args.calib,
        seq_len=args.seq_len,
        seed=1234,
    )
    val = load_tokens(
        teacher_dir,
        DataRef(source=args.data, split="validation"),
        num_samples=8,
        seq_len=args.seq_len,
    )
    icfg = ImportanceConfig(num_samples=args.calib, seq_len=args.seq_len, micro_batch=4)
    t0 = time.perf_counter()
    scores = compute_importance(teacher, calib, icfg)
    print(f"importance: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    width, _ = prune_model(
        teacher, scores, PruneConfig(hidden_size=384, intermediate_size=1024, num_attention_heads=6)
    )
    depth, rec = prune_model(teacher, scores, PruneConfig(num_layers=15), val)
    print(f"depth: dropped layers {rec.get('dropped_layers')}", file=sys.stderr)
    torch.manual_seed(args.seed)
    random = LlamaForCausalLM(width.config)  # HF init, same shape as the width student
    for name, model in (("width", width), ("depth", depth), ("random", random)):
        save_llama(model, out[name], source=teacher_dir, dtype="float32", overwrite=True)
    return out


def run_arm(name: str, students: dict[str, Path], teacher_dir: Path, work: Path, args) -> dict:
    from minitron_deploy.distill import DistillConfig, run_distillation

    kind, extra = ARMS[name]
    out = work / "runs" / name
    cfg = DistillConfig(
        steps=args.steps,
        global_batch=args.global_batch,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=args.warmup,
        eval_every=0,
        eval_samples=args.eval_samples,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        **extra,
    )
    summary = run_distillation(
        teacher_dir,
        students[kind],
        out,
        cfg,
        train_data=args.data,
        resume=out.exists(),
        progress=sys.stderr.isatty(),
    )
    return {"arm": name, "student": kind, **extra, **summary}


def table(results: list[dict], args, teacher_loss: float | None) -> str:
    tokens = args.steps * args.global_batch * args.seq_len
    lines = [
        "# Minitron in miniature (SmolLM2-135M teacher)",
        "",
        f"Budget per arm: {args.steps} steps x {args.global_batch} sequences x {args.seq_len} "
        f"tokens = {tokens:,} training tokens (the paper used 94B); peak LR {args.lr}, "
        f"{args.warmup} warm-up steps, cosine to {args.lr / 10}. Data: `{args.data}` train split; "
        f"held-out: its validation split ({args.eval_samples} x {args.seq_len} tokens). "
        f"Teacher held-out LM loss: {teacher_loss:.3f}. CPU only (2 shared cores).",
        "",
        "| arm | student | loss | held-out LM loss before | after | KL to teacher after | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        kind = "CE" if r.get("ce_weight") else "KD logit"
        if r.get("intermediate"):
            kind += " + intermediate + embedding"
        kl = None if r.get("ce_weight") else r.get("val_kl_after")
        lines.append(
            f"| {r['arm']} | {r['student']} | {kind} | {r['val_loss_before']:.3f} | "
            f"{r['val_loss_after']:.3f} | {kl:.3f} | {r['wall_s']:.0f} |"
            if kl is not None
            else f"| {r['arm']} | {r['student']} | {kind} | {r['val_loss_before']:.3f} | "
            f"{r['val_loss_after']:.3f} | - | {r['wall_s']:.0f} |"
        )
    by = {r["arm"]: r["val_loss_after"] for r in results}
    checks = [
        ("pruned + KD < pruned + CE", "width_kd", "width_ce"),
        ("pruned + CE < random init + KD", "width_ce", "random_kd"),
        ("width < depth after KD", "width_kd", "depth_kd"),
        (
            "logit-only <= logit + intermediate when depth is kept (P1 T18)",
            "width_kd",
            "width_kd_inter",
        ),
    ]
    lines += ["", "| paper's claim | here | holds |", "| --- | --- | --- |"]
    for text, a, b in checks:
        if a in by and b in by:
            holds = by[a] < b_val if (b_val := by[b]) is not None else None
            lines.append(f"| {text} | {by[a]:.3f} vs {by[b]:.3f} | {'yes' if holds else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin:python-stdlib")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--calib", type=int, default=32, help="importance calibration sequences")
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of arms")
    ap.add_argument("--work", default=str(ROOT / "runs" / "minitron_repro"))
    ap.add_argument("--table", default=str(ROOT / "benchmarks" / "minitron_repro.md"))
    ap.add_argument("--table-only", action="store_true", help="rebuild the table from --work")
    args = ap.parse_args()

    work = Path(args.work)
    if args.table_only:  # rebuild the table from finished arms' summaries
        results = []
        for name in ARMS:
            f = work / "runs" / name / "summary.json"
            if f.is_file():
                kind, extra = ARMS[name]
                results.append({"arm": name, "student": kind, **extra, **json.loads(f.read_text())})
        teacher_loss = next(
            (x["teacher_val_loss"] for x in results if x.get("teacher_val_loss")), None
        )
        Path(args.table).write_text(table(results, args, teacher_loss or float("nan")))
        print(json.dumps({"benchmark": "minitron_repro", "results": results}, default=str))
        return

    from minitron_deploy.model.teacher import builtin_model

    teacher_dir = builtin_model("smollm2-135m")
    students = make_students(work, teacher_dir, args)
    results = []
    for name in [a.strip() for a in args.arms.split(",") if a.strip()]:
        t0 = time.perf_counter()
        results.append(run_arm(name, students, teacher_dir, work, args))
        r = results[-1]
        print(
            f"{name:<15} held-out LM loss {r['val_loss_before']:.3f} -> {r['val_loss_after']:.3f}"
            f"  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        teacher_loss = next(
            (x["teacher_val_loss"] for x in results if x.get("teacher_val_loss")), None
        )
        Path(args.table).write_text(table(results, args, teacher_loss or float("nan")))
    from minitron_deploy.hardware import processor

    final = {"benchmark": "minitron_repro", "results": results, "processor": processor()}
    print(json.dumps(final, default=str))


if __name__ == "__main__":
    main()
