"""Atomic training checkpoints: weights (safetensors), optimizer, RNG states, data position.

Layout: `<out>/checkpoints/step_000050/{model.safetensors, trainer_state.pt, meta.json}` and a
`latest` file naming the newest complete one. Each checkpoint folder is written under a
temporary name and renamed into place, and `latest` is replaced atomically, so `kill -9` at
any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_dir, atomic_write_json, atomic_write_text

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """Every random generator the trainer can touch."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STUDENT_PREFIX = "student."  # the student's weights in the distillation module's state dict


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """The folder of checkpoint `step` under a run's checkpoints folder."""
    return Path(root) / f"step_{step:06d}"


def student_state(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's weights, named as in its own model, from the distillation module's state
    dict (a checkpoint's model.safetensors); the teacher's, if any, left out."""
    n = len(STUDENT_PREFIX)
    return {k[n:]: v for k, v in module_state.items() if k.startswith(STUDENT_PREFIX)}


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune old ones.

    Args:
        root: the checkpoints folder.
        step: optimizer steps completed.
        model_state: full (unsharded) state dict of the trained module.
        trainer_state: optimizer state, RNG states and anything else torch.save can hold
            (loaded back with `weights_only=True`).
        meta: JSON-able facts (config, data position, metrics so far).
        keep: number of most recent checkpoints to keep.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    with atomic_dir(final, overwrite=True) as tmp:
        # Clone so tied weights (one storage, two names) become separate tensors.
        tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model_state.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        atomic_write_json(tmp / "meta.json", {**meta, "step": step})
    atomic_write_text(root / LATEST, final.name + "\n")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.glob("step_*")
        if p.is_dir() and (p / "meta.json").is_file() and (p / "trainer_state.pt").is_file()
    ]
    return sorted(done, key=lambda p: p.name)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder named by `latest`, else the newest complete one, else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """(model state, trainer state, meta) of one checkpoint folder."""
    import json

    from safetensors.torch import load_file

    path = Path(path)
    try:
        model_state = load_file(str(path / "model.safetensors"))
        trainer_state = torch.load(path / "trainer_state.pt", weights_only=True)
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(
            f"cannot read checkpoint: {e}",
            where=str(path),
            fix="delete this checkpoint folder to resume from the previous one",
        ) from e
    return model_state, trainer_state, meta
