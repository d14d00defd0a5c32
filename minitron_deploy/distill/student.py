"""The trained module (student + shared projection) and the frozen teacher's forward pass.

`KDModule.forward` runs the student body, then the fused chunked logit loss using its own
lm_head weight, plus optional cosine losses on mapped layers. Keeping the loss inside the
module's forward matters for FSDP2: the root unit's parameters (embeddings, final norm,
lm_head, projection) are only gathered during the root's forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minitron_deploy.distill.losses import combine, cosine_loss, fused_logit_loss
from minitron_deploy.errors import ConfigError

EMBED = "embed"


def resolve_pairs(pairs: list[tuple[int, int]], n_teacher: int, n_student: int) -> list:
    """Turn possibly negative (teacher, student) layer indices into checked 0-based ones."""

    out = []
    for t, s in pairs:
        tt, ss = t % n_teacher if t < 0 else t, s % n_student if s < 0 else s
        if not (0 <= tt < n_teacher and 0 <= ss < n_student) or (t < -n_teacher or s < -n_student):
            raise ConfigError(
                f"layer pair ({t}, {s}) is out of range for a {n_teacher}-layer teacher and a "
                f"{n_student}-layer student",
                where="layer_map",
            )
        out.append((tt, ss))
    return out


class _Capture:
    """Forward hooks that keep the first output of chosen modules during one forward."""

    def __init__(self, modules: dict[Any, nn.Module]):
        self.out: dict[Any, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in modules.items()]

    def _hook(self, key: Any):
        def hook(_mod, _inp, output):
            if key not in self.out:  # gradient-checkpoint recompute calls the hook again
                self.out[key] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def capture_points(model: nn.Module, layers: list[int], embedding: bool) -> dict[Any, nn.Module]:
    """Modules whose outputs are the hidden states of `layers` (and the embedding output)."""
    points: dict[Any, nn.Module] = {i: model.model.layers[i] for i in layers}
    if embedding:
        points[EMBED] = model.model.embed_tokens
    return points


@dataclass
class TeacherOut:
    """The teacher's final post-norm hidden states [N, H] and captured intermediate states."""

    hidden: torch.Tensor
    states: dict[Any, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, input_ids: torch.Tensor, layers: list[int], embedding: bool, bf16: bool
) -> TeacherOut:
    """Forward the frozen teacher body (no lm_head: logits are made chunk by chunk later)."""
    cap = _Capture(capture_points(teacher, layers, embedding))
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            h = teacher.model(input_ids=input_ids, use_cache=False).last_hidden_state
    finally:
        cap.remove()
    return TeacherOut(h.reshape(-1, h.shape[-1]), cap.out)


class KDModule(nn.Module):
    """Student + the shared student->teacher projection; forward returns the losses.

    Args:
        student: a `LlamaForCausalLM` (trained).
        projection: Linear(student hidden -> teacher hidden) or None when sizes match or when
            no intermediate loss is used.
        pairs: resolved (teacher layer, student layer) pairs; empty for logit-only.
        embedding: add the embedding-output cosine loss.
        loss_kw: temperature, top_k, ce_weight, chunk_tokens for `fused_logit_loss`.
    """

    def __init__(
        self,
        student: nn.Module,
        projection: nn.Module | None,
        pairs: list[tuple[int, int]],
        embedding: bool,
        loss_kw: dict[str, Any],
    ):
        super().__init__()
        self.student = student
        self.proj = projection
        self.pairs = pairs
        self.embedding = embedding
        self.loss_kw = loss_kw

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        teacher_w: torch.Tensor | None = None,
        teacher: TeacherOut | None = None,
        bf16: bool = False,
        ce_weight: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for one micro-batch: `loss` (to backpropagate) and detached parts."""
        cap = _Capture(capture_points(self.student, [s for _, s in self.pairs], self.embedding))
        try:
            with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
                h = self.student.model(input_ids=input_ids, use_cache=False).last_hidden_state
        finally:
            cap.remove()
        h = h.reshape(-1, h.shape[-1])
        logit = fused_logit_loss(
            h,
            self.student.lm_head.weight,
            teacher.hidden if teacher is not None else None,
            teacher_w,
            labels.reshape(-1) if labels is not None else None,
            **{**self.loss_kw, **({} if ce_weight is None else {"ce_weight": ce_weight})},
        )
        inter = None
        if teacher is not None and (self.pairs or self.embedding):
            keys = [(t, s) for t, s in self.pairs]
            if self.embedding:
                keys.append((EMBED, EMBED))
            inter = sum(
                cosine_loss(
                    cap.out[s].reshape(-1, cap.out[s].shape[-1]),
                    teacher.states[t].reshape(-1, teacher.states[t].shape[-1]),
                    self.proj,
                )
                for t, s in keys
            )
        total, alpha = combine(logit.total, inter)
        zero = total.new_zeros(())
        return {
            "loss": total,
            "kl": logit.kl,
            "ce": logit.ce,
            "inter": inter.detach() if inter is not None else zero,
            "alpha": total.new_tensor(alpha),
        }
