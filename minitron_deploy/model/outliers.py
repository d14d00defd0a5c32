"""Layers with massive activations, kept in float32 when a model trains under bf16 autocast.

Llama models put a few activations of 10^3-10^4 (Sun et al., "Massive Activations in Large
Language Models", 2024) into the residual stream from the MLPs of a few layers (SmolLM2-135M:
layers 11 and 28, 26,240 and 14,336 against a median over layers of ~43). Under bf16 autocast
the input gradients of such a layer's gate and up projections - each rounded to bf16 - nearly
cancel, and what is left is mostly rounding: on a pruned SmolLM2 width student (hidden 384, 6
heads) the gradient reaching layers 0-10 had a cosine of 0.67-0.87 with float32's, and 24 steps
of distillation ended 1.4 nats worse (validation 6.58 against 5.20). Running those layers' MLPs in
float32 (layers 11 and 28 of 30; the rest stays in bf16) brought it to 4.95.

`massive_mlp_layers` finds them from one no-grad forward (an MLP whose largest |output| is at
least `MASSIVE_RATIO` times the median over layers); `keep_mlps_float32` makes their MLPs run
with autocast off, in float32, without changing the module tree or the state dict.
"""

from __future__ import annotations

import statistics
from types import MethodType
from typing import Any

import torch

# an MLP is massive when its largest |output| is this many times the median over the layers
# (SmolLM2-135M: 613x and 335x for the two massive layers, at most 34x for the others; a pruned
# width student 377x and 375x, at most 34x)
MASSIVE_RATIO = 100.0


@torch.no_grad()
def mlp_output_maxima(model: Any, input_ids: torch.Tensor, bf16: bool = True) -> list[float]:
    """Each decoder layer's largest |MLP output| on `input_ids` (one forward of the body, under
    bf16 autocast when `bf16`, as training computes it)."""
    layers = model.model.layers
    maxima = [0.0] * len(layers)

    def record(i: int):
        def hook(_mod, _inp, out):
            maxima[i] = max(maxima[i], float(out.detach().abs().max()))

        return hook

    hooks = [layer.mlp.register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    try:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            model.model(input_ids=input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return maxima


def massive_mlp_layers(maxima: list[float], ratio: float = MASSIVE_RATIO) -> list[int]:
    """Indices of the layers whose MLP maximum is at least `ratio` x the median over layers
    (none with fewer than 3 layers: no median to speak of)."""
    if len(maxima) < 3:
        return []
    med = statistics.median(maxima)
    return [i for i, m in enumerate(maxima) if med > 0 and m >= ratio * med]


def _float32_forward(self, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float())


def keep_mlps_float32(model: Any, layers: list[int]) -> None:
    """Run the MLPs of `layers` in float32 with autocast off (their weights must be float32,
    as a trained model's master weights are); the module tree and state dict are unchanged."""
    for i in layers:
        mlp = model.model.layers[i].mlp
        if mlp.down_proj.weight.dtype != torch.float32:
            raise ValueError(f"layer {i}'s MLP weights are {mlp.down_proj.weight.dtype}")
        mlp.forward = MethodType(_float32_forward, mlp)
