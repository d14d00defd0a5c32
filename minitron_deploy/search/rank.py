"""Families of candidate shapes, the seed recipe's shapes, the re-rank selection and the
agreement of two rankings. Torch-free, standard library only.

Zero-shot loss ranks families differently from the loss after distillation (a pruned model that
lost whole layers starts far worse than one that lost channels, and recovers faster), so the
short-distillation re-rank takes the best few of *each* family by zero-shot loss instead of the
top of one list (Minitron, Sreenivas et al. 2024: the order after a short retraining differs
from the zero-shot one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from minitron_deploy.model.shapes import LlamaShape

FAMILIES = ("depth", "width", "mixed")


def family(c: Any, source: LlamaShape) -> str:
    """depth: only layers removed; width: every layer kept; mixed: both."""
    same_width = (
        c.hidden_size == source.hidden_size
        and c.intermediate_size == source.intermediate_size
        and c.num_attention_heads == source.num_attention_heads
        and c.num_key_value_heads == source.num_key_value_heads
    )
    if c.num_layers == source.num_hidden_layers:
        return "width"
    return "depth" if same_width else "mixed"


def _round_up(x: float, multiple: int) -> int:
    return max(1, math.ceil(x / multiple - 1e-9)) * multiple


def seed_targets(source: LlamaShape, multiple: int = 64) -> list[dict[str, int]]:
    """The seed recipe's two students (Minitron's): pure depth to half the layers, and pure
    width to the Minitron targets (Llama-3.1-Minitron-4B-Width: hidden 4096 -> 3072, FFN
    14336 -> 9216, every attention head and layer kept), i.e. 3/4 of the hidden size and 9/14 of
    the FFN size, rounded up (never cut deeper than Minitron's fractions): the FFN to `multiple`,
    the hidden size to a multiple of the heads and of the largest power of two up to `multiple`
    that leaves it below the source's (SmolLM2-135M 576 / 1536 / 9 heads -> 432 / 1024 / 9)."""
    src = source
    heads = src.num_attention_heads
    p = 1 << max(0, multiple.bit_length() - 1)  # the largest power of two <= multiple
    while True:
        hidden = _round_up(src.hidden_size * 3 / 4, math.lcm(heads, p))
        if hidden < src.hidden_size or p == 1:
            break
        p //= 2
    if hidden >= src.hidden_size:  # too few channels per head to cut a quarter: keep 3/4 anyway
        hidden = max(heads, src.hidden_size * 3 // 4 // heads * heads)
    return [
        {
            "hidden_size": src.hidden_size,
            "intermediate_size": src.intermediate_size,
            "num_attention_heads": heads,
            "num_key_value_heads": src.num_key_value_heads,
            "num_layers": max(1, src.num_hidden_layers // 2),
        },
        {
            "hidden_size": hidden,
            "intermediate_size": min(
                src.intermediate_size, _round_up(src.intermediate_size * 9 / 14, multiple)
            ),
            "num_attention_heads": heads,
            "num_key_value_heads": src.num_key_value_heads,
            "num_layers": src.num_hidden_layers,
        },
    ]


def rerank_selection(
    ranked: Sequence[str], family_of: dict[str, str], per_family: int, always: Sequence[str] = ()
) -> list[str]:
    """The ids to distil: the best `per_family` of each family in `ranked` order (best first),
    then every id of `always` (the seed shapes that meet the budget) not already chosen."""
    out: list[str] = []
    for fam in FAMILIES:
        out += [i for i in ranked if family_of[i] == fam][:per_family]
    return out + [i for i in always if i not in out]


def combined_loss(val_loss: float, holdout: dict[str, float]) -> float:
    """The re-rank's score: the mean of the validation loss and each held-out domain's loss
    (one vote per domain, in nats), so a student that only fits the training mixture's kind of
    text does not win."""
    losses = [val_loss, *holdout.values()]
    return sum(losses) / len(losses)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two scorings of the same items (1: same order, -1: reversed)."""
    if len(a) != len(b):
        raise ValueError(f"scorings differ in length: {len(a)} vs {len(b)}")
    conc = disc = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            conc += 1
        else:
            disc += 1
    den = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / den if den else math.nan
