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
from typing import TYPE_CHECKING, Any

from minitron_deploy.distill import distributed as dd
from minitron_deploy.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.errors import ConfigError, InputError, StageError

if TYPE_CHECKING:
    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# Test hook: seconds to sleep after each step, so a test can SIGKILL a run mid-way.
STEP_DELAY_ENV = "MINITRON_DISTILL_STEP_DELAY"


def check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder", fix="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InputError(
            f"output folder {out} already holds a run",
            fix="pass --resume to continue it, or choose another --out",
        )


def run_identity(
    cfg: DistillConfig,
    teacher_dir: str | Path,
    student_dir: str | Path | None,
    train_data: Split,
    val_data: Split,
) -> dict[str, Any]:
    """What a run is: its settings and its inputs (data by content). A resume must present
    the same."""
    return {
        "config": cfg.model_dump(mode="json"),
        "teacher": str(Path(teacher_dir).resolve()),
        "student": str(Path(student_dir).resolve()) if student_dir is not None else None,
        "training": train_data.describe(),
        "validation": val_data.describe(),
    }


def open_data(
    train_data: DataRef | Split | str,
    val_data: DataRef | Split | None,
    tokenizer_dir: str | Path,
    d: dd.Dist,
) -> tuple[Split, Split]:
    """The prepared training and validation splits. A source that still needs preparing is
    prepared by rank 0 while the other ranks wait, then opened by all."""
    from minitron_deploy.data.refs import DataRef, as_split, validation_ref

    if isinstance(train_data, str):
        train_data = DataRef(source=train_data, split="train")
    if val_data is None:
        if not isinstance(train_data, DataRef):
            raise ConfigError("validation data is needed with prepared training data")
        val_data = validation_ref(train_data.source, None, train_data.val_fraction)
    if d.is_main:
        train, val = as_split(train_data, tokenizer_dir), as_split(val_data, tokenizer_dir)
    dd.barrier(d)
    if not d.is_main:
        train = as_split(train_data, tokenizer_dir, progress=False)
        val = as_split(val_data, tokenizer_dir, progress=False)
    return train, val


def open_holdout(
    holdout: dict[str, DataRef | Split], tokenizer_dir: str | Path, d: dd.Dist
) -> dict[str, Split]:
    """The prepared held-out domains (all of each source), rank 0 preparing first."""
    from minitron_deploy.data.refs import DataRef, as_split

    refs = {
        k: v.model_copy(update={"split": "all"}) if isinstance(v, DataRef) else v
        for k, v in holdout.items()
    }
    out = {}
    if d.is_main:
        out = {k: as_split(v, tokenizer_dir) for k, v in refs.items()}
    dd.barrier(d)
    if not d.is_main:
        out = {k: as_split(v, tokenizer_dir, progress=False) for k, v in refs.items()}
    return out


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_resume(stored: dict[str, Any], identity: dict[str, Any], out: Path, extend: bool) -> None:
    """Refuse to resume a run with other settings or inputs (`extend` allows more steps).

    Raises:
        ConfigError: naming every difference and how to start fresh.
    """
    diffs = _differences(stored, identity)
    if extend:
        old_steps = stored.get("config", {}).get("steps", 0)
        new_steps = identity["config"]["steps"]
        if new_steps < old_steps:
            raise ConfigError(
                f"--extend needs at least the stored {old_steps} steps, got {new_steps}",
                where=str(out),
            )
        diffs = [d for d in diffs if not d.startswith("config.steps:")]
    if diffs:
        raise ConfigError(
            "cannot resume: the stored run differs (" + "; ".join(diffs) + ")",
            where=str(out),
            fix="resume with the stored settings; pass --extend to continue a run with more "
            "--steps; or choose a new --out (or delete this one) to start fresh",
        )


