"""The profile schema: what a YAML profile may say, validated by pydantic.

Each stage owns its config class next to its algorithm (importance, prune, distill, export,
bench, triton); this module binds them into one `Profile`. All models are frozen and forbid
unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.model.shapes import KNOWN_SHAPES


def _stage_config(module: str, name: str) -> type[BaseModel]:
    return getattr(importlib.import_module(module), name)


# Stage config modules must stay torch-free at import time (tests/unit/test_config.py checks).
ImportanceConfig = _stage_config("minitron_deploy.importance", "ImportanceConfig")
PruneConfig = _stage_config("minitron_deploy.prune", "PruneConfig")
DistillConfig = _stage_config("minitron_deploy.distill.config", "DistillConfig")
ExportConfig = _stage_config("minitron_deploy.export", "ExportConfig")
BenchConfig = _stage_config("minitron_deploy.bench", "BenchConfig")
PackageConfig = _stage_config("minitron_deploy.triton", "PackageConfig")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DataConfig(_Strict):
    """Where text comes from. Each value is a path (file, folder, JSONL) or builtin:<name>."""

    calibration: str = Field(
        "builtin:python-stdlib", description="Text for importance estimation and FP8 calibration."
    )
    training: str = Field("builtin:python-stdlib", description="Text for distillation.")
    validation: str | None = Field(
        None,
        description="Held-out text; default: the validation split of `training` "
        "(a document-level split, disjoint from the training split).",
    )
    val_fraction: float = Field(
        0.05, gt=0, lt=1, description="Fraction of documents held out for validation."
    )


class VariantBench(_Strict):
    """Per-variant benchmark settings."""

    enabled: bool = Field(True, description="Include this variant in the throughput matrix.")
    batch: int | None = Field(
        None,
        gt=0,
        description="Batch size; default 32 for the variant "
        "without pruning, 64 for pruned ones (the blog's setting).",
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
    distill: DistillConfig | None = Field(None, description="Distillation; none skips retraining.")
    export: ExportConfig | None = Field(None, description="Deployment exports.")
    package: PackageConfig | None = Field(None, description="Triton model repository.")
    bench: VariantBench = Field(default_factory=VariantBench, description="Benchmark settings.")

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
    seed: int = Field(0, description="Seed for data sampling and training.")
    data: DataConfig = Field(default_factory=DataConfig, description="Text sources.")
    importance: ImportanceConfig = Field(
        default_factory=ImportanceConfig, description="Default importance settings."
    )
    bench: BenchConfig | None = Field(
        None, description="Throughput matrix over all variants; none skips benchmarking."
    )
    variants: list[VariantConfig] = Field(min_length=1, description="Models to produce.")

    @model_validator(mode="after")
    def _variants(self) -> Profile:
        seen: list[str] = []
        for v in self.variants:
            if v.name in seen:
                raise ValueError(f"variant name {v.name!r} is used twice")
            seen.append(v.name)
        return self


BUILTIN_SHAPES = {"smollm2-135m": KNOWN_SHAPES["smollm2-135m"]}


def source_config(source: str, base_dir: Path | None = None) -> dict[str, Any] | None:
    """The source model's config dict without loading weights (None if not available)."""
    from minitron_deploy.errors import InputError
    from minitron_deploy.model.io import read_config

    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name == "tiny-llama":
            from minitron_deploy.testing import TINY_DEFAULTS

            return dict(TINY_DEFAULTS)
        return BUILTIN_SHAPES.get(name)
    path = Path(source)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    try:
        return read_config(path)
    except InputError:
        return None


