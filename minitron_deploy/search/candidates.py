"""Candidate shapes of the search: the grid, its checks, and the cheap budget filters
(parameters, memory). Torch-free."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from minitron_deploy.errors import ConfigError
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.search.config import SearchConfig

GiB = 1 << 30


@dataclass(frozen=True)
class Candidate:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_layers: int

    @property
    def id(self) -> str:
        return (
            f"h{self.hidden_size}-f{self.intermediate_size}-"
            f"a{self.num_attention_heads}x{self.num_key_value_heads}-l{self.num_layers}"
        )

    def targets(self) -> dict[str, int]:
        """PruneConfig targets."""
        return asdict(self)

    def shape(self, source: LlamaShape) -> LlamaShape:
        return LlamaShape(
            vocab_size=source.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=source.head_dim,
            tie_word_embeddings=source.tie_word_embeddings,
        )

    def config(self, source_cfg: dict[str, Any]) -> dict[str, Any]:
        """The source's config.json with this shape."""
        return {
            **source_cfg,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "num_hidden_layers": self.num_layers,
            "head_dim": source_cfg.get("head_dim")
            or source_cfg["hidden_size"] // source_cfg["num_attention_heads"],
        }


def _auto(size: int, fractions: list[float], multiple: int) -> list[int]:
    vals = {max(multiple, int(size * f) // multiple * multiple) for f in fractions}
    return sorted((v for v in vals if v <= size), reverse=True)


def axes(source: LlamaShape, cfg: SearchConfig) -> dict[str, list[int]]:
    """The values of each axis (the source's own for axes the mode keeps).

    Raises:
        ConfigError: values larger than the source's, or heads that do not divide into the KV
            groups (the grid names the binding axis).
    """
    g, src = cfg.grid, source
    multiple = g.multiple or 64
    per_group = src.num_attention_heads // src.num_key_value_heads
    out = {
        "hidden_size": g.hidden_size or _auto(src.hidden_size, g.fractions, multiple),
        "intermediate_size": g.intermediate_size
        or _auto(src.intermediate_size, g.fractions, multiple),
        "heads_per_group": g.heads_per_group
        or sorted({max(1, round(per_group * f)) for f in g.fractions if f >= 0.5}, reverse=True),
        "kv_groups": g.kv_groups or [src.num_key_value_heads],
        "num_layers": g.num_layers
        or sorted({max(1, round(src.num_hidden_layers * f)) for f in g.fractions}, reverse=True),
    }
    limits = {
        "hidden_size": src.hidden_size,
        "intermediate_size": src.intermediate_size,
        "heads_per_group": per_group,
        "kv_groups": src.num_key_value_heads,
        "num_layers": src.num_hidden_layers,
    }
    for name, values in out.items():
        bad = [v for v in values if not 1 <= v <= limits[name]]
        if bad:
            raise ConfigError(
                f"search.grid.{name} {bad} is outside 1..{limits[name]} (the source's size: "
                "pruning only removes)",
                fix=f"use values up to {limits[name]}",
            )
    if cfg.mode == "width":
        out["num_layers"] = [src.num_hidden_layers]
    elif cfg.mode == "depth":
        out.update(
            hidden_size=[src.hidden_size],
            intermediate_size=[src.intermediate_size],
            heads_per_group=[per_group],
            kv_groups=[src.num_key_value_heads],
        )
    return out


def check_heads(source: LlamaShape, cfg: SearchConfig, heads: list[int] | None) -> None:
    """Total query-head counts given instead of heads per group must divide into every KV
    group count of the grid.

    Raises:
        ConfigError: naming the first head count and group count that do not divide.
    """
    if not heads:
        return
    kv = cfg.grid.kv_groups or [source.num_key_value_heads]
    for h in heads:
        for k in kv:
            if h > source.num_attention_heads:
                raise ConfigError(
                    f"search.grid.num_attention_heads {h} is more than the source's "
                    f"{source.num_attention_heads}",
                    fix="pruning only removes heads",
                )
            if h % k:
                raise ConfigError(
                    f"{h} attention heads do not divide into {k} KV groups (GQA keeps the same "
                    "number of query heads per group)",
                    fix=f"use multiples of {k} heads, or give search.grid.heads_per_group",
                )


def enumerate_candidates(source: LlamaShape, cfg: SearchConfig) -> list[Candidate]:
    """Every grid point except the source itself, largest first; points whose hidden size is
    not a multiple of their attention heads are left out (transformers cannot load them).

    Raises:
        ConfigError: see `axes` and `check_heads`.
    """
    ax = axes(source, cfg)
    heads = cfg.grid.num_attention_heads if cfg.mode != "depth" else None
    check_heads(source, cfg, heads)
    out = []
    for h, f, kv, n in itertools.product(
        ax["hidden_size"], ax["intermediate_size"], ax["kv_groups"], ax["num_layers"]
    ):
        totals = heads or [hpg * kv for hpg in ax["heads_per_group"]]
        for total in totals:
            c = Candidate(h, f, total, kv, n)
            # transformers requires hidden_size to be a multiple of the attention heads
            if h % total == 0 and c.shape(source) != source and c not in out:
                out.append(c)
    return sorted(out, key=lambda c: -c.shape(source).num_parameters)


def memory_gb(shape: LlamaShape, batch: int, tokens: int, bytes_per_value: int) -> float:
    """Weights plus the KV cache of `batch` sequences of `tokens`, in GiB."""
    kv = 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim * tokens
    return (shape.num_parameters + kv * batch) * bytes_per_value / GiB


def ideal_speedup(source: LlamaShape, shape: LlamaShape, context: int) -> float:
    """Compute-bound ideal: the source's forward FLOPs per token over the candidate's."""
    return source.forward_flops_per_token(context) / shape.forward_flops_per_token(context)
