"""Fakes for evaluate-tracks: a small camera network written in the AI City, MOTChallenge and tfclip track layouts."""

from __future__ import annotations

import json
from pathlib import Path

# (camera, id, frame counted from 1, x, y, w, h): person 1 in both cameras, person 2 in camera 1 only
ROWS = [(1, 1, 1, 10, 20, 30, 60), (1, 2, 1, 100, 20, 30, 60), (1, 1, 2, 12, 20, 30, 60), (2, 1, 4, 50, 5, 20, 40)]


def write_aicity(rows: list[tuple], path: Path) -> Path:
    path.write_text("".join(f"{c} {i} {f} {x} {y} {w} {h} -1 -1\n" for c, i, f, x, y, w, h in rows))
    return path


def write_mot(rows: list[tuple], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for _, i, f, x, y, w, h in rows))
    return path


def write_mot_folder(rows: list[tuple], folder: Path, name: str) -> Path:
    """One MOTChallenge file per camera at ``folder / name.format(camera)``."""
    for camera in sorted({r[0] for r in rows}):
        write_mot([r for r in rows if r[0] == camera], folder / name.format(camera))
    return folder


def write_track_output(tracks: dict[tuple[int, str, str], dict[int, list[float]]], root: Path) -> Path:
    """tfclip track's layout: (camid, video, track) → {frame index: x1, y1, x2, y2}."""
    for (camid, video, track), boxes in tracks.items():
        folder = root / str(camid) / video / track
        folder.mkdir(parents=True)
        record = {"source_video": f"/videos/{video}.mp4", "camid": camid, "fps": 10.0,
                  "frame_indices": sorted(boxes), "boxes": [boxes[f] for f in sorted(boxes)],
                  "scores": [0.9] * len(boxes)}
        (folder / "track.json").write_text(json.dumps(record))
    return root
