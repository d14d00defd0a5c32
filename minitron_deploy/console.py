"""Shared console output: messages and progress on stderr, results on stdout.

Progress shows as a rich bar in a terminal, and as a plain line every
`MINITRON_PROGRESS_SECONDS` (default 30) when stderr is not a terminal (logs, CI), so a long
step never goes silent: "[distill width] 12/48 (25%) 1:02 elapsed, ~3:06 left, loss 4.2".

While a pipeline stage runs, `third_party_output_to(log)` sends everything else that writes to
stdout or stderr (libraries' prints and logging, tqdm bars, C code, child processes) to the
stage's log file; the project's own lines (this module's `info`, `Progress`, `err_console`) still
reach the console through `terminal()`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

# The console streams saved while third-party output goes to a stage's log (innermost last).
_TERMINALS: list[TextIO] = []


def terminal() -> TextIO:
    """Where the project's own lines go: stderr, or the console saved by
    `third_party_output_to` while a stage runs."""
    return _TERMINALS[-1] if _TERMINALS else sys.stderr


def capturing() -> bool:
    """Whether third-party output goes to a stage's log file now."""
    return bool(_TERMINALS)


class _Terminal(io.TextIOBase):
    """A stream that writes to `terminal()` at the time of each write (a rich Console made
    before a stage starts keeps reaching the console while the stage runs)."""

    def write(self, s: str) -> int:
        return terminal().write(s)

    def flush(self) -> None:
        terminal().flush()

    def isatty(self) -> bool:
        return terminal().isatty()

    def fileno(self) -> int:
        return terminal().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(terminal(), "encoding", None) or "utf-8"


def err_console():
    """Rich console on stderr (the console while a stage runs). Long lines are never cut into
    pieces: paths and messages stay whole in logs and CI output (a terminal wraps them)."""
    from rich.console import Console

    # In a log there is no terminal width: wide enough that tables keep one line per row.
    tty = terminal().isatty()
    return Console(file=_Terminal(), soft_wrap=True, width=None if tty else 160)


def _fd_of(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def third_party_output_to(path: str | Path) -> Iterator[Path]:
    """Send stdout and stderr, at the Python and the file-descriptor level, to `path`
    (appended) while the block runs; `terminal()` is the console meanwhile.

    Child processes inherit the redirection. Where stdout/stderr have no file descriptor (a
    test's capture), only the Python level is redirected.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    console = sys.stderr
    logf = open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
    saved: list[tuple[int, int]] = []
    own_console = False
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(logf.fileno(), fd)
        fd2 = dict(saved).get(2)
        if _fd_of(console) == 2 and fd2 is not None:
            # sys.stderr writes to fd 2, now the log: the console is the saved copy of fd 2.
            enc = getattr(console, "encoding", None) or "utf-8"
            console = open(  # noqa: SIM115
                os.dup(fd2), "w", encoding=enc, errors="backslashreplace", buffering=1
            )
            own_console = True
        _TERMINALS.append(console)
        with contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
            yield path
    finally:
        for s in (sys.stdout, sys.stderr, logf):
            with contextlib.suppress(Exception):
                s.flush()
        if _TERMINALS and _TERMINALS[-1] is console:
            _TERMINALS.pop()
        for fd, copy in reversed(saved):
            os.dup2(copy, fd)
            os.close(copy)
        if own_console:
            console.close()
        logf.close()


def log_tail(path: str | Path, lines: int = 30, width: int = 200) -> list[str]:
    """The last `lines` lines of a stage's log as a person reads them: of a line that a
    progress bar rewrote with carriage returns only its last state, each cut to `width`."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 256_000, 0))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.split("\n"):
        line = next((p for p in reversed(line.split("\r")) if p.strip()), "").rstrip()
        if line:
            out.append(line if len(line) <= width else line[: width - 1] + "…")
    return out[-lines:]


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
        self.tty = terminal().isatty()
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
                # a library's prints while a stage runs belong in its log, not above the bar
                redirect_stdout=not capturing(),
                redirect_stderr=not capturing(),
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
            print(self.line(), file=terminal(), flush=True)

    def close(self) -> None:
        """Stop the bar (in a log: one last line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        else:
            print(self.line(), file=terminal(), flush=True)
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
