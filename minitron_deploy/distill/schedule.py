"""Learning-rate schedule: linear warm-up, then cosine decay to a minimum (P2 Table 4)."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up goes linearly from lr/warmup to lr over `warmup_steps` steps (the first step
    never uses LR 0, which would waste it); then a half cosine from lr to min_lr ends at the
    last step.

    Args:
        step: 0-based index of the optimizer step about to run.
        lr: peak learning rate.
        min_lr: learning rate at the last step.
        warmup_steps: number of warm-up steps.
        total_steps: total optimizer steps of the run.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
