"""The distillation trainer: frozen teacher, fused chunked KD loss, AdamW, exact resume, FSDP2.

Entry point: `run_distillation(teacher_dir, student_dir, out_dir, cfg, train_data=...)`. Run it
in one process, or under `torchrun` for data parallelism with an FSDP2-sharded student. The
output folder holds `metrics.jsonl`, `checkpoints/`, `final/` (a clean HF checkpoint),
`curves.png` and `summary.json`.

`Trainer` is the run: its state (models, optimizer, data), `train()` (the loop: evaluate, step,
log, checkpoint, finish) and `step()` (one optimizer step), all in this class; the run's inputs,
identity and resume checks are `inputs`, checkpoint files `checkpoint`, metric records and
curves `metrics`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from minitron_deploy.data.shards import Split, WindowSource
from minitron_deploy.distill import distributed as dd
from minitron_deploy.distill import metrics as mx
from minitron_deploy.distill.batches import Batches, eval_labels
from minitron_deploy.distill.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    student_state,
)
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.distill.inputs import (
    METRICS,
    SUMMARY,
    check_out,
    check_resume,
    open_data,
    open_holdout,
    run_identity,
    stored_identity,
)
from minitron_deploy.distill.losses import fused_logit_loss
from minitron_deploy.distill.schedule import lr_at
from minitron_deploy.distill.student import KDModule, resolve_pairs, teacher_forward
from minitron_deploy.errors import ConfigError, InputError, StageError
from minitron_deploy.fsutil import atomic_dir, atomic_write_json
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import (
    load_llama,
    load_tokenizer,
    provenance,
    read_config,
    resolve_dtype,
    write_llama,
)
from minitron_deploy.model.outliers import keep_mlps_float32, massive_mlp_layers, mlp_output_maxima

if TYPE_CHECKING:
    from minitron_deploy.data.refs import DataRef

# Test hook: seconds to sleep after each step, so a test can SIGKILL a run mid-way.
STEP_DELAY_ENV = "MINITRON_DISTILL_STEP_DELAY"


def _use_bf16(cfg: DistillConfig, device: torch.device) -> bool:
    """bf16 autocast when asked, or for `auto` where the device computes bf16 natively."""
    return compute_dtype(cfg.dtype, device.type) == torch.bfloat16


def _load(path: str | Path, dtype: str, device: torch.device):
    return load_llama(path, dtype=dtype, device=str(device))


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
    evaluate_start: bool = True,
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
        evaluate_start: evaluate the student before the first step (the summary's `*_before`);
            a caller that reads only the end (the search's re-rank runs) skips it.

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
            stored = stored_identity(out)
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
        trainer = Trainer(teacher_dir, student_dir, out, cfg, d)
        trainer.load_data(train, val, held)
        return trainer.train(
            resume=resume,
            identity=identity,
            progress=progress,
            title=title,
            final_checkpoint=final_checkpoint,
            evaluate_start=evaluate_start,
        )
    finally:
        dd.teardown(d)


class Trainer:
    """One distillation run: its models, optimizer, data and state, and its loop (`train`),
    one optimizer step at a time (`step`), as torchtune's recipes keep theirs.

    Args:
        teacher_dir: HF Llama checkpoint of the teacher (its tokenizer is used).
        student_dir: HF Llama checkpoint of the student (None with teacher_correction).
        out: the run's output folder.
        cfg: the run's settings.
        d: this process's place in the (possibly one-process) group.
    """

    def __init__(
        self,
        teacher_dir: str | Path,
        student_dir: str | Path | None,
        out: Path,
        cfg: DistillConfig,
        d: dd.Dist,
    ):
        self.t_start = time.perf_counter()  # the summary's wall_s includes loading
        self.cfg, self.d, self.out = cfg, d, out
        self.teacher_dir = teacher_dir
        self.bf16 = _use_bf16(cfg, d.device)
        self.train_dir = Path(teacher_dir if cfg.teacher_correction else student_dir)
        self.src_cfg = read_config(self.train_dir)
        self.tok = load_tokenizer(teacher_dir)
        torch.manual_seed(cfg.seed)
        student = _load(self.train_dir, "float32", d.device).train()
        self.teacher = None
        if cfg.uses_teacher:
            self.teacher = _load(teacher_dir, "bfloat16" if self.bf16 else "float32", d.device)
            self.teacher.requires_grad_(False).eval()
            body = self.teacher.model
            dd.shard_frozen(body, body.layers, keep=[body.embed_tokens.weight], d=d)
            tv, sv = self.teacher.config.vocab_size, student.config.vocab_size
            if tv != sv:
                raise InputError(
                    f"teacher vocab {tv} != student vocab {sv}; KD needs one tokenizer",
                    fix="prune the student from this teacher",
                )
        if cfg.gradient_checkpointing:
            on = getattr(student, "activation_checkpointing_enable", None)  # transformers >= 5.x
            if on is not None:
                on(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                student.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        pairs, proj = [], None
        if cfg.intermediate and self.teacher is not None:
            pairs = resolve_pairs(
                cfg.pairs,
                self.teacher.config.num_hidden_layers,
                student.config.num_hidden_layers,
            )
            hs, ht = student.config.hidden_size, self.teacher.config.hidden_size
            if hs != ht:
                proj = torch.nn.Linear(hs, ht, bias=False, device=d.device)
        self.t_layers = [t for t, _ in pairs]
        loss_kw = dict(
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            ce_weight=1.0 if cfg.teacher_correction else cfg.ce_weight,
            chunk_tokens=cfg.kl_chunk_tokens,
        )
        self.module = KDModule(student, proj, pairs, cfg.embedding_loss, loss_kw)
        dd.shard(self.module, student.model.layers, d, self.bf16)
        self.opt = torch.optim.AdamW(
            self.module.parameters(),
            lr=cfg.lr,
            betas=cfg.adam_betas,
            weight_decay=cfg.weight_decay,
            # Fused AdamW is ~10x faster than the per-parameter loop on CPU; FSDP2's sharded
            # DTensor parameters take the portable loop.
            fused=not d.enabled,
        )

    # ---------------------------------------------------------------- the loop
    def train(
        self,
        *,
        resume: bool,
        identity: dict[str, Any],
        progress: bool = True,
        title: str | None = None,
        final_checkpoint: bool = True,
        evaluate_start: bool = True,
    ) -> dict[str, Any]:
        """Run (or continue, with `resume`) the loop to `cfg.steps`: evaluate, step, log,
        checkpoint, then write the final model, the curves and the summary.

        Args:
            resume: continue from the newest checkpoint in the output folder.
            identity: what the run is (`inputs.run_identity`), stored with each checkpoint.
            progress: show a progress bar (main rank only).
            title: names the run in the progress bar and the curves.
            final_checkpoint: also checkpoint the last step.
            evaluate_start: evaluate before the first step (`*_before` in the summary).

        Returns:
            The run's summary (also written to `summary.json`).

        Raises:
            InputError: a teacher that fails the sanity check.
            StageError: a non-finite loss or gradient (the last good checkpoint is kept).
        """
        cfg, d, out = self.cfg, self.d, self.out
        ckdir, mpath = out / "checkpoints", out / METRICS
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
        dd.barrier(d)
        start, info = 0, {}
        ck = latest_checkpoint(ckdir) if resume else None
        if ck is not None:
            msd, tstate, meta = load_checkpoint(ck)
            self.restore(msd, tstate)
            start, info = int(meta["step"]), meta.get("info", {})
            self.keep_massive_float32(info, fresh=False)
            if d.is_main:
                mx.truncate(mpath, start)
        else:
            if d.is_main and mpath.exists():
                mpath.unlink()
            self.keep_massive_float32(info, fresh=True)
            info.update(self.teacher_check())
            if evaluate_start:
                before = self.evaluate()
                info.update({f"{k}_before": v for k, v in before.items()})
                if d.is_main:
                    mx.append(mpath, {"step": 0, **before})
        bar = mx.ProgressBar(
            cfg.steps, start, progress and d.is_main, f"distill {title or out.name}"
        )
        last_ck = str(ck) if ck else None
        last_eval: dict[str, float] = {}
        try:
            delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
            for step in range(start, cfg.steps):
                rec = self.step(step)
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
                    last_eval = self.evaluate()
                    rec.update(last_eval)
                if d.is_main:
                    mx.append(mpath, rec)
                bar.update(rec)
                # The last step is checkpointed too, so a finished run can be extended (--extend).
                last = done == cfg.steps
                if cfg.checkpoint_every and (
                    (done % cfg.checkpoint_every == 0 and not last) or (last and final_checkpoint)
                ):
                    msd, tstate = self.state()
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
            "teacher_layers_sharded": self.teacher_layers_sharded(),
            "wall_s": round(time.perf_counter() - self.t_start, 3),
            "final": "final",
            "identity": identity,
        }
        record = provenance(
            self.train_dir,
            extra={
                "distill": {"config": cfg.model_dump(mode="json"), "teacher": str(self.teacher_dir)}
            },
        )
        self.write_final(record)
        if d.is_main:
            kind = "teacher correction" if cfg.teacher_correction else "distillation"
            teacher_loss = info.get("teacher_val_loss") if not cfg.teacher_correction else None
            mx.plot(out / "curves.png", records, f"{title or out.name}: {kind}", teacher_loss)
            atomic_write_json(out / SUMMARY, summary)
        return summary

    # ---------------------------------------------------------------- data
    def load_data(self, train: Split, val: Split, holdout: dict[str, Split] | None = None) -> None:
        """Training windows served lazily from `train`; this rank's share of the validation
        rows (the first `eval_samples` windows of `val`'s fixed order), and as many rows of
        each held-out domain in `holdout`."""
        cfg = self.cfg
        source = WindowSource(train, cfg.seq_len, cfg.seed)
        self.batches = Batches(source, cfg.global_batch, cfg.micro_batch, self.d.world_size)
        self.val = self._eval_rows(val, "validation data")
        self.holdout = {
            name: self._eval_rows(split, f"held-out domain {name!r}")
            for name, split in (holdout or {}).items()
        }
        self.train_windows = len(source)

    def _eval_rows(self, split: Split, what: str) -> torch.Tensor:
        rows = split.rows(self.cfg.eval_samples, self.cfg.seq_len)
        keep = (rows.shape[0] // self.d.world_size) * self.d.world_size
        if keep == 0:
            raise InputError(
                f"{what} gives {rows.shape[0]} sequences, fewer than {self.d.world_size} ranks",
                fix="add text or lower --seq-len",
            )
        return rows[:keep][self.d.rank :: self.d.world_size]

    # ---------------------------------------------------------------- eval
    def teacher_layers_sharded(self) -> bool:
        """Whether the teacher's decoder weights are FSDP2 shards (DTensors) on this rank."""
        if self.teacher is None or not self.d.enabled:
            return False
        from torch.distributed.tensor import DTensor

        params = list(self.teacher.model.layers.parameters())
        return bool(params) and all(isinstance(p, DTensor) for p in params)

    def _teacher_out(self, ids: torch.Tensor):
        if self.teacher is None:
            return None, None
        with torch.no_grad():  # frozen: no graph, and FSDP2 frees each gathered layer at once
            to = teacher_forward(
                self.teacher, ids, self.t_layers, self.cfg.embedding_loss, self.bf16
            )
        return to, self.teacher.lm_head.weight

    @torch.no_grad()
    def evaluate(self, teacher_itself: bool = False) -> dict[str, float]:
        """Mean validation CE (LM loss) and KL to the teacher over all ranks' rows
        (`val_loss`, `val_kl`), and the same on each held-out domain (`holdout_<name>_loss`,
        `holdout_<name>_kl`)."""
        out = self._evaluate_rows(self.val, teacher_itself, "val")
        for name, rows in self.holdout.items():
            out.update(self._evaluate_rows(rows, teacher_itself, f"holdout_{name}"))
        return out

    def _evaluate_rows(self, rows: torch.Tensor, teacher_itself: bool, prefix: str) -> dict:
        self.module.eval()
        sums = [0.0, 0.0, 0.0, 0.0]  # ce*tokens, ce tokens, kl*tokens, kl tokens
        for a in range(0, rows.shape[0], self.cfg.micro_batch):
            ids = rows[a : a + self.cfg.micro_batch].to(self.d.device)
            labels = eval_labels(ids)
            n_ce, n_kl = float((labels >= 0).sum()), float(ids.numel())
            if teacher_itself:
                to = teacher_forward(self.teacher, ids, [], False, self.bf16)
                w = self.teacher.lm_head.weight
                ce = fused_logit_loss(to.hidden, w, labels=labels.reshape(-1), ce_weight=1.0).ce
                sums[0] += float(ce) * n_ce
                sums[1] += n_ce
                continue
            to, tw = self._teacher_out(ids)
            r = self.module(ids, labels, tw, to, self.bf16, ce_weight=1.0 if to is None else 0.5)
            sums[0] += float(r["ce"]) * n_ce
            sums[1] += n_ce
            if to is not None:  # no teacher (CE-only runs): no KL to report
                sums[2] += float(r["kl"]) * n_kl
                sums[3] += n_kl
        self.module.train()
        tot = dd.all_reduce_mean(sums, self.d)
        out = {f"{prefix}_loss": tot[0] / max(tot[1], 1.0)}
        if tot[3] > 0:
            out[f"{prefix}_kl"] = tot[2] / tot[3]
        return out

    def teacher_check(self) -> dict[str, float]:
        """The teacher's validation loss (`teacher_val_loss`) and held-out-domain losses
        (`teacher_holdout_<name>_loss`); raise if its validation loss is not finite and far
        below ln(vocab). Empty without a teacher."""
        if self.teacher is None and not self.cfg.teacher_correction:
            return {}
        evals = self.evaluate(teacher_itself=self.teacher is not None)
        loss = evals["val_loss"]
        vocab = self.src_cfg["vocab_size"]
        limit = self.cfg.teacher_check_ratio * math.log(vocab)
        if self.cfg.teacher_check and not (math.isfinite(loss) and loss < limit):
            raise InputError(
                f"teacher validation loss {loss:.3f} is not below {limit:.3f} "
                f"({self.cfg.teacher_check_ratio} x ln(vocab={vocab})): its weights look zeroed, "
                "random or mismatched with the tokenizer",
                fix="pass a trained teacher, or set teacher_check=False for random test models",
            )
        return {f"teacher_{k}": v for k, v in evals.items() if k.endswith("_loss")}

    def keep_massive_float32(self, info: dict[str, Any], fresh: bool) -> None:
        """Under bf16 autocast in one process, run the MLPs of the trained model's layers with
        massive activations in float32 (`model.outliers`: their bf16 gradients are mostly
        rounding). Found on a fresh start from the first validation rows and kept in the run's
        `info` (`float32_mlp_layers`), so a resumed run computes as it did; a run started before
        there was such a rule (no key) resumes without it. Distributed (FSDP2) runs keep their
        mixed-precision policy."""
        if not self.bf16 or self.d.enabled:
            return
        if fresh:
            model = self.module.student
            maxima = mlp_output_maxima(model, self.val[: self.cfg.micro_batch].to(self.d.device))
            info["float32_mlp_layers"] = massive_mlp_layers(maxima)
            info["mlp_output_maxima"] = [round(m, 1) for m in maxima]
        layers = info.get("float32_mlp_layers") or []
        if layers:
            keep_mlps_float32(self.module.student, layers)
            if self.d.is_main:
                print(
                    f"distill: bf16 autocast; layers {layers} have massive MLP activations "
                    f"(max |output| {max(info['mlp_output_maxima']):,.0f}): their MLPs run in "
                    "float32",
                    file=sys.stderr,
                )

    # ---------------------------------------------------------------- state
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.d.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd, osd = get_state_dict(self.module, self.opt, options=opts)
        else:
            msd, osd = self.module.state_dict(), self.opt.state_dict()
        return msd, {"optimizer": osd, "rng": rng_state()}

    def restore(self, msd: dict[str, torch.Tensor], tstate: dict[str, Any]) -> None:
        if self.d.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            opts = StateDictOptions(full_state_dict=True)
            set_state_dict(
                self.module,
                self.opt,
                model_state_dict=msd,
                optim_state_dict=tstate["optimizer"],
                options=opts,
            )
        else:
            self.module.load_state_dict(msd)
            self.opt.load_state_dict(tstate["optimizer"])
        set_rng_state(tstate["rng"])

    # ---------------------------------------------------------------- one step
    def step(self, step: int) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        lr = lr_at(
            step,
            lr=cfg.lr,
            min_lr=cfg.final_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
        )
        for g in self.opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        acc = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "inter": 0.0, "alpha": 0.0}
        n = self.batches.accum
        for m in range(n):
            ids, labels = (x.to(d.device) for x in self.batches.get(step, m, d.rank))
            to, tw = self._teacher_out(ids)
            r = self.module(ids, labels, tw, to, self.bf16)
            (r["loss"] / n).backward()
            for k in acc:
                acc[k] += float(r[k].detach()) / n
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        vals = dd.all_reduce_mean(list(acc.values()), d)
        parts = dict(zip(acc, vals, strict=True))
        grad_norm = float(norm)
        bad = not (math.isfinite(parts["loss"]) and math.isfinite(grad_norm))
        if dd.any_rank(bad, d):
            return {"step": step + 1, "nonfinite": True, "loss": parts["loss"]}
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss = parts.pop("loss")
        if not (self.teacher is not None and self.module.pairs):
            parts.pop("inter"), parts.pop("alpha")
        return {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": cfg.global_batch * cfg.seq_len / dt,
            "parts": parts,
        }

    # ---------------------------------------------------------------- final model
    def write_final(self, record: dict[str, Any]) -> Path:
        from transformers import LlamaForCausalLM

        student = self.module.student
        if self.d.enabled:
            msd, _ = self.state()
            if not self.d.is_main:
                return self.out / "final"
            student = LlamaForCausalLM(self.module.student.config)
            student.load_state_dict(student_state(msd))
        if self.cfg.gradient_checkpointing:
            off = getattr(student, "activation_checkpointing_disable", None)
            (off or student.gradient_checkpointing_disable)()
        dtype = resolve_dtype("auto", self.src_cfg)
        with atomic_dir(self.out / "final", overwrite=True) as tmp:
            write_llama(student.eval(), tmp, source=self.train_dir, dtype=dtype, record=record)
        return self.out / "final"
