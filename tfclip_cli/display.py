"""Everything a person sees: rich consoles (results on stdout, logs and progress on stderr), progress bars, logging."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

stdout = Console()
stderr = Console(stderr=True)


def is_main_process() -> bool:
    """False on every torchrun rank but rank 0: only rank 0 logs and shows progress."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(verbose: bool = False) -> None:
    """Route library logs to stderr through rich; quiet on non-zero ranks."""
    level = logging.DEBUG if verbose else logging.INFO
    if not is_main_process():
        level = logging.WARNING
    handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``12.3 tracklets/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> str:
        return f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s"


def progress(
    items: Iterable[T], description: str, *, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr (items/s and ETA); silent off a terminal or off rank 0."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not (stderr.is_terminal and is_main_process()):
        yield from items
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
