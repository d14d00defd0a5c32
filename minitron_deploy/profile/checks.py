"""Cross-field checks of a profile that need more than one field (or the source's shape).

They run on the merged profile dict even when some fields are invalid (each section is checked
only if it validates on its own), so one pass reports every problem. Prune targets go through
`compress.targets`, the same rules pruning applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.plan import plan_prune
from minitron_deploy.compress.targets import target_problems
from minitron_deploy.data.corpora import CORPORA, domains_of
from minitron_deploy.data.refs import holdout_label, is_prepared
from minitron_deploy.data.text import source_parts, source_weight
from minitron_deploy.engines.registry import check_engine
from minitron_deploy.errors import ConfigError, InputError
from minitron_deploy.export.config import ExportConfig
from minitron_deploy.export.registry import FORMATS
from minitron_deploy.model.io import read_config
from minitron_deploy.model.shapes import KNOWN_SHAPES, LlamaShape
from minitron_deploy.model.teacher import BUILTIN_MODELS
from minitron_deploy.model.tiny import TINY_DEFAULTS
from minitron_deploy.search.candidates import enumerate_candidates
from minitron_deploy.search.config import SearchConfig
from minitron_deploy.triton.config import PackageConfig

BUILTIN_SHAPES = {"smollm2-135m": KNOWN_SHAPES["smollm2-135m"]}


def resolve_source(source: str, base_dir: Path) -> str:
    """A relative path is taken relative to the profile's folder when it exists there (and
    not relative to the current folder)."""
    if source.startswith("builtin:") or Path(source).is_absolute():
        return source
    cand = base_dir / source
    return str(cand if cand.exists() and not Path(source).exists() else Path(source))


def _weighted(spec: str) -> tuple[str, int]:
    """`data.text.source_weight`, a bad weight left in place (the checks report it where it is)."""
    try:
        return source_weight(spec)
    except InputError:
        return spec, 1


def resolve_data(source: str, base_dir: Path) -> str:
    """`resolve_source` for each part of a comma-separated text source (weights `*N` kept)."""
    out = []
    for spec in (p.strip() for p in source.split(",")):
        if spec:
            part, n = _weighted(spec)
            out.append(resolve_source(part, base_dir) + (f"*{n}" if n > 1 else ""))
    return ",".join(out)


def known_shape(ref: str) -> dict[str, Any]:
    """A source shape for planning without the checkpoint: a published name or a config.json.

    Raises:
        ConfigError: neither a known name nor a readable config.json.
    """
    import json

    if ref in KNOWN_SHAPES:
        return dict(KNOWN_SHAPES[ref])
    try:
        return json.loads(Path(ref).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--source-shape {ref!r} is neither a known shape nor a readable config.json",
            fix=f"use one of {sorted(KNOWN_SHAPES)} or a path to config.json",
        ) from e


def _data_problems(data: dict[str, Any], variants: list, base_dir: Path | None) -> list:
    """Text sources that do not exist (cheap: paths only, no file is read)."""

    named = [(("data", k), data.get(k)) for k in ("calibration", "training", "validation")]
    holdout = data.get("holdout") if isinstance(data.get("holdout"), list) else []
    named += [(("data", "holdout", i), h) for i, h in enumerate(holdout)]
    for i, v in enumerate(variants):
        if isinstance(v, dict) and isinstance(v.get("export"), dict):
            named.append((("variants", i, "export", "calib_data"), v["export"].get("calib_data")))
    out = []
    for loc, src in named:
        if not isinstance(src, str) or not src:
            continue
        src = resolve_data(src, base_dir or Path.cwd())
        if is_prepared(src):
            continue
        try:
            source_parts(src)
        except InputError as e:
            out.append((loc, e.what))
    return out + _holdout_problems(data, holdout, base_dir or Path.cwd())


def _pieces(source: str, base_dir: Path) -> set[str]:
    """What a text source reads, coarsely: built-in domains and resolved paths."""

    out = set()
    for spec in resolve_data(source, base_dir).split(","):
        part = _weighted(spec)[0]
        name = part.split(":", 1)[1] if part.startswith("builtin:") else None
        if name in CORPORA:
            out |= {f"builtin:{d}" for d in domains_of(name)}
        elif name is None:
            out.add(str(Path(part).resolve()))
    return out


def _holdout_problems(data: dict[str, Any], holdout: list, base_dir: Path) -> list:
    """Held-out domains must be whole sources no other role reads, with distinct names."""

    out: list = []
    seen: dict[str, int] = {}
    used = {
        k: _pieces(data[k], base_dir)
        for k in ("calibration", "training")
        if isinstance(data.get(k), str) and data.get(k)
    }
    for i, h in enumerate(holdout):
        if not isinstance(h, str) or not h:
            continue
        label = holdout_label(h)
        if label in seen:
            out.append(
                (
                    ("data", "holdout", i),
                    f"held-out domains {seen[label]} and {i} are both named {label!r}",
                )
            )
        seen[label] = i
        mine = _pieces(h, base_dir)
        for role, pieces in used.items():
            both = {
                a
                for a in mine
                for b in pieces
                if a == b or a.startswith(b + "/") or b.startswith(a + "/")
            }
            if both:
                out.append(
                    (
                        ("data", "holdout", i),
                        f"held-out domain {h!r} is also read by data.{role} ({sorted(both)[0]}): "
                        "a held-out domain must be kept out of training and calibration",
                    )
                )
    return out


def source_config(source: str, base_dir: Path | None = None) -> dict[str, Any] | None:
    """The source model's config dict without loading weights (None if not available)."""

    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name == "tiny-llama":
            return dict(TINY_DEFAULTS)
        return BUILTIN_SHAPES.get(name)
    path = Path(source)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    try:
        return read_config(path)
    except InputError:
        return None


