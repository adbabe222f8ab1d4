"""Progress reporting for long operations: bars on a terminal, silence otherwise.

Work code reports through the small :class:`Progress` interface and does not care where it
goes. :func:`progress_for` picks rich's bars when the stream is a terminal. Updates may
come from worker threads (the converter compresses in one).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol, TextIO

__all__ = ["NullProgress", "Progress", "progress_for"]


class Progress(Protocol):
    def add(self, description: str, total: int) -> int:
        """Start a task of ``total`` units (bytes); returns its id."""
        ...

    def advance(self, task: int, n: int) -> None: ...

    def finish(self, task: int) -> None: ...


class NullProgress:
    """Reports nothing."""

    def add(self, description: str, total: int) -> int:
        return 0

    def advance(self, task: int, n: int) -> None:
        pass

    def finish(self, task: int) -> None:
        pass


class _RichProgress:
    def __init__(self, progress) -> None:
        self._p = progress

    def add(self, description: str, total: int) -> int:
        return self._p.add_task(description, total=total)

    def advance(self, task: int, n: int) -> None:
        self._p.advance(task, n)

    def finish(self, task: int) -> None:
        total = self._p.tasks[task].total if task < len(self._p.tasks) else None
        if total is not None:
            self._p.update(task, completed=total)


@contextlib.contextmanager
def progress_for(stream: TextIO | None = None) -> Iterator[Progress]:
    """Bars on ``stream`` (default stderr) if it is a terminal, else nothing."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with RichProgress(*columns, console=Console(file=stream)) as p:
        yield _RichProgress(p)
