"""Progress for long work: a rich bar on a terminal, a summary line always."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Tick(Protocol):
    def __call__(self, advance: int = 1) -> None: ...


@contextmanager
def progress(description: str, total: int | None, *, unit_bytes: bool = False) -> Iterator[Tick]:
    """Yield a function that advances the bar; silent unless stderr is a terminal."""
    if not sys.stderr.isatty():
        yield lambda advance=1: None
        return
    columns = [TextColumn("{task.description}"), BarColumn()]
    if unit_bytes:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [TextColumn("{task.completed}/{task.total}")]
    columns.append(TimeRemainingColumn())
    # On stderr, the stream tested above: stdout may be a pipe carrying results.
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)

        def tick(advance: int = 1) -> None:
            bar.advance(task, advance)

        yield tick
