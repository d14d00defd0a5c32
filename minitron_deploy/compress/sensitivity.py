"""Zero-shot sensitivity: validation loss after pruning one axis alone to a few ratios.

Shows which axis hurts before any training compute is spent. Each row prunes a single axis
(hidden, ffn, heads, kv_heads or layers) of the source model by importance and evaluates it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.slicing import prune_model
from minitron_deploy.console import info
from minitron_deploy.errors import InputError
from minitron_deploy.evaluation.loss import evaluate_loss
from minitron_deploy.model.shapes import LlamaShape, human

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

AXES = ("hidden", "ffn", "heads", "kv_heads", "layers")
_SHORT = {
    "hidden_size": "hidden",
    "intermediate_size": "ffn",
    "num_attention_heads": "heads",
    "num_key_value_heads": "kv",
    "num_layers": "layers",
}


def axis_target(shape: LlamaShape, axis: str, ratio: float) -> dict[str, int]:
    """PruneConfig fields that shrink `axis` alone to about `ratio` of its size (at least 1)."""

    def part(n: int) -> int:
        return max(1, math.floor(n * ratio + 1e-9))

    per_group = shape.num_attention_heads // shape.num_key_value_heads
    if axis == "hidden":  # a multiple of the head count (transformers' LlamaConfig needs it)
        nh = shape.num_attention_heads
        return {"hidden_size": max(nh, part(shape.hidden_size) // nh * nh)}
    if axis == "ffn":
        return {"intermediate_size": part(shape.intermediate_size)}
    if axis == "heads":
        return {"num_attention_heads": part(per_group) * shape.num_key_value_heads}
    if axis == "kv_heads":
        kv = part(shape.num_key_value_heads)
        return {"num_key_value_heads": kv, "num_attention_heads": kv * per_group}
    if axis == "layers":
        return {"num_layers": part(shape.num_hidden_layers)}
    raise InputError(f"unknown sensitivity axis {axis!r}", fix=f"use some of {list(AXES)}")


def sensitivity_report(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor],
    val_batches: torch.Tensor,
    ratios: tuple[float, ...] = (0.75, 0.5),
    axes: tuple[str, ...] = AXES,
    *,
    layer_metric: str = "block_importance",
    micro_batch: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the source model and every (axis, ratio) single-axis pruning of it.

    Args:
        model: the source model.
        scores: importance scores of `model`.
        val_batches: validation token ids [N, L].
        ratios: fractions of each axis to keep, in (0, 1].
        axes: which of `AXES` to report.
        layer_metric: how `layers` rows choose layers (see `PruneConfig.layer_metric`).
        micro_batch: sequences per forward call.
        progress: print a line per row on stderr.

    Returns:
        {"base": {"loss", "ppl", "params"}, "rows": [{"axis", "ratio", "target", "loss", "ppl",
        "delta_loss", "params"}], "layer_metric": ...}. Identical targets are evaluated once.
    """

    for r in ratios:
        if not 0 < r <= 1:
            raise InputError(f"sensitivity ratio {r} must be in (0, 1]")
    shape = LlamaShape.from_config(model.config)
    base = evaluate_loss(model, val_batches, micro_batch)
    rows: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for axis in axes:
        for r in ratios:
            target = axis_target(shape, axis, r)
            key = tuple(sorted(target.items()))
            if key in seen:
                continue
            seen.add(key)
            cfg = PruneConfig(**target, layer_metric=layer_metric)
            try:
                pruned, rec = prune_model(model, scores, cfg, val_batches)
            except InputError as e:  # e.g. a head count that does not divide hidden_size
                rows.append({"axis": axis, "ratio": r, "target": target, "skipped": str(e)})
                continue
            ev = evaluate_loss(pruned, val_batches, micro_batch)
            rows.append(
                {
                    "axis": axis,
                    "ratio": r,
                    "target": target,
                    "loss": ev["loss"],
                    "ppl": ev["ppl"],
                    "delta_loss": ev["loss"] - base["loss"],
                    "params": rec["params_after"],
                }
            )
            if progress:
                info(f"sensitivity {axis} x{r}: {target} loss {ev['loss']:.4f}")
            del pruned
    return {
        "base": {"loss": base["loss"], "ppl": base["ppl"], "params": shape.num_parameters},
        "rows": rows,
        "layer_metric": layer_metric,
        "tokens": base["tokens"],
    }


def render_table(report: dict[str, Any]):
    """A rich Table of a `sensitivity_report`."""
    from rich.table import Table

    base = report["base"]
    t = Table(
        title=f"Zero-shot sensitivity (base loss {base['loss']:.4f}, {report['tokens']} tokens)"
    )
    for col in ("axis", "keep", "target", "params", "loss", "Δ loss", "ppl"):
        t.add_column(col, justify="left" if col in ("axis", "target") else "right")
    for r in report["rows"]:
        target = ", ".join(f"{_SHORT.get(k, k)}={v}" for k, v in r["target"].items())
        if "skipped" in r:
            t.add_row(r["axis"], f"{r['ratio']:.2f}", target, "-", "skipped", "-", "-")
            continue
        t.add_row(
            r["axis"],
            f"{r['ratio']:.2f}",
            target,
            human(r["params"]),
            f"{r['loss']:.4f}",
            f"{r['delta_loss']:+.4f}",
            f"{r['ppl']:.1f}",
        )
    return t
