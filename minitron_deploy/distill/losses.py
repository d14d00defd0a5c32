"""Distillation losses: fused, token-chunked logit KL/CE; cosine losses on hidden states.

The logit loss never materialises [tokens x vocab] float32 logits for the whole batch. For each
chunk of tokens it computes both models' logits from final hidden states x lm_head, the loss,
and the gradient of the loss with respect to the student's logits, which it folds straight
into gradients for the student's hidden states and lm_head (the "fused linear + loss" trick).
Backward then only scales those stored gradients, so neither pass keeps more than one chunk
of logits alive: peak extra memory is ~4 x chunk x vocab x 4 bytes plus one fp32 lm_head grad.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class LogitLoss(NamedTuple):
    """total = (1 - ce_weight) * T^2 * KL + ce_weight * CE (differentiable); kl, ce: detached."""

    total: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def _teacher_probs(zt: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p, p) of the teacher; with top-K, renormalised over its K largest logits (p=0 else)."""
    if top_k is None or top_k >= zt.shape[-1]:
        logp = zt.log_softmax(-1)
        return logp, logp.exp()
    vals, idx = zt.topk(top_k, dim=-1)
    logp_k = vals.log_softmax(-1)
    logp = torch.full_like(zt, float("-inf")).scatter_(-1, idx, logp_k)
    p = torch.zeros_like(zt).scatter_(-1, idx, logp_k.exp())
    return logp, p


class _FusedLogitLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, temperature, top_k, ce_weight, chunk, need_grad):  # type: ignore[override]  # noqa: E501
        with torch.autocast(h_s.device.type, enabled=False):
            hs, ws = h_s.detach().float(), w_s.detach().float()
            wt = w_t.detach().float() if w_t is not None else None
            n = hs.shape[0]
            grad_h = torch.empty_like(hs)
            grad_w = torch.zeros_like(ws)
            kl_sum = hs.new_zeros(())
            ce_sum = hs.new_zeros(())
            t = float(temperature)
            use_kl = ce_weight < 1.0
            n_ce = (
                int((labels != IGNORE_INDEX).sum()) if labels is not None and ce_weight > 0 else 0
            )
            kl_coef = (1.0 - ce_weight) * t / n  # d(T^2 KL(z/T))/dz = T (q - p)
            ce_coef = ce_weight / max(1, n_ce)
            for a in range(0, n, chunk):
                # At most ~3 [chunk x vocab] fp32 buffers live at once; in-place ops reuse them.
                b = min(n, a + chunk)
                zs = hs[a:b] @ ws.T
                g = None
                if n_ce:
                    lab = labels[a:b]
                    keep = lab != IGNORE_INDEX
                    q1 = zs.log_softmax(-1)
                    picked = q1.gather(-1, lab.clamp_min(0)[:, None])[:, 0]
                    ce_sum -= picked[keep].sum()
                    q1.exp_()
                    q1[keep.logical_not()] = 0.0
                    rows = keep.nonzero()[:, 0]
                    q1[rows, lab[rows]] -= 1.0
                    g = q1.mul_(ce_coef)
                    del q1
                if use_kl:
                    logq = zs.div_(t).log_softmax(-1)
                    del zs
                    zt = h_t[a:b].detach().float() @ wt.T
                    logp, p = _teacher_probs(zt.div_(t), top_k)
                    del zt
                    diff = logp.sub_(logq).mul_(p).nan_to_num_(0.0)  # p=0 -> 0*(-inf-x) -> 0
                    kl_sum += diff.sum()
                    del diff, logp
                    gk = logq.exp_().sub_(p).mul_(kl_coef)
                    del logq, p
                    g = gk if g is None else g.add_(gk)
                    del gk
                else:
                    del zs
                if need_grad:
                    grad_h[a:b] = g @ ws
                    grad_w.addmm_(g.T, hs[a:b])
                del g
        kl = kl_sum / n * t * t if use_kl else kl_sum
        ce = ce_sum / max(1, n_ce)
        total = (1.0 - ce_weight) * kl + ce_weight * ce
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h_s.dtype, w_s.dtype)
        ctx.mark_non_differentiable(kl, ce)
        return total, kl, ce

    @staticmethod
    def backward(ctx, g_total, _g_kl, _g_ce):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        dh, dw = ctx.dtypes
        return (
            (grad_h * g_total).to(dh),
            (grad_w * g_total).to(dw),
            *([None] * 8),
        )


