"""The profile schema: what a YAML profile may say, validated by pydantic.

Each stage package owns its config class (`compress.config`, `distill.config`, `export.config`,
`bench.config`, `triton.config`); this module binds them into one `Profile`. All models are
frozen and forbid unknown keys, so a typo is an error rather than a silently ignored setting.
Importing it does not import torch (tests/unit/test_profile.py checks).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.compress.config import ImportanceConfig, PruneConfig
from minitron_deploy.data.text import DEFAULT_VAL_FRACTION
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.evaluation.config import EvalConfig
from minitron_deploy.export.config import ExportConfig
from minitron_deploy.fsutil import atomic_write_text
from minitron_deploy.launch.config import launcher_config
from minitron_deploy.pipeline.stages import distributed_stages
from minitron_deploy.search.config import SearchConfig
from minitron_deploy.triton.config import PackageConfig

# The `launcher:` section: its `stages` are the stage table's distributed stages.
LauncherConfig = launcher_config(distributed_stages())


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DataConfig(_Strict):
    """Where text comes from. Each value is a path (file, folder, JSONL) or builtin:<name>."""

    calibration: str = Field(
        "builtin:mixed", description="Text for importance estimation and FP8 calibration."
    )
    training: str = Field("builtin:mixed", description="Text for distillation.")
    validation: str | None = Field(
        None,
        description="Held-out text; default: the validation split of `training` "
        "(a document-level split, disjoint from the training split).",
    )
    val_fraction: float = Field(
        DEFAULT_VAL_FRACTION,
        gt=0,
        lt=1,
        description="Fraction of documents held out for validation (every stage's split).",
    )
    holdout: list[str] = Field(
        default_factory=list,
        description="Held-out domains: whole sources that no stage trains or calibrates on "
        "(e.g. builtin:manpages), each evaluated on its own by distillation, named by "
        "`builtin:<name>`'s name or the path's file name.",
    )


class VariantBench(_Strict):
    """Per-variant benchmark settings."""

    enabled: bool = Field(True, description="Include this variant in the throughput matrix.")
    batch: int | None = Field(
        None,
        gt=0,
        description="Batch size; default: the profile's bench.batch, else 32 for a variant "
        "without pruning and 64 for pruned ones (the blog's setting).",
    )
    min_speedup: float | None = Field(
        None,
        gt=0,
        description="Speedup gate: the run fails if this variant's measured speedup "
        "over the base falls below this value in any matrix cell.",
    )


class VariantConfig(_Strict):
    """One model to produce: a pruning target, its retraining, exports, package and bench."""

    name: str = Field(description="Variant name: lowercase letters, digits, '-' and '_'.")
    from_: str | None = Field(
        None,
        alias="from",
        description="Start from this earlier variant's "
        "final model instead of the source (iterative pruning).",
    )
    importance: ImportanceConfig | None = Field(
        None, description="Importance settings; default: the profile's `importance`."
    )
    prune: PruneConfig | None = Field(None, description="Pruning target; none keeps the model.")
    search: bool = Field(
        False,
        description="Start from the winner of the profile's `search` (pruned from the source) "
        "instead of a `prune` target.",
    )
    distill: DistillConfig | None = Field(None, description="Distillation; none skips retraining.")
    teacher: str | None = Field(
        None,
        description="Distil from this earlier variant's final model instead of the parent, e.g. "
        "a teacher-correction variant (the source fine-tuned on the distillation text: "
        "`distill: {teacher_correction: true}`, no prune).",
    )
    export: ExportConfig | None = Field(None, description="Deployment exports.")
    package: PackageConfig | None = Field(None, description="Triton model repository.")
    bench: VariantBench = Field(default_factory=VariantBench, description="Benchmark settings.")

    @model_validator(mode="after")
    def _search_or_prune(self) -> VariantConfig:
        if self.search and (self.prune is not None or self.from_ is not None):
            raise ValueError("a variant with search: true takes no prune target and no `from`")
        if self.teacher is not None and self.distill is None:
            raise ValueError("`teacher` names who teaches a distillation: this variant has none")
        corrects = self.distill is not None and self.distill.teacher_correction
        if corrects and (self.prune is not None or self.search or self.teacher is not None):
            raise ValueError(
                "teacher correction fine-tunes the parent itself: no prune, search or teacher"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", v):
            raise ValueError("use lowercase letters, digits, '-' and '_'")
        return v


class Profile(_Strict):
    """A minitron-deploy pipeline: one source model in, variants out."""

    name: str = Field(description="Profile name; run records go to runs/<name>/.")
    description: str = Field("", description="What this profile is for.")
    source: str = Field(
        description="The source model: a local HF Llama folder or "
        "builtin:smollm2-135m / builtin:tiny-llama."
    )
    seed: int = Field(
        0,
        description="Default seed of every section that sets none (importance, prune, "
        "distill, export, bench): data sampling, training order, calibration, prompts.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Text sources.")
    importance: ImportanceConfig = Field(
        default_factory=ImportanceConfig, description="Default importance settings."
    )
    bench: BenchConfig | None = Field(
        None, description="Throughput matrix over all variants; none skips benchmarking."
    )
    search: SearchConfig | None = Field(
        None,
        description="Architecture search under a budget; variants with `search: true` start "
        "from its winner.",
    )
    eval: EvalConfig | None = Field(
        None,
        description="Downstream tasks (lm-evaluation-harness) on the teacher and every variant; "
        "none skips them.",
    )
    variants: list[VariantConfig] = Field(min_length=1, description="Models to produce.")
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig,
        description="How the distributed stages (distill, importance) run: local, torchrun "
        "or slurm. `launcher: torchrun` is short for `launcher: {kind: torchrun}`.",
    )

    @model_validator(mode="after")
    def _variants(self) -> Profile:
        seen: list[str] = []
        if any(v.search for v in self.variants) and self.search is None:
            raise ValueError("a variant has search: true but the profile has no search section")
        for v in self.variants:
            if v.name in seen:
                raise ValueError(f"variant name {v.name!r} is used twice")
            seen.append(v.name)
        return self


def write_schema(path) -> None:
    """Write the profile's JSON schema (profiles/schema.json)."""
    import json

    atomic_write_text(path, json.dumps(Profile.model_json_schema(by_alias=True), indent=2) + "\n")
