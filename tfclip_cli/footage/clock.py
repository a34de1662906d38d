"""When a video was filmed: its absolute start time, so every tracklet cut from it knows when it was seen.

Times are seconds since the epoch (UTC), floats, named ``start_time`` / ``end_time`` wherever they travel
(``track.json``, the manifest, the embeddings table, the gallery rows). A video's start comes from, in order:

1. ``tfclip track --start-time VIDEO=TIME`` (or ``--start-time TIME`` for a single video);
2. its file name: a ``YYYYMMDDTHHMMSS`` stamp anywhere in the stem, read as UTC (``cam2_20261203T120000.mp4``), as
   many recorders name their files;
3. the container's ``creation_time`` tag (MP4/MOV write it; PyAV reads it), when present.

Without any, the video's tracklets carry no absolute time and ``tfclip link`` can apply only the rules that need
none (two tracklets of one video that overlap in time are never one person).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping, Sequence

import av

from tfclip_cli.errors import UserError

log = logging.getLogger(__name__)

NAME_STAMP = re.compile(r"(?<!\d)(\d{8}T\d{6})(?!\d)")
STAMP_FORMAT = "%Y%m%dT%H%M%S"

StartSource = Literal["option", "name", "container"]


@dataclass(frozen=True)
class StartTime:
    """A video's absolute start, and where it was read."""

    time: float
    """Seconds since the epoch of the video's first frame."""
    source: StartSource


def parse_time(text: str) -> float:
    """A time as users write it: ISO 8601 (``2026-12-03T12:00:00``, a zone suffix such as ``Z`` or ``+01:00``;
    without one, UTC), a ``YYYYMMDDTHHMMSS`` stamp, or seconds since the epoch.

    Raises:
        UserError: for anything else.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    for parse in (datetime.fromisoformat, lambda value: datetime.strptime(value, STAMP_FORMAT)):
        try:
            moment = parse(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    raise UserError(f"time {text!r}: expected ISO 8601 (2026-12-03T12:00:00, UTC unless a zone is given), "
                    "a stamp such as 20261203T120000, or seconds since the epoch")


def format_time(seconds: float) -> str:
    """``seconds`` since the epoch as an ISO 8601 UTC time, e.g. ``2026-12-03T12:00:05Z``."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def stamp_name(seconds: float) -> str:
    """The ``YYYYMMDDTHHMMSS`` stamp (UTC) that the file-name rule reads back as ``seconds`` (whole seconds)."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime(STAMP_FORMAT)


def time_from_name(video: Path) -> float | None:
    """The start time stamped in a video's file name (``cam2_20261203T120000.mp4``), or None."""
    match = NAME_STAMP.search(Path(video).stem)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:  # a stamp-shaped number that is no date (month 13)
        return None


def container_time(video: Path) -> float | None:
    """The container's ``creation_time`` tag, or None when absent, unreadable or the muxer's zero date."""
    try:
        with av.open(str(video)) as container:
            tags = [container.metadata, *(stream.metadata for stream in container.streams)]
    except (av.error.FFmpegError, OSError):
        return None
    for tag in (t.get("creation_time") for t in tags):
        if tag:
            try:
                seconds = parse_time(tag)
            except UserError:
                continue
            if seconds > 0:  # 1970-01-01 / 1904 mean "not set" to many muxers
                return seconds
    return None


def video_start_time(video: Path, given: float | None = None) -> StartTime | None:
    """The start of ``video``: ``given``, else its name's stamp, else its container's creation time, else None."""
    if given is not None:
        return StartTime(given, "option")
    named = time_from_name(video)
    if named is not None:
        return StartTime(named, "name")
    tagged = container_time(video)
    return None if tagged is None else StartTime(tagged, "container")


def parse_start_options(values: Sequence[str], videos: Sequence[Path]) -> dict[str, float]:
    """``--start-time`` values (``VIDEO=TIME``, or a bare ``TIME`` for a single video) as start times by video path.

    Raises:
        UserError: a bare time with several videos, a video not among ``videos``, or an unreadable time.
    """
    known = {str(Path(v)): Path(v) for v in videos}
    starts: dict[str, float] = {}
    for value in values:
        name, separator, when = value.rpartition("=")
        if not separator:
            if len(videos) != 1:
                raise UserError(f"--start-time {value}: with several videos, name the video: --start-time VIDEO=TIME")
            name, when = str(Path(videos[0])), value
        if name not in known:
            raise UserError(f"--start-time {value}: {name} is not one of the videos to track")
        starts[name] = parse_time(when)
    return starts


def resolve_start_times(videos: Sequence[Path], given: Mapping[str, float]) -> dict[str, float | None]:
    """Each video's start time (see the module docstring) by path; warns for each video without one."""
    starts: dict[str, float | None] = {}
    for video in videos:
        found = video_start_time(Path(video), given.get(str(Path(video))))
        starts[str(Path(video))] = None if found is None else found.time
        if found is None:
            log.warning("%s: no start time (no --start-time, no YYYYMMDDTHHMMSS in its name, no creation time in "
                        "the file): its tracklets carry no absolute time, so cross-camera time rules are off for it",
                        video)
        else:
            log.info("%s starts at %s (from its %s)", video, format_time(found.time), found.source)
    return starts


def tracklet_times(start: float | None, frame_indices: Sequence[int], fps: float) -> dict[str, float]:
    """``{"start_time", "end_time"}`` of a tracklet: when its first frame starts and its last frame ends
    (``(last + 1) / fps``, as ``end_s``), or ``{}`` when the video's start is unknown."""
    if start is None:
        return {}
    return {"start_time": start + frame_indices[0] / fps, "end_time": start + (frame_indices[-1] + 1) / fps}
