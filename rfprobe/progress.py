"""Progress bars for loops over data: rich on stderr, so `--json` output on stdout stays clean."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_stderr = Console(stderr=True)


def track(iterable: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    """Yield from `iterable`, drawing a progress bar on stderr when `enabled` (and stderr is a terminal)."""
    if not enabled or not _stderr.is_terminal:
        yield from iterable
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_stderr, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)
