"""Metrics: one JSON object per step in `metrics.jsonl`, and a PNG of the curves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from minitron_deploy.console import Progress
from minitron_deploy.fsutil import atomic_write_text


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

    kept = [r for r in read(path) if int(r.get("step", 0)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def curves_figure(
    records: list[dict[str, Any]], title: str = "distillation", teacher_loss: float | None = None
):
    """Four panels against step: training loss and its parts, held-out LM loss (with the
    teacher's as a dashed line), held-out KL to the teacher, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r and "lr" in r]
    val = [r for r in records if "val_loss" in r]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ax_train, ax_val), (ax_kl, ax_lr) = axes
    if train:
        steps = [r["step"] for r in train]
        ax_train.plot(steps, [r["loss"] for r in train], label="total", linewidth=2.5)
        for key, style in (("kl", "--"), ("ce", ":"), ("inter", "-.")):
            ys = [r.get("parts", {}).get(key) for r in train]
            if any(y for y in ys):
                ax_train.plot(steps, [y or 0.0 for y in ys], style, label=key)
        ax_lr.plot(steps, [r["lr"] for r in train], color="gray", label="lr")
    if val:
        vs = [r["step"] for r in val]
        ax_val.plot(vs, [r["val_loss"] for r in val], "o-", label="student, validation")
        kl = [(r["step"], r["val_kl"]) for r in val if "val_kl" in r]
        if kl:
            ax_kl.plot(*zip(*kl, strict=True), "o-", color="tab:red", label="validation")
        domains = sorted(
            k[len("holdout_") : -len("_loss")]
            for k in val[0]
            if k.startswith("holdout_") and k.endswith("_loss")
        )
        for dom in domains:
            ax_val.plot(vs, [r.get(f"holdout_{dom}_loss") for r in val], "s--", label=dom)
            ys = [r.get(f"holdout_{dom}_kl") for r in val]
            if any(y is not None for y in ys):
                ax_kl.plot(vs, ys, "s--", label=dom)
    if teacher_loss is not None:
        ax_val.axhline(teacher_loss, color="black", linestyle="--", label="teacher, validation")
    for ax, name in (
        (ax_train, "training loss"),
        (ax_val, "held-out LM loss (nats/token)"),
        (ax_kl, "held-out KL(teacher || student)"),
        (ax_lr, "learning rate"),
    ):
        ax.set_title(name)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(
    path: str | Path,
    records: list[dict[str, Any]],
    title: str = "distillation",
    teacher_loss: float | None = None,
) -> None:
    """`curves_figure` written as a PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records, title, teacher_loss)
    fig.savefig(path, dpi=90)
    plt.close(fig)


class ProgressBar:
    """Distillation progress (a bar, or plain lines in logs) with the latest loss, LR and
    validation loss."""

    def __init__(self, total: int, start: int, enabled: bool, title: str = "distill"):
        self.p = Progress(title, total, start=start, enabled=enabled)

    def update(self, rec: dict[str, Any]) -> None:
        msg = f"loss {rec['loss']:.4f} lr {rec['lr']:.2e}"
        if "val_loss" in rec:
            msg += f" val {rec['val_loss']:.4f}"
        for k, v in rec.items():
            if k.startswith("holdout_") and k.endswith("_loss"):
                msg += f" {k[8:-5]} {v:.4f}"
        self.p.update(rec["step"], msg)

    def close(self) -> None:
        self.p.close()
