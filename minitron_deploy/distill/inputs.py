"""A distillation run's inputs and output folder: the data opened on every rank, what the run
is (its identity), and the checks that a resume continues the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.data.refs import DataRef, as_split, validation_ref
from minitron_deploy.distill import distributed as dd
from minitron_deploy.distill.checkpoint import latest_checkpoint
from minitron_deploy.distill.config import DistillConfig
from minitron_deploy.errors import ConfigError, InputError

if TYPE_CHECKING:
    from minitron_deploy.data.shards import Split

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder", fix="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InputError(
            f"output folder {out} already holds a run",
            fix="pass --resume to continue it, or choose another --out",
        )


def run_identity(
    cfg: DistillConfig,
    teacher_dir: str | Path,
    student_dir: str | Path | None,
    train_data: Split,
    val_data: Split,
) -> dict[str, Any]:
    """What a run is: its settings and its inputs (data by content). A resume must present
    the same."""
    return {
        "config": cfg.model_dump(mode="json"),
        "teacher": str(Path(teacher_dir).resolve()),
        "student": str(Path(student_dir).resolve()) if student_dir is not None else None,
        "training": train_data.describe(),
        "validation": val_data.describe(),
    }


def open_data(
    train_data: DataRef | Split | str,
    val_data: DataRef | Split | None,
    tokenizer_dir: str | Path,
    d: dd.Dist,
) -> tuple[Split, Split]:
    """The prepared training and validation splits. A source that still needs preparing is
    prepared by rank 0 while the other ranks wait, then opened by all."""
    if isinstance(train_data, str):
        train_data = DataRef(source=train_data, split="train")
    if val_data is None:
        if not isinstance(train_data, DataRef):
            raise ConfigError("validation data is needed with prepared training data")
        val_data = validation_ref(train_data.source, None, train_data.val_fraction)
    if d.is_main:
        train, val = as_split(train_data, tokenizer_dir), as_split(val_data, tokenizer_dir)
    dd.barrier(d)
    if not d.is_main:
        train = as_split(train_data, tokenizer_dir, progress=False)
        val = as_split(val_data, tokenizer_dir, progress=False)
    return train, val


def open_holdout(
    holdout: dict[str, DataRef | Split], tokenizer_dir: str | Path, d: dd.Dist
) -> dict[str, Split]:
    """The prepared held-out domains (all of each source), rank 0 preparing first."""
    refs = {
        k: v.model_copy(update={"split": "all"}) if isinstance(v, DataRef) else v
        for k, v in holdout.items()
    }
    out = {}
    if d.is_main:
        out = {k: as_split(v, tokenizer_dir) for k, v in refs.items()}
    dd.barrier(d)
    if not d.is_main:
        out = {k: as_split(v, tokenizer_dir, progress=False) for k, v in refs.items()}
    return out


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_resume(stored: dict[str, Any], identity: dict[str, Any], out: Path, extend: bool) -> None:
    """Refuse to resume a run with other settings or inputs (`extend` allows more steps).

    Raises:
        ConfigError: naming every difference and how to start fresh.
    """
    diffs = _differences(stored, identity)
    if extend:
        old_steps = stored.get("config", {}).get("steps", 0)
        new_steps = identity["config"]["steps"]
        if new_steps < old_steps:
            raise ConfigError(
                f"--extend needs at least the stored {old_steps} steps, got {new_steps}",
                where=str(out),
            )
        diffs = [d for d in diffs if not d.startswith("config.steps:")]
    if diffs:
        raise ConfigError(
            "cannot resume: the stored run differs (" + "; ".join(diffs) + ")",
            where=str(out),
            fix="resume with the stored settings; pass --extend to continue a run with more "
            "--steps; or choose a new --out (or delete this one) to start fresh",
        )


def stored_identity(out: Path) -> dict[str, Any] | None:
    """The identity of the run in `out`: from summary.json, else its newest checkpoint."""
    if (out / SUMMARY).is_file():
        rec = json.loads((out / SUMMARY).read_text())
        if "identity" in rec:
            return rec["identity"]
    ck = latest_checkpoint(out / "checkpoints")
    if ck is not None and (ck / "meta.json").is_file():
        meta = json.loads((ck / "meta.json").read_text())
        return meta.get("identity")
    return None
