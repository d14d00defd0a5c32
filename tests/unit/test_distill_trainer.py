"""The distillation trainer on tiny models: learning, clean output, safety checks, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from minitron_deploy.distill import DistillConfig, run_distillation
from minitron_deploy.errors import InputError, StageError
from minitron_deploy.testing import rel_tolerance

TINY = dict(
    global_batch=4,
    micro_batch=2,
    seq_len=32,
    warmup_steps=2,
    lr=2e-3,
    min_lr=1e-4,
    eval_samples=4,
    teacher_check=False,
)


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    """A narrower, shallower student sharing the teacher's vocabulary (hidden 72, 3 layers)."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("student") / "s",
        seed=5,
        hidden_size=72,
        intermediate_size=120,
        num_hidden_layers=3,
    )


@pytest.mark.numerics
def test_kd_with_intermediate_losses_learns_and_writes_a_clean_student(
    tiny_ckpt, student_ckpt, text_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    cfg = DistillConfig(
        steps=8, eval_every=4, checkpoint_every=4, intermediate=True, embedding_loss=True, **TINY
    )
    out = tmp_path / "run"
    summary = run_distillation(
        tiny_ckpt, student_ckpt, out, cfg, train_data=str(text_dir), progress=False
    )
    assert summary["val_kl_after"] < summary["val_kl_before"]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "lr" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for r in steps:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "parts"} <= set(r)
        assert set(r["parts"]) == {"kl", "ce", "inter", "alpha"}
        # dynamic alpha makes alpha * L_inter equal L_logits, so the total is twice the KL
        assert r["loss"] == pytest.approx(2 * r["parts"]["kl"], rel=1e-4)
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "checkpoints" / "step_000004" / "model.safetensors").is_file()
    assert any(k.startswith("proj.") for k in _ckpt_keys(out / "checkpoints" / "step_000004"))
    model = AutoModelForCausalLM.from_pretrained(out / "final")  # stock transformers, no wrappers
    assert model.config.hidden_size == 72 and model.config.head_dim == 16
    names = set(model.state_dict())
    assert not any(n.startswith(("proj", "student.")) for n in names)
    logits = model(torch.tensor([[1, 5, 9, 40]])).logits
    assert torch.isfinite(logits).all()


