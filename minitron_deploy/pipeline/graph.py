"""The stage graph of a profile: which nodes exist, their typed configs, and their edges.

This is the one place that maps profile sections to stage nodes. Per variant: importance and
prune (with `prune:`), distill (with `distill:`), one export node per format, package; then one
bench node over the benchmarked variants. `from:` chains start a variant from an earlier
variant's final model. Every text source the nodes read is one `data:<role>` node (prepared once
with the source model's tokenizer, keyed by content); readers name the split they read.
Profile-wide settings are resolved here: `seed` is the default seed of every section that sets
none, `data.val_fraction` applies to every split, and validation text means one thing
everywhere: all of `data.validation` when given, else the validation split of `data.training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from minitron_deploy.compress.layers import depth_score_key
from minitron_deploy.compress.plan import plan_prune
from minitron_deploy.data.refs import holdout_label
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.export.registry import FORMATS  # contracts: the served export's record
from minitron_deploy.pipeline.stages.bench import BenchNode
from minitron_deploy.pipeline.stages.data import DataNode
from minitron_deploy.pipeline.stages.distill import DistillNode
from minitron_deploy.pipeline.stages.eval import EvalNode
from minitron_deploy.pipeline.stages.export import ExportNode
from minitron_deploy.pipeline.stages.importance import ImportanceNode
from minitron_deploy.pipeline.stages.package import PackageNode
from minitron_deploy.pipeline.stages.prune import PruneNode
from minitron_deploy.pipeline.stages.search import SearchNode
from minitron_deploy.pipeline.stages.source import SourceNode
from minitron_deploy.profile.checks import resolve_data, resolve_source, source_config


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
            pruned = v.prune is not None or v.from_ is not None or v.search
            out.append(64 if pruned else 32)
    return tuple(out)


def _search_nodes(profile, nodes, text, validation, source_shape) -> None:
    """`search/importance` (the source's scores) and `search` (the winner, pruned)."""

    seed, data = profile.seed, profile.data
    imp = _seeded(profile.importance, seed)
    inputs = {"model": "source", "calibration": text(data.calibration, "calibration")}
    meta = {"shapes": {"model": source_shape}}
    nodes.append(
        Node(
            "search/importance",
            "importance",
            None,
            ImportanceNode(
                importance=imp.model_copy(update={"layer_loss_blocks": ()}), calibration="train"
            ),
            inputs,
            meta,
        )
    )
    user = next((v for v in profile.variants if v.search and v.distill is not None), None)
    search = _seeded(profile.search, seed).without_unused()
    # the short distillations: the searched variant's settings, `search.steps` long, no
    # checkpoint (~4 s each for SmolLM2 students): a killed search redoes at most the
    # distillation it was in; finished ones are kept in the search cache
    base = user.distill if user else DistillConfig()
    update = {"steps": search.steps, "eval_every": 0, "seed": search.seed}
    distill = base.model_copy(update=update).without_checkpoints()
    bench = None
    if profile.bench is not None and profile.search.budget.min_speedup is not None:
        bench = _seeded(profile.bench, seed).model_copy(update={"batch": None})
    val_node, val_split = validation()
    # (search) the re-rank also scores the held-out domains (small edit: holdout inputs)

    held = {holdout_label(h): h for h in data.holdout}
    node = SearchNode(
        search=search,
        bench=bench,
        distill=distill,
        training="train",
        validation=val_split,
        holdout=tuple(held),
    )
    inputs = {
        "model": "source",
        "scores": "search/importance",
        "training": text(data.training, "training"),
        "validation": val_node,
        **{f"holdout:{k}": text(h, f"holdout-{k}") for k, h in held.items()},
    }
    nodes.append(Node("search", "search", None, node, inputs, meta))


def _prune_validation(prune: Any, imp: Any, n_layers: int | None) -> bool:
    """Whether pruning ranks layers by loss itself (not from the importance scores)."""

    if not prune.ranks_layers_by_loss:
        return False
    if n_layers is None:
        return True  # shape unknown here: keep the text at hand
    key = depth_score_key(prune, n_layers)
    stored = {f"layer_loss_drop{k}" for k in imp.layer_loss_blocks}
    return key is not None and key not in stored


def build_graph(
    profile: Any, base_dir: Path | None = None, source_shape: dict | None = None
) -> list[Node]:
    """The nodes of a profile, in an order where every input comes first (`source_shape`:
    the source's config when it is not at hand, e.g. planning a cluster run on a laptop)."""

    base_dir = base_dir or Path.cwd()
    seed, data = profile.seed, profile.data
    vf = data.val_fraction
    source_shape = source_shape or source_config(profile.source, base_dir)
    source = SourceNode(source=resolve_source(profile.source, base_dir))
    nodes = [Node("source", "source", None, source, meta={"shapes": {"model": source_shape}})]
    texts: dict[str, str] = {}  # resolved source -> its data node

    def text(src: str, role: str) -> str:
        """The data node of text source `src` (added on first use, named by its first role)."""
        src = resolve_data(src, base_dir)
        if src not in texts:
            texts[src] = nid = f"data:{role}"
            node = DataNode(source=src, val_fraction=vf)
            nodes.append(Node(nid, "data", None, node, {"tokenizer": "source"}))
        return texts[src]

    def validation() -> tuple[str, str]:
        """(data node, split) of the held-out text."""
        if data.validation:
            return text(data.validation, "validation"), "all"
        return text(data.training, "training"), "validation"

    final: dict[str | None, str] = {None: "source"}
    shapes: dict[str | None, dict | None] = {None: source_shape}
    if profile.search is not None:
        _search_nodes(profile, nodes, text, validation, source_shape)
    for v in profile.variants:
        parent = final[v.from_]
        model = parent
        shape = parent_shape = shapes[v.from_]
        if v.search:
            model, shape = "search", None  # the winner's shape is known once the search ran
        if v.prune is not None:
            imp = _seeded(v.importance or profile.importance, seed)
            inputs = {"model": parent, "calibration": text(data.calibration, "calibration")}
            val_split = None
            if imp.layer_loss_blocks:
                inputs["validation"], val_split = validation()
            imp_node = ImportanceNode(importance=imp, calibration="train", validation=val_split)
            nodes.append(
                Node(
                    f"{v.name}/importance",
                    "importance",
                    v.name,
                    imp_node,
                    inputs,
                    meta={"shapes": {"model": parent_shape}},
                )
            )
            prune = _seeded(v.prune, seed)
            n_layers = shape["num_hidden_layers"] if shape else None
            ranks_here = _prune_validation(prune, imp, n_layers)
            inputs = {"model": parent, "scores": f"{v.name}/importance"}
            val_split = None
            if ranks_here:
                inputs["validation"], val_split = validation()
            prune_node = PruneNode(prune=prune.without_unused(ranks_here), validation=val_split)
            # scale: the target shape from the one PrunePlan pruning itself computes
            shape = plan_prune(shape, prune).target_shape if shape else None
            nodes.append(
                Node(
                    f"{v.name}/prune",
                    "prune",
                    v.name,
                    prune_node,
                    inputs,
                    meta={"shapes": {"model": parent_shape}},
                )
            )
            model = f"{v.name}/prune"
        if v.distill is not None:
            val_node, val_split = validation()
            held = {holdout_label(h): h for h in data.holdout}
            node = DistillNode(
                distill=_seeded(v.distill, seed),
                training="train",
                validation=val_split,
                holdout=tuple(held),
            )
            teacher = final[v.teacher] if v.teacher else parent
            inputs = {
                "teacher": teacher,
                "student": model,
                "training": text(data.training, "training"),
                "validation": val_node,
                **{f"holdout:{k}": text(h, f"holdout-{k}") for k, h in held.items()},
            }
            t_shape = shapes[v.teacher] if v.teacher else parent_shape
            meta = {"shapes": {"teacher": t_shape, "student": shape}}
            nodes.append(Node(f"{v.name}/distill", "distill", v.name, node, inputs, meta))
            model = f"{v.name}/distill"
        final[v.name] = model
        shapes[v.name] = shape
        exports: dict[str, str] = {}
        if v.export is not None:
            export = _seeded(v.export, seed)
            for fmt in export.formats:
                settings = export.settings(fmt)
                inputs = {"model": model}
                if settings.dtype == "fp8":
                    own = export.calib_data
                    role = f"{v.name}-calibration" if own else "calibration"
                    inputs["calibration"] = text(own or data.calibration, role)
                node = ExportNode(
                    format=fmt,
                    settings=settings,
                    calibration="train" if settings.dtype == "fp8" else None,
                )
                nid = f"{v.name}/export:{fmt}"
                meta = {"shapes": {"model": shape}}
                nodes.append(Node(nid, "export", v.name, node, inputs, meta))
                exports[fmt] = nid
        if v.package is not None:
            inputs = {"model": model}
            if v.package.backend in ("trtllm", "vllm"):  # they serve the exported folder
                # contracts: the served export is read from the format records (hf_model,
                # serve_rank), not from a hard-coded ("hf-fp8", "hf")
                served = [f for f in exports if FORMATS[f].hf_model]
                if served:
                    fmt = max(served, key=lambda f: FORMATS[f].serve_rank)
                    inputs["export"] = exports[fmt]
            node = PackageNode(package=v.package)
            meta = {"shapes": {"model": shape}}
            nodes.append(Node(f"{v.name}/package", "package", v.name, node, inputs, meta))
    if profile.eval is not None:
        cfg = _seeded(profile.eval, seed)
        meta = {"shapes": {"model": source_shape}}
        nodes.append(
            Node("teacher/eval", "eval", None, EvalNode(eval=cfg), {"model": "source"}, meta)
        )
        for v in profile.variants:
            if final[v.name] != "source":
                meta = {"shapes": {"model": shapes[v.name]}}
                node = EvalNode(eval=cfg)
                nodes.append(
                    Node(f"{v.name}/eval", "eval", v.name, node, {"model": final[v.name]}, meta)
                )
    if profile.bench is not None:
        members = [v for v in profile.variants if v.bench.enabled]
        if members:
            bench = _seeded(profile.bench, seed).model_copy(
                update={"batch": bench_batches(profile, members)}
            )
            gate = {v.name: v.bench.min_speedup for v in members if v.bench.min_speedup}
            node = BenchNode(bench=bench, members=tuple(v.name for v in members), gate=gate)
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
