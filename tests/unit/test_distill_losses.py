"""Distillation losses, schedule, config, batching and memory planner (no training runs)."""

from __future__ import annotations

import math

import pytest
import torch

from minitron_deploy.distill.batches import Batches
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.distill.losses import (
    IGNORE_INDEX,
    combine,
    cosine_loss,
    fused_logit_loss,
    naive_logit_loss,
)
from minitron_deploy.distill.memory import estimate_memory
from minitron_deploy.distill.schedule import lr_at


def _inputs(n=37, v=101, hs=12, ht=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(n, hs, generator=g, dtype=torch.float64)
    w_s = torch.randn(v, hs, generator=g, dtype=torch.float64)
    h_t = torch.randn(n, ht, generator=g, dtype=torch.float64)
    w_t = torch.randn(v, ht, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::7] = IGNORE_INDEX
    return h_s, w_s, h_t, w_t, labels


@pytest.mark.parametrize(
    ("temperature", "top_k", "ce_weight"),
    [(1.0, None, 0.0), (2.0, None, 0.0), (1.0, 7, 0.0), (1.5, None, 0.3), (1.0, None, 1.0)],
)
def test_fused_chunked_loss_matches_full_logits_value_and_grads(temperature, top_k, ce_weight):
    h_s, w_s, h_t, w_t, labels = _inputs()
    kw = dict(temperature=temperature, top_k=top_k, ce_weight=ce_weight)
    a_h, a_w = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    fused = fused_logit_loss(a_h, a_w, h_t, w_t, labels, chunk_tokens=10, **kw)
    (2.5 * fused.total).backward()
    b_h, b_w = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    ref = naive_logit_loss(b_h, b_w, h_t, w_t, labels, **kw)
    (2.5 * ref.total).backward()
    assert float(fused.total.detach()) == pytest.approx(float(ref.total.detach()), rel=1e-5)
    assert float(fused.kl) == pytest.approx(float(ref.kl), rel=1e-5, abs=1e-6)
    assert float(fused.ce) == pytest.approx(float(ref.ce), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(a_h.grad, b_h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a_w.grad, b_w.grad, rtol=1e-4, atol=1e-6)


def test_chunk_size_does_not_change_the_loss():
    h_s, w_s, h_t, w_t, _ = _inputs(n=50)
    vals = [float(fused_logit_loss(h_s, w_s, h_t, w_t, chunk_tokens=c).total) for c in (1, 7, 50)]
    assert max(vals) - min(vals) < 1e-5


def test_kl_is_zero_when_student_equals_teacher_and_positive_otherwise():
    h_s, w_s, _, _, _ = _inputs()
    same = fused_logit_loss(h_s, w_s, h_s, w_s)
    assert abs(float(same.total)) < 1e-5
    other = fused_logit_loss(h_s, w_s, h_s, w_s * 0.5)
    assert float(other.total) > 1e-3


def test_cosine_loss_and_dynamic_alpha():
    x = torch.randn(9, 16)
    assert float(cosine_loss(3.0 * x, x)) == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert float(cosine_loss(-x, x)) == pytest.approx(2.0, abs=1e-5)
    proj = torch.nn.Linear(8, 16, bias=False)
    assert cosine_loss(torch.randn(9, 8), x, proj).shape == ()
    with pytest.raises(ValueError):
        cosine_loss(torch.randn(9, 8), x)
    logit = torch.tensor(0.7, requires_grad=True)
    inter = torch.tensor(3.5, requires_grad=True)
    total, alpha = combine(logit, inter)
    assert alpha == pytest.approx(0.2)
    assert float(total.detach()) == pytest.approx(1.4)  # alpha * L_inter equals L_logits
    total.backward()
    assert float(inter.grad) == pytest.approx(0.2)  # alpha is detached: a constant weight


def test_schedule_warmup_then_cosine_to_min():
    kw = dict(lr=1e-4, min_lr=1e-5, warmup_steps=40, total_steps=200)
    lrs = [lr_at(s, **kw) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4 / 40)
    assert lrs[39] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:39], lrs[1:40], strict=True))
    assert all(a >= b for a, b in zip(lrs[40:], lrs[41:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5)
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=1) == 1.0


def test_config_defaults_follow_p2_and_reject_bad_settings():
    cfg = DistillConfig()
    assert (cfg.lr, cfg.final_lr, cfg.warmup_steps, cfg.temperature) == (1e-4, 1e-5, 40, 1.0)
    assert DistillConfig(lr=3e-4).final_lr == pytest.approx(3e-5)  # lr / 10 unless set
    assert cfg.ce_weight == 0.0 and cfg.top_k is None and not cfg.intermediate
    assert cfg.pairs == [(-2, -2)]
    for bad in (
        dict(global_batch=6, micro_batch=4),
        dict(lr=1e-5, min_lr=1e-4),
        dict(embedding_loss=True),
        dict(dtype="fp8"),
        dict(unknown_field=1),
    ):
        with pytest.raises(ValueError):
            DistillConfig(**bad)
    with pytest.raises(ValueError):
        cfg.steps = 3  # frozen


def test_batches_one_rank_with_accumulation_equals_two_ranks():
    class Rows:  # windows by global index: a fixed permutation of 13 rows per epoch
        def __init__(self):
            from minitron_deploy.data.sampler import WindowSampler

            self.rows, self.order = torch.arange(13 * 5).view(13, 5), WindowSampler(13, 3)

        def get(self, indices):
            return self.rows[[self.order(i) for i in indices]]

    one = Batches(Rows(), global_batch=4, micro_batch=2, world_size=1)
    two = Batches(Rows(), global_batch=4, micro_batch=2, world_size=2)
    assert one.accum == 2 and two.accum == 1
    seen = []
    for step in range(6):  # crosses epoch boundaries (13 rows, 4 per step)
        for r in range(2):
            a, la = one.get(step, r, 0)
            b, lb = two.get(step, 0, r)
            assert torch.equal(a, b) and torch.equal(la, lb)
            seen += a[:, 0].tolist()
        assert torch.equal(la[:, :-1], a[:, 1:]) and (la[:, -1] == IGNORE_INDEX).all()
    assert sorted(seen[:13]) == list(range(0, 65, 5))  # epoch 0 is every row once
    fresh = Batches(Rows(), 4, 2, 1)
    assert torch.equal(fresh.get(5, 1, 0)[0], one.get(5, 1, 0)[0])  # resume needs only the step


def test_memory_plan_8b_to_4b_on_8x80gb():
    plain = estimate_memory("llama-3.1-8b", "llama-3.1-minitron-4b-width", 8, 1, 8192)
    ckpt = estimate_memory(
        "llama-3.1-8b", "llama-3.1-minitron-4b-width", 8, 1, 8192, gradient_checkpointing=True
    )
    one = estimate_memory(
        "llama-3.1-8b", "llama-3.1-minitron-4b-width", 1, 1, 8192, gradient_checkpointing=True
    )
    assert ckpt["total_bytes"] < plain["total_bytes"]
    assert one["total_bytes"] > ckpt["total_bytes"]  # sharding helps
    assert ckpt["fits"] and not one["fits"]
    c = ckpt["components"]
    p4 = ckpt["student"]
    assert c["adamw_moments_fp32"] == pytest.approx(8 * _params(p4) / 8, rel=1e-6)
    # Llama-3.1-8B: layers sharded 8 ways, embeddings + lm_head (2 x 525M) whole, 2 layers gathered
    t8 = ckpt["teacher"]
    emb = 2 * t8["vocab_size"] * t8["hidden_size"]
    layer = (_params(t8) - emb) / t8["num_hidden_layers"]
    want = 2 * (8.03e9 - emb) / 8 + 2 * emb + 2 * 2 * layer
    assert c["teacher_bf16"] == pytest.approx(want, rel=0.01)
    replicated = estimate_memory(
        "llama-3.1-8b", "llama-3.1-minitron-4b-width", 8, 1, 8192, teacher_sharded=False
    )
    assert replicated["components"]["teacher_bf16"] == pytest.approx(2 * 8.03e9, rel=0.01)
    assert replicated["total_bytes"] > plain["total_bytes"]
    assert math.isclose(ckpt["total_gib"] * 1024**3, ckpt["total_bytes"], rel_tol=1e-3)


def _params(shape: dict) -> int:
    from minitron_deploy.model.shapes import LlamaShape

    return LlamaShape(**shape).num_parameters