def _layer_list(spec: Any) -> list[int]:
    """[3, "16-31", 7] or "16-31,40" -> explicit indices (ranges inclusive)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and "-" in item.strip()[1:]:
            a, b = item.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(item))
    return out


def prune_target_problems(shape: dict[str, Any], prune: Any) -> list[tuple[str, str]]:
    """Targets larger than the source, heads not divisible by KV groups, unknown layers."""
    out = []
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or heads
    for f in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        t = getattr(prune, f, None)
        src = kv if f == "num_key_value_heads" else shape[f]
        if t is not None and t > src:
            out.append((f, f"target {t} is larger than the source's {src}"))
    t_heads = getattr(prune, "num_attention_heads", None) or heads
    t_kv = getattr(prune, "num_key_value_heads", None) or kv
    if t_kv <= kv and t_heads <= heads and t_heads % t_kv:
        out.append(
            (
                "num_attention_heads",
                f"{t_heads} query heads do not divide into "
                f"{t_kv} KV groups; use a multiple of {t_kv}",
            )
        )
    t_hidden = getattr(prune, "hidden_size", None) or shape["hidden_size"]
    if t_hidden <= shape["hidden_size"] and t_heads <= heads and t_hidden % t_heads:
        field = "hidden_size" if getattr(prune, "hidden_size", None) else "num_attention_heads"
        out.append(
            (
                field,
                f"hidden_size {t_hidden} is not a multiple of {t_heads} heads; "
                "transformers refuses such a config even with an explicit head_dim",
            )
        )
    layers = shape["num_hidden_layers"]
    n = getattr(prune, "num_layers", None)
    if n is not None and n > layers:
        out.append(("num_layers", f"target {n} layers is more than the source's {layers}"))
    drop = getattr(prune, "drop_layers", None)
    if drop:
        try:
            bad = [i for i in _layer_list(drop) if not 0 <= i < layers]
        except ValueError:
            bad = [drop]
        if bad:
            out.append(
                (
                    "drop_layers",
                    f"unknown layer indices {bad}; the source has layers 0-{layers - 1}",
                )
            )
    return out


def target_shape(shape: dict[str, Any], prune: Any) -> dict[str, Any]:
    """The shape after pruning (for checks of variants that start from this one)."""
    out = dict(shape)
    for f in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if getattr(prune, f, None) is not None:
            out[f] = getattr(prune, f)
    if getattr(prune, "num_layers", None) is not None:
        out["num_hidden_layers"] = prune.num_layers
    elif getattr(prune, "drop_layers", None):
        out["num_hidden_layers"] = shape["num_hidden_layers"] - len(
            set(_layer_list(prune.drop_layers))
        )
    return out


def export_needs_calibration(export: Any) -> bool:
    formats = getattr(export, "formats", []) or []
    return "hf-fp8" in formats or getattr(export, "trtllm_dtype", "bf16") == "fp8"


def bench_pairs(bench: Any) -> list[tuple[int, int]]:
    """(ISL, OSL) pairs of a bench config."""
    if hasattr(bench, "pairs"):
        pairs = bench.pairs() if callable(bench.pairs) else bench.pairs
        return [tuple(p) for p in pairs]
    matrix = getattr(bench, "matrix", "")
    if isinstance(matrix, str):
        return [tuple(int(x) for x in item.split("/")) for item in matrix.split(",") if item]
    return [tuple(p) for p in matrix]


def _section(cls: type[BaseModel], raw: Any) -> Any:
    """`raw` validated as `cls`, or None when it is absent or has field errors of its own."""
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError:
        return None


def semantic_problems(
    data: dict[str, Any], base_dir: Path | None = None, check_source: bool = True
) -> list[tuple[tuple, str]]:
    """Cross-field checks on the merged profile dict, done even when some fields are invalid
    (each section is checked only if it validates on its own), so one pass reports all."""
    from minitron_deploy.model.teacher import BUILTIN_MODELS

    problems: list[tuple[tuple, str]] = []
    src = str(data.get("source") or "")
    cfg = None
    if src.startswith("builtin:") and src.split(":", 1)[1] not in BUILTIN_MODELS:
        problems.append(
            (
                ("source",),
                f"unknown built-in model {src!r}; use one of "
                f"{['builtin:' + m for m in BUILTIN_MODELS]}",
            )
        )
    elif src:
        cfg = source_config(src, base_dir)
        if cfg is None and check_source:
            problems.append(
                (
                    ("source",),
                    f"{src!r} is not a readable HF Llama checkpoint "
                    "folder (config.json + *.safetensors)",
                )
            )
    calib = (data.get("data") or {}).get("calibration", "builtin:python-stdlib")
    # Shapes flow through `from` chains: a variant starts from its parent's pruned shape.
    shapes: dict[Any, dict[str, Any] | None] = {None: cfg}
    variants = data.get("variants") if isinstance(data.get("variants"), list) else []
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            continue
        parent = v.get("from")
        if parent is not None and parent not in shapes:
            problems.append(
                (
                    ("variants", i, "from"),
                    f"from={parent!r} must name an earlier "
                    f"variant (earlier: {[k for k in shapes if k]})",
                )
            )
        shape = dict(shapes[parent]) if shapes.get(parent) else None
        prune = _section(PruneConfig, v.get("prune"))
        if prune is not None and shape is not None:
            for field, msg in prune_target_problems(shape, prune):
                problems.append((("variants", i, "prune", field), msg))
            shape = target_shape(shape, prune)
        export = _section(ExportConfig, v.get("export"))
        if export is not None and export_needs_calibration(export) and not calib:
            problems.append(
                (
                    ("variants", i, "export"),
                    "fp8 export needs calibration data: set data.calibration",
                )
            )
        package = _section(PackageConfig, v.get("package"))
        if package is not None and package.backend == "trtllm" and export is None:
            problems.append(
                (
                    ("variants", i, "package"),
                    "the trtllm Triton backend serves an "
                    "exported checkpoint: add an export section",
                )
            )
        shapes[v.get("name")] = shape
    bench = _section(BenchConfig, data.get("bench"))
    if bench is not None and cfg is not None:
        max_pos = int(cfg.get("max_position_embeddings") or 0)
        for isl, osl in bench_pairs(bench):
            if max_pos and isl + osl > max_pos:
                problems.append(
                    (
                        ("bench", "isl_osl"),
                        f"ISL+OSL = {isl}+{osl} exceeds the "
                        f"source model's max_position_embeddings {max_pos}",
                    )
                )
    return problems


def write_schema(path: str | Path) -> None:
    """Write the profile's JSON schema (profiles/schema.json)."""
    import json

    from minitron_deploy.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(Profile.model_json_schema(by_alias=True), indent=2) + "\n")
