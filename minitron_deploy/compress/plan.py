"""One `PrunePlan` per pruning: the source shape, the resolved target widths, the layers to
drop, the target shape and the score keys it reads, computed once (`plan_prune`) and passed
down. Profile checks, the pipeline graph, the estimates and pruning itself all derive the target
shape from it. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import DEPTH_METRICS, depth_score_key, drop_count
from minitron_deploy.compress.targets import resolve_targets
from minitron_deploy.model.shapes import LlamaShape

# Score key each width axis reads when it shrinks.
AXIS_SCORES = {
    "hidden_size": "hidden",
    "intermediate_size": "mlp",
    "num_attention_heads": "head",
    "num_key_value_heads": "kv_group",
}


@dataclass(frozen=True)
class PrunePlan:
    """What one pruning of `source` by `config` does, before any tensor is read.

    Attributes:
        config: the pruning settings.
        source: the source's shape.
        widths: target hidden_size, intermediate_size, num_attention_heads, num_key_value_heads.
        drop_count: layers removed.
        depth_key: the score key the depth choice reads (None: explicit, random, none, or
            task-ranked).
    """

    config: PruneConfig
    source: LlamaShape
    widths: dict[str, int]
    drop_count: int
    depth_key: str | None

    @property
    def target_shape(self) -> dict[str, Any]:
        """The shape after pruning, as a config-like dict."""
        return {
            **self.source.as_dict(),
            **self.widths,
            "num_hidden_layers": self.source.num_hidden_layers - self.drop_count,
        }

    @property
    def target(self) -> LlamaShape:
        return LlamaShape.from_config(self.target_shape)

    def required_scores(self, *, with_depth: bool = True) -> set[str]:
        """The score keys this pruning reads (loss rankings only if `with_depth`)."""
        if self.config.selection == "random":
            return set()
        need = {k for f, k in AXIS_SCORES.items() if self.widths[f] != getattr(self.source, f)}
        if self.widths["num_attention_heads"] != self.source.num_attention_heads:
            need.add("kv_group")  # groups are ranked before the heads inside them
        key = self.depth_key
        reads = DEPTH_METRICS[self.config.layer_metric].reads
        if key is not None and (with_depth or reads == "scores"):
            need.add(key)
        return need


def plan_prune(source: Any, cfg: PruneConfig) -> PrunePlan:
    """The plan of pruning `source` (a config dict, `LlamaConfig` or `LlamaShape`) by `cfg`.

    Raises:
        InputError: every problem of the target at once (`targets.resolve_targets`).
    """
    src = source if isinstance(source, LlamaShape) else LlamaShape.from_config(source)
    widths = resolve_targets(src, cfg)
    n = src.num_hidden_layers
    return PrunePlan(cfg, src, widths, drop_count(cfg, n), depth_score_key(cfg, n))
