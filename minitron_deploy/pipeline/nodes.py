"""The typed configuration of each stage's node: everything the stage reads, nothing else.

A node's key hashes `config.model_dump()` (or what its stage's `keyed` makes of it), so every
field here changes the artifact when it changes, and a test (tests/unit/test_stage_reads.py)
fails when a stage leaves a field unread. Fields that do not apply to a node are None (and need
not be read). A field naming a split (`SplitName`) reads the prepared data of the input of the
same role (a `data` node), so text enters keys by content, never by path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.compress.config import ImportanceConfig, PruneConfig
from minitron_deploy.data.refs import SplitName
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.evaluation.config import EvalConfig
from minitron_deploy.export.format import ExportSettings
from minitron_deploy.search.config import SearchConfig
from minitron_deploy.triton.config import PackageConfig


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceNode(_Node):
    """The source model: a local HF folder (keyed by its content) or builtin:<name>."""

    source: str


class DataNode(_Node):
    """A text source prepared with the source model's tokenizer (keyed by content)."""

    source: str = Field(description="path(s) or builtin:<name>, comma-separated; or prepared data")
    val_fraction: float


class ImportanceNode(_Node):
    """Importance scores of the parent model."""

    importance: ImportanceConfig
    calibration: SplitName
    validation: SplitName | None = Field(
        None, description="held-out text for layer_loss_blocks rankings (None when unused)"
    )


class PruneNode(_Node):
    """Width/depth pruning of the parent model with its importance scores."""

    prune: PruneConfig
    validation: SplitName | None = Field(
        None, description="held-out text to rank layers by loss (None when unused)"
    )


class DistillNode(_Node):
    """Knowledge distillation of the pruned student from the parent (teacher)."""

    distill: DistillConfig
    training: SplitName
    validation: SplitName
    holdout: tuple[str, ...] = ()  # held-out domain names; inputs "holdout:<name>"


class ExportNode(_Node):
    """One deployment format of the variant's final model."""

    format: str
    settings: ExportSettings
    calibration: SplitName | None = None


class PackageNode(_Node):
    """A Triton model repository of the variant's model (or its HF export)."""

    package: PackageConfig


class BenchNode(_Node):
    """The throughput matrix over the benchmarked variants (batch resolved per member)."""

    bench: BenchConfig
    members: tuple[str, ...]
    gate: dict[str, float] = Field(
        default_factory=dict,
        description="variants' min_speedup: the matrix adds rounds while one is inconclusive",
    )


class EvalNode(_Node):
    """Downstream tasks (lm-evaluation-harness) on one model: the teacher or a variant's."""

    eval: EvalConfig


class SearchNode(_Node):
    """Architecture search under the profile's budget; its model is the winner, pruned."""

    search: SearchConfig
    bench: BenchConfig | None = Field(None, description="the engine min_speedup is measured on")
    distill: DistillConfig = Field(description="settings of the short distillations")
    training: SplitName
    validation: SplitName
    # (search) held-out domains the re-rank also scores; inputs "holdout:<name>"
    holdout: tuple[str, ...] = ()
