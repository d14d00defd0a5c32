"""Metrics: one JSON object per step in `metrics.jsonl`, and a PNG of the curves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (so `kill -9` loses at most that line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(path: str | Path) -> list[dict[str, Any]]:
    """All complete records (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate(path: str | Path, last_step: int) -> None:
    """Keep only records up to `last_step` (resume rewinds the log to its checkpoint)."""
    from minitron_deploy.fsutil import atomic_write_text

    kept = [r for r in read(path) if int(r.get("step", 0)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot(path: str | Path, records: list[dict[str, Any]], title: str = "distillation") -> None:
    """Training loss, its parts, validation loss and LR against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r and "lr" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        ax1.plot(steps, [r["loss"] for r in train], label="train loss")
        for key in ("kl", "ce", "inter"):
            ys = [r.get("parts", {}).get(key) for r in train]
            if any(y for y in ys):
                ax1.plot(steps, [y or 0.0 for y in ys], label=key, alpha=0.6)
        ax2.plot(steps, [r["lr"] for r in train], color="gray")
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val LM loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title(title)
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class ProgressBar:
    """A rich progress bar (stderr) showing the latest loss, LR and val loss; or nothing."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from minitron_deploy.console import err_console

            self.p = Progress(
                TextColumn("[bold]distill"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[msg]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console(),
            )
            self.p.start()
            self.task = self.p.add_task("distill", total=total, completed=start, msg="")

    def update(self, rec: dict[str, Any]) -> None:
        if self.p is not None:
            msg = f"loss {rec['loss']:.4f} lr {rec['lr']:.2e}"
            if "val_loss" in rec:
                msg += f" val {rec['val_loss']:.4f}"
            self.p.update(self.task, completed=rec["step"], msg=msg)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
