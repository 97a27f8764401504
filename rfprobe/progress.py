"""Progress bars for loops over data: rich on stderr, so `--json` output on stdout stays clean."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_stderr = Console(stderr=True)


@contextmanager
def counter(total: int | None, description: str = "", enabled: bool = True,
            unit: int | None = None) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for work that reports its own completions: yields `advance()` to call once
    per finished item (a no-op when not `enabled` or stderr is not a terminal). With `unit` (examples per
    item, e.g. a batch size) it also shows examples per second."""
    if not enabled or not _stderr.is_terminal:
        yield lambda: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    if unit:
        columns.append(TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=_stderr, transient=True) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance():
            speed = progress.tasks[task].speed
            progress.update(task, advance=1, rate=f"{speed * unit:,.0f} images/s" if unit and speed else "")

        yield advance


def track(iterable: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True,
          unit: int | None = None) -> Iterator[T]:
    """Yield from `iterable`, drawing a progress bar on stderr when `enabled` (and stderr is a terminal);
    `unit`: examples per item, to show examples per second."""
    with counter(total, description, enabled, unit) as advance:
        for item in iterable:
            yield item
            advance()
