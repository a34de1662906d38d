"""Write linked tracklets' boxes with global person ids, for multi-camera scoring tools.

- ``aicity``: one file, a row per box: ``camera_id obj_id frame_id xmin ymin width height xworld yworld``,
  space-separated, frames 1-based, world coordinates -1 (unknown), as the AI City Challenge MTMC layout.
- ``mot``: a folder with one MOTChallenge file per camera, ``cam<N>.txt``, rows ``frame,id,x,y,w,h,1,-1,-1,-1``.

Ids are the person ids plus one (both layouts count objects from 1). A tracklet's frame indices are its origin's
frames when they run without gaps, else read from its crops' file names (``tfclip track`` names each crop by its
source frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from tfclip_cli.errors import DataError
from tfclip_cli.tables import FootageOrigin, Tracklet, atomic_output, row_to_tracklet

ExportFormat = Literal["aicity", "mot"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("aicity", "mot")


def frame_indices(tracklet: Tracklet) -> list[int]:
    """The 0-based source frame of each of a footage tracklet's boxes.

    Raises:
        DataError: a tracklet with gaps whose crop names are not frame numbers.
    """
    origin: FootageOrigin = tracklet.origin
    if len(origin.boxes) == origin.last_frame - origin.first_frame + 1:
        return list(range(origin.first_frame, origin.last_frame + 1))
    try:
        found = [int(Path(frame).stem) for frame in tracklet.frames or ()]
    except ValueError:
        found = []
    if len(found) != len(origin.boxes):
        raise DataError(f"tracklet {tracklet.tracklet_id}: its boxes skip frames and its crops are not named by frame",
                        hint="export tracklets written by tfclip track")
    return found


def box_rows(rows: pd.DataFrame, person_ids: np.ndarray) -> np.ndarray:
    """``[B, 7]``: camera, id (person + 1), 0-based frame, x, y, w, h of every box of the linked footage rows
    (person id ≥ 0), sorted by camera, frame and id."""
    boxes = []
    for (_, record), person in zip(rows.iterrows(), person_ids):
        tracklet = row_to_tracklet(record)
        if person < 0 or tracklet is None or tracklet.origin is None:
            continue
        for frame, (x1, y1, x2, y2) in zip(frame_indices(tracklet), tracklet.origin.boxes):
            boxes.append((tracklet.camid, int(person) + 1, frame, x1, y1, x2 - x1, y2 - y1))
    table = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    return table[np.lexsort((table[:, 1], table[:, 2], table[:, 0]))]


def write_aicity(boxes: np.ndarray, path: Path, *, force: bool = False) -> None:
    """``boxes`` (:func:`box_rows`) as one AI City file."""
    lines = [f"{int(c)} {int(i)} {int(f) + 1} {x:.2f} {y:.2f} {w:.2f} {h:.2f} -1 -1\n" for c, i, f, x, y, w, h in boxes]
    with atomic_output(Path(path), force=force) as temp:
        temp.write_text("".join(lines))


def write_mot(boxes: np.ndarray, folder: Path, *, force: bool = False) -> list[Path]:
    """``boxes`` (:func:`box_rows`) as one MOTChallenge file per camera in ``folder``; returns the files."""
    written = []
    for camid in np.unique(boxes[:, 0]).astype(int):
        mine = boxes[boxes[:, 0] == camid]
        lines = [f"{int(f) + 1},{int(i)},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,-1,-1,-1\n" for _, i, f, x, y, w, h in mine]
        path = Path(folder) / f"cam{camid}.txt"
        with atomic_output(path, force=force) as temp:
            temp.write_text("".join(lines))
        written.append(path)
    return written


def export_boxes(rows: pd.DataFrame, person_ids: np.ndarray, path: Path, *, layout: ExportFormat,
                 force: bool = False) -> None:
    """Write the boxes of every linked footage tracklet to ``path`` in ``layout`` (module docstring)."""
    boxes = box_rows(rows, person_ids)
    if layout == "aicity":
        write_aicity(boxes, path, force=force)
    else:
        write_mot(boxes, path, force=force)
