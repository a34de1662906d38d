"""MOTChallenge ground truth: one ``gt.txt`` beside each video, a row per person per frame.

Rows are ``frame,id,x,y,w,h,conf,-1,-1,-1`` with 1-based frames and boxes in pixels (x, y the top-left corner), as
MOTChallenge writes them. In memory, :class:`GroundTruth` uses what the rest of tfclip uses: 0-based frame indices
and ``x1, y1, x2, y2`` boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfclip_cli.errors import DataError
from tfclip_cli.tables import atomic_output

GT_NAME = "gt.txt"


@dataclass(frozen=True)
class GroundTruth:
    """Every ground-truth box of one video, one row per (frame, person)."""

    frame_indices: np.ndarray  # [N] int64, 0-based
    pids: np.ndarray  # [N] int64, identities (the file's ``id`` column)
    boxes: np.ndarray  # [N, 4] float32, x1, y1, x2, y2 pixels

    def at(self, frame_index: int) -> np.ndarray:
        """Row numbers of the boxes in frame ``frame_index``."""
        return np.flatnonzero(self.frame_indices == frame_index)


def gt_path(video: Path) -> Path:
    """Where a video's ground truth lives: ``gt.txt`` in the video's folder."""
    return Path(video).parent / GT_NAME


def write_gt(truth: GroundTruth, path: Path) -> None:
    """Write ``truth`` as a MOTChallenge ``gt.txt`` (rows sorted by frame, then id)."""
    order = np.lexsort((truth.pids, truth.frame_indices))
    lines = []
    for row in order:
        x1, y1, x2, y2 = (float(v) for v in truth.boxes[row])
        frame, pid = int(truth.frame_indices[row]) + 1, int(truth.pids[row])
        lines.append(f"{frame},{pid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,-1,-1,-1\n")
    with atomic_output(Path(path)) as temp:
        Path(temp).write_text("".join(lines))


def read_table(path: Path, *, columns: int, expected: str, delimiter: str | None = ",") -> np.ndarray:
    """The numbers of a text table: one row per non-blank line, at least ``columns`` fields each.

    Args:
        delimiter: the field separator; None for runs of white space (the AI City layout).
        expected: the layout in words, for error messages (``frame,id,x,y,w,h,conf,...``).
    Returns:
        ``[N, columns]`` float64, the first ``columns`` fields of every row (later fields are ignored).
    Raises:
        DataError: the file is missing, or a line (named by its number) is short or not numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: expected a text file of {expected} rows")
    rows = []
    with path.open(errors="replace") as lines:  # a binary file is caught as a line that is not numbers
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split(delimiter)
            if len(fields) < columns:
                raise DataError(f"{path}, line {number}: {len(fields)} columns, expected at least {columns} "
                                f"({expected})")
            try:
                rows.append([float(field) for field in fields[:columns]])
            except ValueError:
                raise DataError(f"{path}, line {number}: {line.strip()[:80]!r} is not numbers, expected {expected}"
                                ) from None
    return np.array(rows, dtype=np.float64).reshape(-1, columns)


def read_gt(path: Path) -> GroundTruth:
    """Read a MOTChallenge ``gt.txt`` (also MOT17's 9-column form; rows with conf 0 are ignored, as MOT does).

    Raises:
        DataError: the file is missing or a row is not ``frame,id,x,y,w,h,conf,...`` numbers.
    """
    rows = read_table(path, columns=7, expected="MOTChallenge gt.txt frame,id,x,y,w,h,conf,-1,-1,-1")
    return from_rows(rows[rows[:, 6] != 0])


def from_rows(rows: np.ndarray) -> GroundTruth:
    """MOTChallenge rows ``[N, ≥6]`` (frame counted from 1, id, x, y, w, h) as boxes with identities.

    A tracker's result in this layout reads the same way, its track ids in ``pids``.
    """
    x, y, w, h = rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]
    return GroundTruth(
        frame_indices=rows[:, 0].astype(np.int64) - 1,
        pids=rows[:, 1].astype(np.int64),
        boxes=np.stack([x, y, x + w, y + h], axis=1).astype(np.float32),
    )
