"""Shared console output: rich progress bars and messages on stderr, results on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def err_console():
    """Rich console on stderr. Long lines are never cut into pieces: paths and messages stay
    whole in logs and CI output (a terminal wraps them itself)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def info(msg: str) -> None:
    """A progress message on stderr (stdout is kept for results)."""
    err_console().print(msg, highlight=False)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A rich progress bar on stderr; silent when stderr is not a terminal and CI is set."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=not sys.stderr.isatty(),
    ) as progress:
        yield from progress.track(items, total=total, description=description)


def print_json(obj: Any) -> None:
    """Print one JSON object as the last stdout line."""
    print(json.dumps(obj, default=str), flush=True)
