"""What every layout parser shares: the parse result, required-file checks, directory listings, unusable files.

A parser checks its required files first (:func:`require`), lists folders once (:class:`Listing`), and hands each
unusable file to :class:`Problems`, which logs it by path and excludes it, or raises under ``--strict``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from tfclip_cli import display
from tfclip_cli.errors import DataError
from tfclip_cli.tables import GalleryRule, Tracklet

logger = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
LOGGED_PROBLEMS = 20  # unusable files logged one by one; the rest are counted


@dataclass(frozen=True)
class Parsed:
    """What a parser found: the tracklets (train, then query, then gallery) and per-kind details for the manifest."""

    tracklets: list[Tracklet]
    extra: dict = field(default_factory=dict)
    gallery_rule: GalleryRule | None = None  # the evaluation rule these tracklets need, when not the kind's own


@dataclass(frozen=True)
class Layout:
    """How to tell a user what a kind expects: the layout in words and where ROOT should point."""

    description: str
    hint: str

    def missing(self, path: Path) -> DataError:
        """The error for a required file or folder that is not there."""
        return DataError(f"{path} not found: expected {self.description}", hint=self.hint)


def require(root: Path, relative: Iterable[str], layout: Layout) -> None:
    """Check ROOT and each required path below it exist, before any parsing.

    Raises:
        DataError: naming the first missing path and the layout expected.
    """
    if not root.is_dir():
        raise layout.missing(root)
    for name in relative:
        if not (root / name).exists():
            raise layout.missing(root / name)


class Problems:
    """Unusable files met while parsing: reported by path and excluded, or an error under ``strict``."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.items: list[tuple[str, str]] = []

    def add(self, path: str | Path, reason: str) -> None:
        """Record one unusable file.

        Raises:
            DataError: at once when strict.
        """
        if self.strict:
            raise DataError(f"{path}: {reason}", hint="without --strict, unusable files are reported and skipped")
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    def log(self) -> None:
        """Log every recorded file (the first LOGGED_PROBLEMS by path, then a count)."""
        for path, reason in self.items[:LOGGED_PROBLEMS]:
            logger.warning("skipped %s: %s", path, reason)
        if len(self.items) > LOGGED_PROBLEMS:
            logger.warning("skipped %d more unusable files", len(self.items) - LOGGED_PROBLEMS)


class Listing:
    """File names per folder, each folder listed once (benchmark layouts reuse folders thousands of times)."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def names(self, folder: Path) -> frozenset[str]:
        """The entries of ``folder`` (empty when it does not exist)."""
        if folder not in self._names:
            self._names[folder] = frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()
        return self._names[folder]

    def images(self, folder: Path, prefix: str = "") -> list[str]:
        """Absolute paths of the frame images in ``folder`` whose names start with ``prefix``, sorted by name."""
        found = (n for n in self.names(folder) if n.startswith(prefix) and n.lower().endswith(IMAGE_SUFFIXES))
        return [os.path.join(folder, name) for name in sorted(found)]


def numbered_folders(folder: Path, prefix: str) -> dict[int, str]:
    """Subfolders named ``<prefix><digits>`` (``person001``) by their number, e.g. ``{1: "person001"}``."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        number = entry[len(prefix) :]
        if entry.startswith(prefix) and number.isdigit() and (folder / entry).is_dir():
            found[int(number)] = entry
    return found


def build_all(
    items: Sequence[T],
    build: Callable[[T], list[Tracklet]],
    *,
    description: str,
    workers: int = 1,
) -> list[Tracklet]:
    """Run ``build`` over ``items`` in order (on ``workers`` threads) with a progress bar; concatenate the results."""
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            built = list(display.progress(pool.map(build, items), description, total=len(items), unit="tracklets"))
    else:
        built = [build(item) for item in display.progress(items, description, unit="tracklets")]
    return [tracklet for group in built for tracklet in group]
