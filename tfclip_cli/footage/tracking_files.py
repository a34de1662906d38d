"""A camera network's tracks and ground truth on disk, per camera, for ``tfclip evaluate-tracks``.

Three layouts, told apart by what the path is:

- a file: the AI City Challenge multi-camera layout, ``camera_id obj_id frame_id xmin ymin width height xworld
  yworld`` separated by spaces, frames counted from 1 (the world coordinates are not used);
- a folder of MOTChallenge files, ``frame,id,x,y,w,h,conf,...`` rows, frames counted from 1, one per camera:
  ``<camera>.txt`` (a tracker's results, as MOTChallenge and TrackEval keep them), ``<camera>/gt/gt.txt``
  (MOTChallenge ground truth) or ``<camera>/gt.txt`` (what ``tfclip prepare synthetic --footage`` draws);
- a folder written by ``tfclip track`` (``<camid>/<video>/<track>/track.json``, one video per camera): tracks only.

Ids are global: one id in two cameras is one person, as the AI City evaluation reads them. ``tfclip track`` numbers
its tracks per video, so its tracks get network-wide ids here, one per track. A camera is named by a number,
optionally after ``cam``, ``camera`` or ``c`` (``cam2``, ``c002``, ``2``; ``cam2_lobby.txt`` names camera 2, the
rule ``tfclip track`` applies to video names), so the same camera matches across layouts. In ground truth in the
MOTChallenge layout, rows of confidence 0 are not targets and are dropped, as MOTChallenge does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tfclip_cli.datasets.footage import TRACK_FILE
from tfclip_cli.datasets.mot import GT_NAME, GroundTruth, from_rows, read_gt, read_table
from tfclip_cli.errors import DataError
from tfclip_cli.footage.track import Track

CAMERA_NAME = re.compile(r"^(?:camera|cam|c)?[_-]?(\d+)(?!\d)", re.IGNORECASE)
AICITY_ROWS = "AI City rows camera_id obj_id frame_id xmin ymin width height xworld yworld"
MOT_ROWS = "MOTChallenge rows frame,id,x,y,w,h,conf,..."
LAYOUTS_HINT = ("pass an AI City file, a folder of MOTChallenge files (<camera>.txt, <camera>/gt/gt.txt or "
                "<camera>/gt.txt) or a tfclip track --out folder")


def camera_number(name: str) -> int | None:
    """The camera a file or folder name stands for (``cam2``, ``c002``, ``2``, ``cam2_lobby`` → 2), else None."""
    match = CAMERA_NAME.match(name)
    return int(match.group(1)) if match else None


def _checked(boxes: GroundTruth, source: str) -> GroundTruth:
    """``boxes`` after checking frames count from 1 and no id has two boxes in one frame.

    Raises:
        DataError: naming ``source``, the first such frame and id.
    """
    if len(boxes.frame_indices) and boxes.frame_indices.min() < 0:
        raise DataError(f"{source}: frame {boxes.frame_indices.min() + 1}: frames are counted from 1")
    pairs, counts = np.unique(np.stack([boxes.frame_indices, boxes.pids], axis=1), axis=0, return_counts=True)
    if (counts > 1).any():
        first = int(np.argmax(counts > 1))
        frame, pid = pairs[first]
        raise DataError(f"{source}: id {pid} has {counts[first]} boxes in frame {frame + 1}; expected at most one")
    return boxes


def _read_aicity(path: Path) -> dict[int, GroundTruth]:
    """The boxes with their ids of every camera in an AI City file."""
    with path.open(errors="replace") as text:
        first = text.readline()
    if "," in first:
        raise DataError(f"{path}, line 1: comma-separated, expected {AICITY_ROWS} (space separated)",
                        hint="for MOTChallenge files, pass the folder that holds them")
    rows = read_table(path, columns=7, expected=AICITY_ROWS, delimiter=None)
    cameras = {}
    for camera in np.unique(rows[:, 0]).astype(np.int64):
        mine = rows[rows[:, 0] == camera]
        cameras[int(camera)] = _checked(from_rows(mine[:, [2, 1, 3, 4, 5, 6]]), f"{path}, camera {camera}")
    return cameras


def _mot_files(folder: Path) -> dict[int, Path]:
    """One MOTChallenge file per camera in ``folder``.

    Raises:
        DataError: a camera folder without a camera number, or two files for one camera.
    """
    found: dict[int, Path] = {}
    candidates = [(p.stem, p) for p in sorted(folder.glob("*.txt")) if camera_number(p.stem) is not None]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        candidates += [(sub.name, f) for f in (sub / "gt" / GT_NAME, sub / GT_NAME) if f.is_file()]
    for name, path in candidates:
        camera = camera_number(name)
        if camera is None:
            raise DataError(f"{path}: {name} is not a camera number (expected e.g. cam2, c002 or 2)",
                            hint="rename the camera's folder after its number")
        if camera in found:
            raise DataError(f"camera {camera} has two files: {found[camera]} and {path}; expected one")
        found[camera] = path
    return found


def _track_files(folder: Path) -> list[Path]:
    """The ``track.json`` files of a ``tfclip track`` output (its unfinished hidden folders skipped)."""
    return sorted(p for p in folder.glob(f"*/*/*/{TRACK_FILE}")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_track_output(folder: Path, files: list[Path]) -> dict[int, list[Track]]:
    """Every track of a ``tfclip track`` output, numbered 1, 2, … across the network."""
    cameras: dict[int, list[Track]] = {}
    videos: dict[int, Path] = {}
    for number, path in enumerate(files, start=1):
        try:
            record = json.loads(path.read_text())
            camid, indices = int(record["camid"]), tuple(int(i) for i in record["frame_indices"])
            boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(len(indices), 4)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a track.json of tfclip track ({error})") from None
        video = path.parent.parent
        if videos.setdefault(camid, video) != video:
            raise DataError(f"camera {camid} has two videos in {folder}: {videos[camid].name} and {video.name}; "
                            "expected one video per camera", hint="score each video's tracks on its own")
        cameras.setdefault(camid, []).append(
            Track(track_id=number, camid=camid, frame_indices=indices, boxes=boxes,
                  scores=np.ones(len(indices), dtype=np.float32)))
    return cameras


def _tracks(boxes: GroundTruth, camid: int) -> list[Track]:
    """A file's boxes as one track per id, frames in order."""
    tracks = []
    for track_id in np.unique(boxes.pids):
        rows = np.flatnonzero(boxes.pids == track_id)
        rows = rows[np.argsort(boxes.frame_indices[rows], kind="stable")]
        tracks.append(Track(track_id=int(track_id), camid=camid,
                            frame_indices=tuple(int(i) for i in boxes.frame_indices[rows]),
                            boxes=boxes.boxes[rows], scores=np.ones(len(rows), dtype=np.float32)))
    return tracks