def _ckpt_keys(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


@pytest.mark.numerics
def test_teacher_correction_is_ce_fine_tuning_of_the_teacher(tiny_ckpt, text_dir, tmp_path):
    cfg = DistillConfig(steps=4, eval_every=0, checkpoint_every=0, teacher_correction=True, **TINY)
    summary = run_distillation(
        tiny_ckpt, None, tmp_path / "tc", cfg, train_data=str(text_dir), progress=False
    )
    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert summary["teacher_val_loss"] == pytest.approx(summary["val_loss_before"], rel=1e-5)
    assert summary["val_kl_after"] is None  # no teacher in the loop, so no KL is reported
    rec = json.loads((tmp_path / "tc" / "metrics.jsonl").read_text().splitlines()[1])
    assert rec["parts"]["kl"] == 0.0 and rec["parts"]["ce"] == pytest.approx(rec["loss"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_checkpointing_and_chunk_size_leave_the_losses_unchanged(
    tiny_ckpt, student_ckpt, text_dir, tmp_path, dtype
):
    """Recomputed activations and a KL chunked by 7 tokens reduce in another order: the curves
    agree within `rel_tolerance(dtype, steps)` (eps-derived; float32 1.4e-6, bf16 9.4e-2). The
    comparison is sensitive: with dynamic alpha the total is 2 x KL, so dropping the
    intermediate term halves it and a wrong sign zeroes it, far beyond either tolerance."""
    steps, curves = 2, []
    for name, extra in (("a", {}), ("b", {"gradient_checkpointing": True, "kl_chunk_tokens": 7})):
        cfg = DistillConfig(
            steps=steps, eval_every=0, checkpoint_every=0, intermediate=True, dtype=dtype,
            **TINY, **extra,
        )  # fmt: skip
        run_distillation(
            tiny_ckpt, student_ckpt, tmp_path / name, cfg, train_data=str(text_dir), progress=False
        )
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        keys = ("loss", "grad_norm", "val_loss", "val_kl")
        curves.append([r[k] for r in recs for k in keys if k in r])
        train = [r for r in recs if "parts" in r]
    assert len(curves[0]) == 2 * 2 + 2 * 2  # (val_loss, val_kl) before and after, 2 steps
    tol = rel_tolerance(dtype, steps)
    assert curves[0] == pytest.approx(curves[1], rel=tol)
    for r in train:  # each term moves the total by far more than the tolerance
        p = r["parts"]
        assert min(p["kl"], p["alpha"] * p["inter"]) > 4 * tol * r["loss"]


def test_a_run_that_skips_the_start_evaluation_trains_the_same(
    tiny_ckpt, student_ckpt, text_dir, tmp_path
):
    """`evaluate_start=False` (the search's re-rank runs read only the end): no step-0
    evaluation and no `*_before` in the summary; the training and the end evaluation are the
    run's with it (an evaluation changes no state)."""
    cfg = DistillConfig(steps=3, eval_every=0, checkpoint_every=0, **TINY)
    runs = {}
    for start in (True, False):
        out = tmp_path / str(start)
        summary = run_distillation(
            tiny_ckpt, student_ckpt, out, cfg, train_data=str(text_dir), progress=False,
            evaluate_start=start,
        )  # fmt: skip
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        runs[start] = summary, recs
    (with_start, recs_a), (without, recs_b) = runs[True], runs[False]
    assert "val_loss_before" in with_start and recs_a[0]["step"] == 0
    assert not any(k.endswith("_before") for k in without)
    assert [r["step"] for r in recs_b] == [1, 2, 3]

    def timeless(recs):  # tokens_per_s is the clock's
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]

    # the same losses, gradients and end evaluation, bit for bit
    assert timeless(recs_b) == timeless(recs_a[1:])
    assert without["val_loss_after"] == with_start["val_loss_after"]


def test_teacher_sanity_check_rejects_a_random_teacher(tiny_ckpt, student_ckpt, text_dir, tmp_path):
    cfg = DistillConfig(steps=2, **{**TINY, "teacher_check": True})
    with pytest.raises(InputError, match="teacher validation loss"):
        run_distillation(
            tiny_ckpt, student_ckpt, tmp_path / "x", cfg, train_data=str(text_dir), progress=False
        )


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_ckpt, student_ckpt, text_dir, tmp_path
):
    # An absurd LR: after one AdamW step every weight moves by ~1e30, so step 2 overflows.
    cfg = DistillConfig(
        steps=3, eval_every=0, checkpoint_every=1, **{**TINY, "lr": 1e30, "warmup_steps": 0}
    )
    out = tmp_path / "nan"
    with pytest.raises(StageError, match="non-finite") as e:
        run_distillation(
            tiny_ckpt, student_ckpt, out, cfg, train_data=str(text_dir), progress=False
        )
    assert "step_000001" in str(e.value)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert not (out / "final").exists()


def test_existing_output_needs_resume(tiny_ckpt, student_ckpt, text_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "metrics.jsonl").write_text("{}\n")
    cfg = DistillConfig(steps=1, **TINY)
    with pytest.raises(InputError, match="--resume"):
        run_distillation(tiny_ckpt, student_ckpt, tmp_path / "busy", cfg, train_data=str(text_dir))


def test_cli_estimate_prints_plan_json(capsys):
    from minitron_deploy.cli import main

    rc = main(
        [
            "distill",
            "--teacher",
            "llama-3.1-8b",
            "--student",
            "llama-3.1-minitron-4b-depth",
            "--estimate",
            "--world-size",
            "8",
            "--micro-batch",
            "1",
            "--seq-len",
            "8192",
            "--json",
        ]
    )
    assert rc == 0
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert est["world_size"] == 8 and est["student"]["num_hidden_layers"] == 16


def test_cli_reports_bad_settings_as_one_line_error(tiny_ckpt, capsys):
    from minitron_deploy.cli import main

    rc = main(["distill", "--teacher", str(tiny_ckpt), "--student", str(tiny_ckpt), "--data",
               "x", "--out", "y", "--global-batch", "6", "--micro-batch", "4"])  # fmt: skip
    assert rc == 2
    assert "global_batch" in capsys.readouterr().err
