"""The ``folder`` layout: your own tracklets, as videos or frame folders, sorted into splits by path.

Layout::

    ROOT/<split>/<pid>/<camid>/<tracklet>
        <split>    train, query or gallery (any of them may be absent, not all)
        <pid>      a non-negative integer, used as-is (leading zeros allowed: 0007 is 7)
        <camid>    a non-negative integer, used as-is (0-based)
        <tracklet> a video file (.mp4 .avi .mkv .webm .mov) or a folder of frame images (.jpg .jpeg .png),
                   frames taken in name order

Unlike the benchmark layouts, every file is decoded once here: a frame image that does not decode is reported by path
and left out of its tracklet, and a video that cannot be opened or whose last frame does not decode is reported and
left out, so training never meets it; with ``strict`` either is an error. Hidden entries (``.name``) are ignored.
The tracklet id is the path below ROOT (``train/7/0/walk.mp4``). Gallery rule: ``gallery_only``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tfclip_cli import frames
from tfclip_cli.datasets.common import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Layout, Parsed, Problems, build_all
from tfclip_cli.errors import DataError
from tfclip_cli.tables import SPLITS, Split, Tracklet

logger = logging.getLogger(__name__)

LAYOUT = Layout(
    description="the folder layout ROOT/<split>/<pid>/<camid>/<tracklet> with <split> in train, query, gallery, "
    "integer <pid> and <camid>, and <tracklet> a video file or a folder of .jpg/.png frames",
    hint="point ROOT at the folder holding train/, query/ and/or gallery/",
)
VERIFY_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Candidate:
    """A tracklet found on disk, before its files are verified."""

    path: Path
    tracklet_id: str
    pid: int
    camid: int
    split: Split


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of a split or pid folder; stray files are logged and ignored."""
    entries = _visible(folder)
    for entry in entries:
        if not entry.is_dir():
            logger.warning("ignored %s: expected only folders here (%s)", entry, LAYOUT.description)
    return [entry for entry in entries if entry.is_dir()]


def _number(path: Path, what: str) -> int:
    if not path.name.isdigit():
        raise DataError(f"{path}: {path.name!r} is not a {what}; expected {LAYOUT.description}", hint=LAYOUT.hint)
    return int(path.name)


def _is_tracklet(path: Path) -> bool:
    if path.is_dir():
        return True
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    logger.warning("ignored %s: neither a video (%s) nor a frame folder", path, " ".join(VIDEO_SUFFIXES))
    return False


def _find(root: Path) -> list[_Candidate]:
    """Every tracklet path of the layout, in path order.

    Raises:
        DataError: when ROOT has no split folder, or a pid or camid folder is not an integer.
    """
    if not root.is_dir():
        raise LAYOUT.missing(root)
    present = [split for split in SPLITS if (root / split).is_dir()]
    if not present:
        raise LAYOUT.missing(root / "train")
    for entry in _visible(root):
        if entry.is_dir() and entry.name not in SPLITS:
            logger.warning("ignored %s: not a split folder (%s)", entry, ", ".join(SPLITS))
    found = []
    for split in present:
        for pid_dir in _subfolders(root / split):
            pid = _number(pid_dir, "pid")
            for cam_dir in _subfolders(pid_dir):
                camid = _number(cam_dir, "camid")
                for path in filter(_is_tracklet, _visible(cam_dir)):
                    found.append(_Candidate(path, path.relative_to(root).as_posix(), pid, camid, split))
    return found


def _is_readable_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _frames_tracklet(candidate: _Candidate, problems: Problems) -> list[Tracklet]:
    """The tracklet of a frame folder, without the frames that do not decode."""
    images = [p for p in _visible(candidate.path) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    frames = []
    for image in images:
        if _is_readable_image(image):
            frames.append(str(image))
        else:
            problems.add(image, "the frame image does not decode (truncated or not an image)")
    if not images:
        problems.add(candidate.path, "no .jpg/.jpeg/.png frame images in this tracklet folder")
    if not frames:
        return []
    c = candidate
    return [Tracklet(c.tracklet_id, c.pid, c.camid, c.split, len(frames), frames=tuple(frames))]


def _video_tracklet(candidate: _Candidate, problems: Problems) -> list[Tracklet]:
    """The tracklet of a video file, when it opens and its last frame decodes."""
    c = candidate
    try:
        num_frames = frames.count_video_frames(c.path)
        tracklet = Tracklet(c.tracklet_id, c.pid, c.camid, c.split, num_frames, video=str(c.path))
        if num_frames > 0:
            frames.read_frames(tracklet, [num_frames - 1])
    except DataError as error:
        problems.add(c.path, f"the video does not decode ({error.message})")
        return []
    if num_frames == 0:
        problems.add(c.path, "the video has no frames")
        return []
    return [tracklet]


def _verify(candidate: _Candidate, problems: Problems) -> list[Tracklet]:
    if candidate.path.is_dir():
        return _frames_tracklet(candidate, problems)
    return _video_tracklet(candidate, problems)


def parse(root: Path, *, problems: Problems) -> Parsed:
    """Find and verify every tracklet of a folder-layout tree (see the module docstring).

    Raises:
        DataError: the layout is wrong, or (under strict) a file does not decode.
    """
    candidates = _find(root)
    verify = functools.partial(_verify, problems=problems)
    tracklets = build_all(candidates, verify, description="verifying tracklets", workers=VERIFY_THREADS)
    return Parsed(tracklets=tracklets, extra={})