def fused_logit_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor | None = None,
    w_t: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    ce_weight: float = 0.0,
    chunk_tokens: int = 1024,
) -> LogitLoss:
    """Forward KL(teacher || student) and/or CE from final hidden states, chunked over tokens.

    Args:
        h_s: student final (post-norm) hidden states [N, Hs] (any float dtype).
        w_s: student lm_head weight [V, Hs] (gets a gradient).
        h_t: teacher final hidden states [N, Ht]; needed unless ce_weight == 1.
        w_t: teacher lm_head weight [V, Ht].
        labels: next-token ids [N] (IGNORE_INDEX to skip); needed when ce_weight > 0.
        temperature: softmax temperature of the KL (scaled by T^2, as in Hinton et al.).
        top_k: keep only the teacher's top-K logits, renormalised.
        ce_weight: weight w of CE in (1-w)*KL + w*CE.
        chunk_tokens: tokens per chunk.

    Returns:
        LogitLoss with means over tokens.
    """
    if ce_weight < 1.0 and (h_t is None or w_t is None):
        raise ValueError("the KL term needs teacher hidden states and lm_head weight")
    if ce_weight > 0 and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    if h_t is not None and h_t.shape[0] != h_s.shape[0]:
        raise ValueError(f"token counts differ: student {h_s.shape[0]}, teacher {h_t.shape[0]}")
    total, kl, ce = _FusedLogitLoss.apply(
        h_s,
        w_s,
        h_t,
        w_t,
        labels,
        temperature,
        top_k,
        ce_weight,
        max(1, int(chunk_tokens)),
        torch.is_grad_enabled() and (h_s.requires_grad or w_s.requires_grad),
    )
    return LogitLoss(total, kl, ce)


def naive_logit_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor | None = None,
    w_t: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    ce_weight: float = 0.0,
) -> LogitLoss:
    """The same loss with full fp32 logits and autograd (reference for tests and benchmarks)."""
    t = temperature
    zs = (h_s @ w_s.T).float()
    kl = zs.new_zeros(())
    if ce_weight < 1.0:
        zt = (h_t @ w_t.T).float().detach() / t
        logp, p = _teacher_probs(zt, top_k)
        logq = (zs / t).log_softmax(-1)
        kl = (p * (logp - logq)).nan_to_num(0.0).sum(-1).mean() * t * t
    ce = zs.new_zeros(())
    if ce_weight > 0:
        ce = F.cross_entropy(zs, labels, ignore_index=IGNORE_INDEX)
    total = (1.0 - ce_weight) * kl + ce_weight * ce
    return LogitLoss(total, kl.detach(), ce.detach())


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free RMSNorm (fp32): the 'post-norm' view of a residual-stream state."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, projection: torch.nn.Module | None = None
) -> torch.Tensor:
    """Mean over tokens of 1 - cos(proj(norm(student)), norm(teacher)).

    Cosine similarity ignores each token's scale, so the per-token RMS normalisation only keeps
    the projection's input in a sane range; the norms' learned gains are not applied.
    """
    s = rms_normalize(student)
    if projection is not None:
        s = projection(s.to(projection.weight.dtype)).float()
    t = rms_normalize(teacher.detach())
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"hidden sizes differ ({s.shape[-1]} vs {t.shape[-1]}) and no projection was given"
        )
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def combine(logit: torch.Tensor, intermediate: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """L = L_logits + alpha * L_intermediate with alpha = L_logits / L_intermediate (detached).

    Returns:
        (total loss, alpha); alpha is 0 when there is no intermediate loss.
    """
    if intermediate is None:
        return logit, 0.0
    alpha = float(logit.detach()) / max(float(intermediate.detach()), 1e-12)
    return logit + alpha * intermediate, alpha
