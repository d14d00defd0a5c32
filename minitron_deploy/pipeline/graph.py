"""The stage graph of a profile: which nodes exist, their typed configs, and their edges.

This is the one place that maps profile sections to stage nodes. Per variant: importance and
prune (with `prune:`), distill (with `distill:`), one export node per format, package; then one
bench node over the benchmarked variants. `from:` chains start a variant from an earlier
variant's final model. Profile-wide settings are resolved here: `seed` is the default seed of
every section that sets none, `data.val_fraction` applies to every split, and validation text
means one thing everywhere (`data.refs.validation_ref`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from minitron_deploy.data.refs import DataRef, validation_ref
from minitron_deploy.pipeline.nodes import (
    BenchNode,
    DistillNode,
    ExportNode,
    ImportanceNode,
    PackageNode,
    PruneNode,
    SourceNode,
)


@dataclass
class Node:
    """One stage application in the graph.

    Attributes:
        id: "<variant>/<stage>[:<detail>]", or "<stage>" for profile-level stages.
        stage: the stage's name in `stages.STAGES`.
        variant: the variant it belongs to (None for profile-level stages).
        config: the stage's typed node config (hashed into the key).
        inputs: role -> upstream node id.
        meta: facts that do not change the artifact (e.g. the speedup gate), not hashed.
        key: the artifact key, set by the pipeline.
    """

    id: str
    stage: str
    variant: str | None
    config: BaseModel
    inputs: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def _seeded(cfg: BaseModel, seed: int) -> BaseModel:
    """`cfg` with the profile's seed unless its section set one."""
    if "seed" in type(cfg).model_fields and "seed" not in cfg.model_fields_set:
        return cfg.model_copy(update={"seed": seed})
    return cfg


def resolve_source(source: str, base_dir: Path) -> str:
    """A relative source path is taken relative to the profile's folder when it exists there."""
    if source.startswith("builtin:") or Path(source).is_absolute():
        return source
    cand = base_dir / source
    return str(cand if cand.exists() and not Path(source).exists() else Path(source))


def bench_batches(profile: Any, members: list[Any]) -> tuple[int, ...]:
    """Batch per benchmarked variant: its own `bench.batch`, else the profile's `bench.batch`
    (one value for all or one per variant), else 32 unpruned / 64 pruned (the blog's setting)."""
    shared = profile.bench.batch if profile.bench is not None else None
    out = []
    for i, v in enumerate(members):
        if v.bench.batch is not None:
            out.append(v.bench.batch)
        elif shared:
            out.append(shared[0] if len(shared) == 1 else shared[i])
        else:
            out.append(64 if v.prune is not None or v.from_ is not None else 32)
    return tuple(out)


def _prune_validation(prune: Any, imp: Any, n_layers: int | None) -> bool:
    """Whether pruning ranks layers by loss itself (not from the importance scores)."""
    from minitron_deploy.compress.layers import depth_score_key

    if not prune.ranks_layers_by_loss:
        return False
    if n_layers is None:
        return True  # shape unknown here: keep the text at hand
    key = depth_score_key(prune, n_layers)
    stored = {f"layer_loss_drop{k}" for k in imp.layer_loss_blocks}
    return key is not None and key not in stored


def build_graph(profile: Any, base_dir: Path | None = None) -> list[Node]:
    """The nodes of a profile, in an order where every input comes first."""
    from minitron_deploy.compress.targets import target_shape
    from minitron_deploy.profile.checks import source_config

    base_dir = base_dir or Path.cwd()
    seed, data = profile.seed, profile.data
    vf = data.val_fraction
    calibration = DataRef(source=data.calibration, split="train", val_fraction=vf)
    training = DataRef(source=data.training, split="train", val_fraction=vf)
    validation = validation_ref(data.training, data.validation, vf)
    source_shape = source_config(profile.source, base_dir)
    source = SourceNode(source=resolve_source(profile.source, base_dir))
    nodes = [Node("source", "source", None, source, meta={"shapes": {"model": source_shape}})]
    final: dict[str | None, str] = {None: "source"}
    shapes: dict[str | None, dict | None] = {None: source_shape}
    for v in profile.variants:
        parent = final[v.from_]
        model = parent
        shape = parent_shape = shapes[v.from_]
        if v.prune is not None:
            imp = _seeded(v.importance or profile.importance, seed)
            imp_node = ImportanceNode(
                importance=imp,
                calibration=calibration,
                validation=validation if imp.layer_loss_blocks else None,
            )
            nodes.append(
                Node(
                    f"{v.name}/importance",
                    "importance",
                    v.name,
                    imp_node,
                    {"model": parent},
                    meta={"shapes": {"model": parent_shape}},
                )
            )
            prune = _seeded(v.prune, seed)
            n_layers = shape["num_hidden_layers"] if shape else None
            ranks_here = _prune_validation(prune, imp, n_layers)
            prune_node = PruneNode(
                prune=prune.without_unused(ranks_here),
                validation=validation if ranks_here else None,
            )
            shape = target_shape(shape, prune) if shape else None
            nodes.append(
                Node(
                    f"{v.name}/prune",
                    "prune",
                    v.name,
                    prune_node,
                    {"model": parent, "scores": f"{v.name}/importance"},
                    meta={"shapes": {"model": parent_shape}},
                )
            )
            model = f"{v.name}/prune"
        if v.distill is not None:
            node = DistillNode(
                distill=_seeded(v.distill, seed), training=training, validation=validation
            )
            inputs = {"teacher": parent, "student": model}
            meta = {"shapes": {"teacher": parent_shape, "student": shape}}
            nodes.append(Node(f"{v.name}/distill", "distill", v.name, node, inputs, meta))
            model = f"{v.name}/distill"
        final[v.name] = model
        shapes[v.name] = shape
        exports: dict[str, str] = {}
        if v.export is not None:
            export = _seeded(v.export, seed)
            calib = (
                DataRef(source=export.calib_data, split="train", val_fraction=vf)
                if export.calib_data
                else calibration
            )
            for fmt in export.formats:
                settings = export.settings(fmt)
                node = ExportNode(
                    format=fmt,
                    settings=settings,
                    calibration=calib if settings.dtype == "fp8" else None,
                )
                nid = f"{v.name}/export:{fmt}"
                meta = {"shapes": {"model": shape}}
                nodes.append(Node(nid, "export", v.name, node, {"model": model}, meta))
                exports[fmt] = nid
        if v.package is not None:
            inputs = {"model": model}
            if v.package.backend == "trtllm":
                fmt = next((f for f in ("hf-fp8", "hf") if f in exports), None)
                if fmt:
                    inputs["export"] = exports[fmt]
            node = PackageNode(package=v.package)
            meta = {"shapes": {"model": shape}}
            nodes.append(Node(f"{v.name}/package", "package", v.name, node, inputs, meta))
    if profile.bench is not None:
        members = [v for v in profile.variants if v.bench.enabled]
        if members:
            bench = _seeded(profile.bench, seed).model_copy(
                update={"batch": bench_batches(profile, members)}
            )
            node = BenchNode(bench=bench, members=tuple(v.name for v in members))
            gate = {v.name: v.bench.min_speedup for v in members if v.bench.min_speedup}
            nodes.append(
                Node(
                    "bench",
                    "bench",
                    None,
                    node,
                    {v.name: final[v.name] for v in members},
                    meta={"min_speedup": gate, "shapes": {v.name: shapes[v.name] for v in members}},
                )
            )
    return nodes
