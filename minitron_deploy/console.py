"""Shared console output: messages and progress on stderr, results on stdout.

Progress shows as a rich bar in a terminal, and as a plain line every
`MINITRON_PROGRESS_SECONDS` (default 30) when stderr is not a terminal (logs, CI), so a long
step never goes silent: "[distill width] 12/48 (25%) 1:02 elapsed, ~3:06 left, loss 4.2".
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def err_console():
    """Rich console on stderr. Long lines are never cut into pieces: paths and messages stay
    whole in logs and CI output (a terminal wraps them itself)."""
    from rich.console import Console

    # In a log there is no terminal width: wide enough that tables keep one line per row.
    return Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def info(msg: str) -> None:
    """A progress message on stderr (stdout is kept for results)."""
    err_console().print(msg, highlight=False)


def clock(seconds: float) -> str:
    """1234.5 -> '20:34'; 4000 -> '1:06:40'."""
    s = int(round(max(seconds, 0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Progress of one task with a known total.

    Args:
        description: what runs, e.g. "importance" or "distill width/distill".
        total: units of work (None: unknown; the count and rate are shown).
        start: units already done (a resumed run).
        enabled: False shows nothing.
    """

    def __init__(self, description: str, total: int | None, start: int = 0, enabled: bool = True):
        self.total = None if total is None else max(int(total), 1)
        self.description, self.done = description, start
        self.start_units, self.t0 = start, time.monotonic()
        self.msg = ""
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.interval = float(os.environ.get("MINITRON_PROGRESS_SECONDS", "30"))
        self.last_line = self.t0
        self._bar = None
        if enabled and self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[msg]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console(),
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=self.total, completed=start, msg="")

    def line(self) -> str:
        """The plain progress line (for logs)."""
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start_units) / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            text = f"[{self.description}] {self.done:,} done, {clock(elapsed)} elapsed"
            return text + (f", {self.msg}" if self.msg else "")
        left = (self.total - self.done) / rate if rate > 0 else None
        pct = 100.0 * self.done / self.total
        text = f"[{self.description}] {self.done}/{self.total} ({pct:.0f}%)"
        text += f" {clock(elapsed)} elapsed"
        if left is not None and self.done < self.total:
            text += f", ~{clock(left)} left"
        return text + (f", {self.msg}" if self.msg else "")

    def update(self, done: int | None = None, msg: str | None = None, advance: int = 0) -> None:
        """Set (or advance) the units done and the status text."""
        self.done = done if done is not None else self.done + advance
        if msg is not None:
            self.msg = msg
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, msg=self.msg)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the bar (in a log: one last line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        else:
            print(self.line(), file=sys.stderr, flush=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items` with a `Progress` (a bar, or plain lines in logs)."""
    if total is None:
        items = list(items)
        total = len(items)
    with Progress(description, total) as p:
        for item in items:
            yield item
            p.update(advance=1)


def print_json(obj: Any) -> None:
    """Print one JSON object as the last stdout line."""
    print(json.dumps(obj, default=str), flush=True)