def _missing(path: Path) -> DataError:
    return DataError(f"{path} not found", hint=LAYOUTS_HINT)


def read_tracks(path: Path) -> dict[int, list[Track]]:
    """Every camera's tracks in ``path`` (any layout of the module docstring), by camera number.

    Raises:
        DataError: the path is missing, holds no layout, or a file is malformed (named with its line).
    """
    path = Path(path)
    if path.is_file():
        return {camid: _tracks(boxes, camid) for camid, boxes in _read_aicity(path).items()}
    if not path.is_dir():
        raise _missing(path)
    track_files = _track_files(path)
    if track_files:
        return _read_track_output(path, track_files)
    files = _mot_files(path)
    if not files:
        raise DataError(f"{path}: no tracks found", hint=LAYOUTS_HINT)
    return {camid: _tracks(_checked(from_rows(read_table(file, columns=6, expected=MOT_ROWS)), str(file)), camid)
            for camid, file in files.items()}


def read_truth(path: Path) -> dict[int, GroundTruth]:
    """Every camera's ground truth in ``path`` (an AI City file or a folder of MOTChallenge files), by camera.

    Raises:
        DataError: the path is missing, holds no ground truth, or a file is malformed (named with its line).
    """
    path = Path(path)
    if path.is_file():
        return _read_aicity(path)
    if not path.is_dir():
        raise _missing(path)
    if _track_files(path):
        raise DataError(f"{path} is a tfclip track output: tracks without true identities, not ground truth",
                        hint="pass the ground truth as an AI City file or a folder of MOTChallenge gt.txt files")
    files = _mot_files(path)
    if not files:
        raise DataError(f"{path}: no ground truth found", hint=LAYOUTS_HINT)
    return {camid: _checked(read_gt(file), str(file)) for camid, file in files.items()}