def _section(cls: type[BaseModel], raw: Any) -> Any:
    """`raw` validated as `cls`, or None when it is absent or has field errors of its own."""
    if not isinstance(raw, dict):
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError:
        return None


def semantic_problems(
    data: dict[str, Any],
    base_dir: Path | None = None,
    check_source: bool = True,
    source_shape: dict[str, Any] | None = None,
) -> list[tuple[tuple, str]]:
    """Problems spanning fields: source and text sources (unless `check_source` is off),
    prune targets along `from` chains, FP8 calibration, the trtllm Triton backend's export,
    ISL+OSL against the source's positions. `source_shape` stands in for the source's config."""

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
    elif source_shape is not None:
        cfg = source_shape
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
    calib = (data.get("data") or {}).get("calibration", "builtin:mixed")
    variants = data.get("variants") if isinstance(data.get("variants"), list) else []
    if check_source and source_shape is None and isinstance(data.get("data") or {}, dict):
        problems += _data_problems(data.get("data") or {}, variants, base_dir)
    # Shapes flow through `from` chains: a variant starts from its parent's pruned shape.
    shapes: dict[Any, dict[str, Any] | None] = {None: cfg}
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            continue
        parent = v.get("from")
        for key in ("from", "teacher"):  # both name a variant whose model exists by then
            named = v.get(key)
            if named is not None and named not in shapes:
                earlier = [k for k in shapes if k]
                msg = f"{key}={named!r} must name an earlier variant (earlier: {earlier})"
                problems.append((("variants", i, key), msg))
        shape = dict(shapes[parent]) if shapes.get(parent) else None
        prune = _section(PruneConfig, v.get("prune"))
        if prune is not None and shape is not None:
            found = target_problems(shape, prune)
            for field, msg in found:
                problems.append((("variants", i, "prune", field), msg))
            if not found:
                shape = plan_prune(shape, prune).target_shape  # scale: the one PrunePlan
        export = _section(ExportConfig, v.get("export"))
        if export is not None and not calib and not export.calib_data:
            fp8 = [f for f in export.formats if export.settings(f).dtype == "fp8"]
            if fp8:
                problems.append(
                    (
                        ("variants", i, "export"),
                        f"FP8 exports {fp8} need calibration data: set data.calibration",
                    )
                )
        package = _section(PackageConfig, v.get("package"))
        if package is not None and package.backend == "trtllm":
            served = [f for f in (export.formats if export else []) if FORMATS[f].hf_model]
            if not served:
                hf = " or ".join(f for f, spec in FORMATS.items() if spec.hf_model)
                problems.append(
                    (
                        ("variants", i, "package"),
                        "the trtllm Triton backend serves an exported HF checkpoint: add an "
                        f"export section with format {hf}",
                    )
                )
        shapes[v.get("name")] = shape
    bench = _section(BenchConfig, data.get("bench"))
    if bench is not None and cfg is not None:
        max_pos = int(cfg.get("max_position_embeddings") or 0)
        for isl, osl in bench.pairs():
            if max_pos and isl + osl > max_pos:
                problems.append(
                    (
                        ("bench", "isl_osl"),
                        f"ISL+OSL = {isl}+{osl} exceeds the "
                        f"source model's max_position_embeddings {max_pos}",
                    )
                )
    if bench is not None and bench.batch is not None and len(bench.batch) > 1:
        members = [v for v in variants if isinstance(v, dict) and _bench_enabled(v)]
        if len(bench.batch) != len(members):
            problems.append(
                (
                    ("bench", "batch"),
                    f"{len(bench.batch)} batch sizes for {len(members)} benchmarked variants; "
                    "give one for all, one per variant, or set variants[].bench.batch",
                )
            )
    problems += _search_problems(data, cfg, check_source)
    return problems


def _bench_enabled(v: dict[str, Any]) -> bool:
    b = v.get("bench")
    return not isinstance(b, dict) or b.get("enabled", True) is not False


def _search_problems(data: dict[str, Any], cfg: dict | None, check_source: bool) -> list:
    """A grid the source cannot be pruned to, or a speed budget with no engine to measure it,
    found before any stage runs."""

    search = _section(SearchConfig, data.get("search"))
    if search is None:
        return []
    out: list = []
    if cfg is not None:
        try:
            if not enumerate_candidates(LlamaShape.from_config(cfg), search):
                out.append((("search", "grid"), "the grid holds no shape smaller than the source"))
        except InputError as e:
            out.append((("search", "grid"), e.one_line()))
    if search.budget.min_speedup is not None:
        bench = _section(BenchConfig, data.get("bench"))
        if data.get("bench") is None:
            out.append(
                (
                    ("search", "budget", "min_speedup"),
                    "min_speedup is measured on the profile's bench engine, and the profile has "
                    "no bench section; add one (engine, isl_osl) or use max_params / "
                    "max_memory_gb",
                )
            )
        elif bench is not None and check_source:
            try:
                check_engine(bench)
            except InputError as e:
                out.append((("search", "budget", "min_speedup"), e.one_line()))
    return out
