"""The one rule set for pruning targets, used by profile validation and by pruning itself.

`target_problems` lists every problem of a target against a source shape (as (field, message)
pairs, so a profile can point at the YAML line); `resolve_targets` raises them all at once.
Torch-free.
"""

from __future__ import annotations

from typing import Any

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.errors import InputError
from minitron_deploy.model.shapes import LlamaShape

WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def _shape(source: Any) -> LlamaShape:
    return source if isinstance(source, LlamaShape) else LlamaShape.from_config(source)


def width_targets(source: Any, cfg: PruneConfig) -> dict[str, int]:
    """Target widths, unset ones filled in: the source's size, and for query heads the
    source's heads per KV group times the kept KV groups."""
    src = _shape(source)
    per_group = src.num_attention_heads // src.num_key_value_heads
    kv = cfg.num_key_value_heads or src.num_key_value_heads
    return {
        "hidden_size": cfg.hidden_size or src.hidden_size,
        "intermediate_size": cfg.intermediate_size or src.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads or kv * per_group,
        "num_key_value_heads": kv,
    }


def target_problems(source: Any, cfg: PruneConfig) -> list[tuple[str, str]]:
    """Every problem of `cfg` against the source shape, as (field, message).

    Rules: pruning only shrinks; query heads divide into the kept KV groups, with no more per
    group than the source has; hidden_size is a multiple of the query heads (transformers 5's
    LlamaConfig refuses anything else, even with an explicit head_dim); layer counts and
    indices exist, and at least one layer stays.
    """
    src = _shape(source)
    t = width_targets(src, cfg)
    out: list[tuple[str, str]] = []
    for f in WIDTH_FIELDS:
        if t[f] > getattr(src, f):
            out.append((f, f"target {f}={t[f]} is larger than the source's {getattr(src, f)}"))
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    per_group = src.num_attention_heads // src.num_key_value_heads
    heads_field = "num_attention_heads" if cfg.num_attention_heads else "num_key_value_heads"
    if heads % kv:
        out.append(
            (
                heads_field,
                f"{heads} query heads do not divide into {kv} KV groups; use a multiple of {kv}",
            )
        )
    elif heads // kv > per_group:
        out.append(
            (
                heads_field,
                f"{heads} heads over {kv} KV groups needs {heads // kv} per group, but the "
                f"source has {per_group}; use at most {kv * per_group} heads or keep more groups",
            )
        )
    # Only once the sizes themselves are possible: one mistake, one message.
    if not {f for f, _ in out} & {"hidden_size", heads_field} and t["hidden_size"] % heads:
        field = "hidden_size" if cfg.hidden_size else heads_field
        out.append(
            (
                field,
                f"hidden_size {t['hidden_size']} is not a multiple of {heads} query heads; "
                "transformers refuses such a config even with an explicit head_dim",
            )
        )
    n = src.num_hidden_layers
    if cfg.num_layers is not None and cfg.num_layers > n:
        out.append(("num_layers", f"target {cfg.num_layers} layers is more than the source's {n}"))
    if cfg.drop_layers is not None:
        bad = [i for i in cfg.drop_layers if not 0 <= i < n]
        if bad:
            out.append(("drop_layers", f"unknown layer indices {bad}; layers are 0-{n - 1}"))
        elif len(cfg.drop_layers) >= n:
            out.append(("drop_layers", "would remove every layer; keep at least one"))
    return out


def resolve_targets(source: Any, cfg: PruneConfig) -> dict[str, int]:
    """The target widths of `cfg` for `source` (a config or shape).

    Raises:
        InputError: listing every problem `target_problems` finds.
    """
    problems = target_problems(source, cfg)
    if problems:
        raise InputError(
            "impossible pruning target: " + "; ".join(f"{f}: {m}" for f, m in problems),
            fix="pick targets the source can shrink to (see `minitron-deploy prune --help`)",
        )
    return width_targets(source, cfg)
