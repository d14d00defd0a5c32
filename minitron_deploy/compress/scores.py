"""Importance scores on disk (`scores.safetensors` + `scores.json`) and their checks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError

if TYPE_CHECKING:
    import torch

SCORES_FILE = "scores.safetensors"
SUMMARY_FILE = "scores.json"
# The provenance ("meta") shape `importance.score_checkpoint` writes, for the command and the
# pipeline alike: format, model {path, sha256}, calibration, validation, samples, seq_len,
# val_samples, dtype, config, layer_sequential, ranks, seconds, command.
META_FORMAT = 2


def normalize_meta(meta: dict[str, Any], where: str = "scores") -> dict[str, Any]:
    """`meta` in the current shape. Scores written before format 2 carry one of two older
    shapes (the command's: `data`, `samples`; the pipeline's: `calibration`, `rows`); their
    fields are mapped onto the current names, and missing ones are None.

    Raises:
        InputError: a format newer than this version reads.
    """
    if not meta:
        return meta
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or fmt > META_FORMAT:
        raise InputError(
            f"scores metadata has format {fmt!r}; this version reads formats up to {META_FORMAT}",
            where=where,
            fix="upgrade minitron-deploy, or recompute the scores with this version",
        )
    if fmt == META_FORMAT:
        return meta
    out = dict(meta)
    out["format"] = fmt
    out.setdefault("calibration", meta.get("data"))
    out.setdefault("samples", meta.get("rows"))
    for k in ("validation", "seq_len", "dtype", "seconds", "command"):
        out.setdefault(k, None)
    out.setdefault("val_samples", 0)
    out.setdefault("layer_sequential", False)
    out.setdefault("ranks", 1)
    return out


def summarize(scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A small JSON-able summary: shapes, and layers ranked by each layer metric."""
    s: dict[str, Any] = {"shapes": {k: list(v.shape) for k, v in scores.items()}}
    if "block_importance" in scores:
        bi = scores["block_importance"]
        s["block_importance"] = [round(float(x), 6) for x in bi]
        s["layers_by_block_importance"] = bi.argsort().tolist()
    for k, v in scores.items():
        if k.startswith("layer_loss_drop"):
            s[k] = [round(float(x), 6) for x in v]
    if "base_loss" in scores:
        s["base_loss"] = float(scores["base_loss"])
    return s


def save_scores(
    scores: dict[str, torch.Tensor],
    out_dir: str | Path,
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write `scores.safetensors` and `scores.json` (meta + summary) into `out_dir`.

    Args:
        scores: output of `importance.compute_importance`.
        out_dir: destination folder.
        meta: provenance (model hash, data source, config, ...), stored in both files.
        overwrite: replace an existing folder.
        extra: more JSON files to write beside them, {file name: object}.
    """
    import json

    from safetensors.torch import save_file

    from minitron_deploy.fsutil import atomic_dir, atomic_write_json

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in scores.items()}
        save_file(tensors, str(tmp / SCORES_FILE), metadata={"meta": json.dumps(meta, default=str)})
        atomic_write_json(tmp / SUMMARY_FILE, {"meta": meta, "summary": summarize(scores)})
        for name, obj in (extra or {}).items():
            atomic_write_json(tmp / name, obj)
    return Path(out_dir)


def load_scores(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read scores written by `save_scores` (the folder or the .safetensors file); the meta
    comes back as stored (`normalize_meta` maps older shapes onto the current one).

    Raises:
        InputError: missing or unreadable scores.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    f = path / SCORES_FILE if path.is_dir() else path
    if not f.is_file():
        raise InputError(
            f"no importance scores at {path}",
            fix="run `minitron-deploy importance --model DIR --data SRC --out SCORES` first",
        )
    try:
        with safe_open(str(f), framework="pt") as sf:
            scores = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118
            meta = json.loads((sf.metadata() or {}).get("meta", "{}"))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise InputError(f"cannot read scores ({e})", where=str(f), fix="recompute them") from e
    return scores, meta


def check_scores(
    scores: dict[str, torch.Tensor], config: Any, required: Iterable[str] = ()
) -> None:
    """Raise unless `scores` fit a model with `config` and hold every `required` key.

    Shapes come from the metrics' declarations (`metrics.score_shapes`); loss rankings
    (`layer_loss_drop{K}`) must have layers - K + 1 entries.

    Raises:
        InputError: a required key is missing, or a score has the wrong shape or non-finite values.
    """
    from minitron_deploy.compress.metrics import score_shapes
    from minitron_deploy.model.shapes import LlamaShape

    shape = LlamaShape.from_config(config)
    want = score_shapes(shape)
    for k in scores:
        if k.startswith("layer_loss_drop"):
            want[k] = (shape.num_hidden_layers - int(k.removeprefix("layer_loss_drop")) + 1,)
    missing = sorted(set(required) - set(scores))
    if missing:
        raise InputError(
            f"the importance scores lack {missing}, which this pruning target needs",
            fix="recompute the scores with this version (and --layer-loss-blocks for loss "
            "rankings), or pass validation data so layers are ranked here",
        )
    for k, t in scores.items():
        if k in want and tuple(t.shape) != want[k]:
            raise InputError(
                f"scores[{k!r}] has shape {tuple(t.shape)} but the model needs {want[k]}",
                fix="compute the scores on this very model",
            )
        if not bool(t.isfinite().all()):
            raise InputError(f"scores[{k!r}] hold non-finite values", fix="recompute them")