def run_distillation(
    teacher_dir: str | Path,
    student_dir: str | Path | None,
    out_dir: str | Path,
    cfg: DistillConfig,
    *,
    train_data: DataRef | Split | str,
    val_data: DataRef | Split | None = None,
    holdout: dict[str, DataRef | Split] | None = None,
    resume: bool = False,
    extend: bool = False,
    progress: bool = True,
    title: str | None = None,
    final_checkpoint: bool = True,
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
        train_data: training text (a `DataRef`, prepared on the fly, or a prepared split); a
            plain source string means its train split.
        val_data: held-out text; default: the validation split of `train_data`'s source.
        holdout: held-out domains by name (text of a kind absent from `train_data`): their
            loss and KL are logged with the validation split's (`holdout_<name>_loss`/`_kl`).
        resume: continue from the newest checkpoint in `out_dir` (bit-exact on CPU); the stored
            settings and inputs must equal these.
        extend: with `resume`, allow a larger `cfg.steps` than the stored run's (the LR schedule
            is recomputed for the new length from the resume step on).
        progress: show a progress bar on stderr (main rank only).
        title: names the run in the curves' title (e.g. the pipeline node "width/distill").
        final_checkpoint: also checkpoint the last step (so `extend` can continue the run);
            the pipeline, whose runs are never extended, skips it.

    Returns:
        Summary: steps, val_loss_before/after, val_kl_before/after, teacher_val_loss (and the
        same `holdout_<name>_...` for each held-out domain), tokens, wall_s, final (the
        student's folder name inside `out_dir`).

    Raises:
        InputError: bad inputs, an existing output, or a teacher that fails the sanity check.
        ConfigError: a resume with other settings or inputs than the stored run.
        StageError: a non-finite loss or gradient (the last good checkpoint is kept).
    """

    out = Path(out_dir)
    check_out(out, resume)
    if not cfg.teacher_correction and student_dir is None:
        raise ConfigError("a student checkpoint is needed unless teacher_correction is set")
    d = dd.setup()
    try:
        train, val = open_data(train_data, val_data, teacher_dir, d)
        held = open_holdout(holdout or {}, teacher_dir, d)
        identity = run_identity(cfg, teacher_dir, student_dir, train, val)
        if held:
            identity["holdout"] = {k: v.describe() for k, v in held.items()}
        if resume:
            stored = _stored_identity(out)
            if stored is not None:
                check_resume(stored, identity, out, extend)
            if (out / SUMMARY).is_file():
                summary = json.loads((out / SUMMARY).read_text())
                if summary.get("steps") == cfg.steps:
                    return {**summary, "already_finished": True}
                if latest_checkpoint(out / "checkpoints") is None:
                    raise ConfigError(
                        "the finished run kept no checkpoint to extend from",
                        where=str(out),
                        fix="run it again with --checkpoint-every > 0, or start a new --out",
                    )
                dd.barrier(d)
                if d.is_main:
                    (out / SUMMARY).unlink()  # --extend: train on from the last checkpoint
        if cfg.global_batch % (cfg.micro_batch * d.world_size):
            raise ConfigError(
                f"global_batch={cfg.global_batch} is not a multiple of micro_batch="
                f"{cfg.micro_batch} x world_size={d.world_size}",
                fix="change --global-batch or --micro-batch",
            )
        return _train(
            teacher_dir,
            student_dir,
            out,
            cfg,
            d,
            (train, val, held),
            resume,
            progress,
            identity,
            title,
            final_checkpoint,
        )
    finally:
        dd.teardown(d)


def _stored_identity(out: Path) -> dict[str, Any] | None:
    """The identity of the run in `out`: from summary.json, else its newest checkpoint."""
    if (out / SUMMARY).is_file():
        rec = json.loads((out / SUMMARY).read_text())
        if "identity" in rec:
            return rec["identity"]
    ck = latest_checkpoint(out / "checkpoints")
    if ck is not None and (ck / "meta.json").is_file():
        meta = json.loads((ck / "meta.json").read_text())
        return meta.get("identity")
    return None


def _train(
    teacher_dir,
    student_dir,
    out,
    cfg,
    d,
    data,
    resume,
    progress,
    identity,
    title,
    final_checkpoint,
):
    from minitron_deploy.distill import metrics as mx
    from minitron_deploy.distill.session import Session
    from minitron_deploy.model.io import provenance

    t_start = time.perf_counter()
    run = Session(teacher_dir, student_dir, out, cfg, d)
    run.load_data(*data)
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
        info.update(run.teacher_check())
        before = run.evaluate()
        info.update({f"{k}_before": v for k, v in before.items()})
        if d.is_main:
            mx.append(mpath, {"step": 0, **before})
    bar = mx.ProgressBar(cfg.steps, start, progress and d.is_main, f"distill {title or out.name}")
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
            # The last step is checkpointed too, so a finished run can be extended (--extend).
            last = done == cfg.steps
            if cfg.checkpoint_every and (
                (done % cfg.checkpoint_every == 0 and not last) or (last and final_checkpoint)
            ):
                msd, tstate = run.state()
                if d.is_main:
                    meta = {"identity": identity, "info": info}
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
        **{f"{k}_after": v for k, v in last_eval.items() if k.startswith("holdout_")},
        "tokens": cfg.steps * cfg.global_batch * cfg.seq_len,
        "world_size": d.world_size,
        "teacher_layers_sharded": run.teacher_layers_sharded(),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "final": "final",
        "identity": identity,
    }
    record = provenance(
        run.train_dir,
        extra={"distill": {"config": cfg.model_dump(mode="json"), "teacher": str(teacher_dir)}},
    )
    run.write_final(record)
    if d.is_main:
        kind = "teacher correction" if cfg.teacher_correction else "distillation"
        teacher_loss = info.get("teacher_val_loss") if not cfg.teacher_correction else None
        mx.plot(out / "curves.png", records, f"{title or out.name}: {kind}", teacher_loss)
        from minitron_deploy.fsutil import atomic_write_json

        atomic_write_json(out / SUMMARY, summary)
    return summary
