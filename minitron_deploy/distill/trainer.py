"""The distillation trainer: frozen teacher, fused chunked KD loss, AdamW, exact resume, FSDP2.

Entry point: `run_distillation(teacher_dir, student_dir, out_dir, cfg, train_data=...)`. Run it
in one process, or under `torchrun` for data parallelism with an FSDP2-sharded student. The
output folder holds `metrics.jsonl`, `checkpoints/`, `final/` (a clean HF checkpoint),
`curves.png` and `summary.json`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from minitron_deploy.distill import distributed as dd
from minitron_deploy.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.errors import ConfigError, InputError, StageError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# Test hook: seconds to sleep after each step, so a test can SIGKILL a run mid-way.
STEP_DELAY_ENV = "MINITRON_DISTILL_STEP_DELAY"


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder", fix="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InputError(
            f"output folder {out} already holds a run",
            fix="pass --resume to continue it, or choose another --out",
        )


def run_distillation(
    teacher_dir: str | Path,
    student_dir: str | Path | None,
    out_dir: str | Path,
    cfg: DistillConfig,
    *,
    train_data: str,
    val_data: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Distill `teacher_dir` into `student_dir` (or CE-correct the teacher) and save the result.

    Runs in one process, or in every process of a `torchrun` launch (data parallel, FSDP2).
    Writes `out_dir/metrics.jsonl` (one JSON per step: step, loss, lr, grad_norm, tokens_per_s,
    parts; plus val_loss on evaluation steps), `out_dir/checkpoints/`, `out_dir/final/` (clean
    HF checkpoint), `out_dir/curves.png` and `out_dir/summary.json`.

    Args:
        teacher_dir: HF Llama checkpoint of the teacher (its tokenizer is used).
        student_dir: HF Llama checkpoint of the student (ignored with teacher_correction).
        out_dir: output folder (must be new unless `resume`).
        cfg: the run's settings.
        train_data: data source (see `minitron_deploy.data`); its train split is used.
        val_data: held-out source; default: the validation split of `train_data`.
        resume: continue from the newest checkpoint in `out_dir` (bit-exact on CPU).
        progress: show a progress bar on stderr (main rank only).

    Returns:
        Summary: steps, val_loss_before/after, val_kl_before/after, teacher_val_loss, tokens,
        wall_s, final (path).

    Raises:
        InputError: bad inputs, an existing output, or a teacher that fails the sanity check.
        StageError: a non-finite loss or gradient (the last good checkpoint is kept).
    """

    out = Path(out_dir)
    _check_out(out, resume)
    if not cfg.teacher_correction and student_dir is None:
        raise ConfigError("a student checkpoint is needed unless teacher_correction is set")
    if resume and (out / SUMMARY).is_file():
        return json.loads((out / SUMMARY).read_text())
    d = dd.setup()
    try:
        if cfg.global_batch % (cfg.micro_batch * d.world_size):
            raise ConfigError(
                f"global_batch={cfg.global_batch} is not a multiple of micro_batch="
                f"{cfg.micro_batch} x world_size={d.world_size}",
                fix="change --global-batch or --micro-batch",
            )
        return _train(teacher_dir, student_dir, out, cfg, d, train_data, val_data, resume, progress)
    finally:
        dd.teardown(d)


def _train(teacher_dir, student_dir, out, cfg, d, train_data, val_data, resume, progress):
    from minitron_deploy.distill import metrics as mx
    from minitron_deploy.distill.session import Session
    from minitron_deploy.model.io import provenance

    t_start = time.perf_counter()
    run = Session(teacher_dir, student_dir, out, cfg, d)
    run.load_data(train_data, val_data)
    ckdir, mpath = out / "checkpoints", out / METRICS
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dd.barrier(d)
    start, info = 0, {}
    ck = latest_checkpoint(ckdir) if resume else None
    if ck is not None:
        msd, tstate, meta = load_checkpoint(ck)
        run.restore(msd, tstate)
        start, info = int(meta["step"]), meta.get("info", {})
        if d.is_main:
            mx.truncate(mpath, start)
    else:
        if d.is_main and mpath.exists():
            mpath.unlink()
        info["teacher_val_loss"] = run.teacher_check()
        before = run.evaluate()
        info.update({f"{k}_before": v for k, v in before.items()})
        if d.is_main:
            mx.append(mpath, {"step": 0, **before})
    bar = mx.ProgressBar(cfg.steps, start, progress and d.is_main)
    last_ck = str(ck) if ck else None
    last_eval: dict[str, float] = {}
    try:
        delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
        for step in range(start, cfg.steps):
            rec = run.step(step)
            if delay:
                time.sleep(delay)
            if rec.get("nonfinite"):
                raise StageError(
                    f"loss or gradient became non-finite at step {rec['step']} "
                    f"(loss={rec['loss']})",
                    where=str(out),
                    fix=f"lower --lr; the last good checkpoint is {last_ck or 'none'} "
                    "(continue from it with --resume)",
                )
            done = rec["step"]
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                last_eval = run.evaluate()
                rec.update(last_eval)
            if d.is_main:
                mx.append(mpath, rec)
            bar.update(rec)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                msd, tstate = run.state()
                if d.is_main:
                    meta = {"config": cfg.model_dump(mode="json"), "info": info}
                    last_ck = str(
                        save_checkpoint(ckdir, done, msd, tstate, meta, cfg.keep_checkpoints)
                    )
                dd.barrier(d)
    finally:
        bar.close()
    records = mx.read(mpath) if d.is_main else []
    summary = {
        "steps": cfg.steps,
        **{k: v for k, v in info.items()},
        "val_loss_after": last_eval.get("val_loss"),
        "val_kl_after": last_eval.get("val_kl"),
        "tokens": cfg.steps * cfg.global_batch * cfg.seq_len,
        "world_size": d.world_size,
        "teacher_layers_sharded": run.teacher_layers_sharded(),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "final": str(out / "final"),
    }
    record = provenance(
        run.train_dir,
        extra={"distill": {"config": cfg.model_dump(mode="json"), "teacher": str(teacher_dir)}},
    )
    run.write_final(record)
    if d.is_main:
        mx.plot(
            out / "curves.png", records, "teacher correction" if cfg.teacher_correction else "KD"
        )
        from minitron_deploy.fsutil import atomic_write_json

        atomic_write_json(out / SUMMARY, summary)
    return summary
