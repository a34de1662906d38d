"""The rules that say two footage tracklets can never be one person, and the camera graph they read.

1. **One camera, one time**: two tracklets of one camera that overlap in time are two people (when their absolute
   times are unknown, two tracklets of one video that overlap in its frame times).
2. **One place at a time**: one person is never in two cameras at once, unless the graph says those views overlap.
   Without a graph any two views may overlap, but only for a hand-over: tracklets of two cameras that overlap in
   time by more than ``HANDOVER_S`` are two people (a person walking from one view into an overlapping one is in
   both for a few seconds, not for the length of a visit).
3. **Travel takes time** (with a graph): a move from camera ``a`` to camera ``b`` takes at least the shortest
   path of ``min_s`` over the graph's links (negative ``min_s`` of overlapping views counting as 0); a gap shorter
   than that is two people. Cameras the graph does not connect have no minimum: the way between them is unseen.

A link's ``max_s`` is no rule: a longer gap may be a person who left the network and came back. Instead a pair of
tracklets at linked cameras whose gap lies in ``[min_s, max_s]`` is a *plausible move*, which linking favours
(``cluster``). Tracklets without absolute times (``start_time`` unknown) are judged by rule 1 within their video
only.

The camera graph (``cameras.yaml``, as ``tfclip prepare synthetic --footage`` writes it)::

    cameras:                       # optional: each camera's id (and, for people, its video and start)
      - {id: 0, video: cam0/cam0_20261203T120000.mp4, start_time: "2026-12-03T12:00:00Z"}
    links:                         # pairs of cameras a person walks between directly, either way
      - {cameras: [0, 1], overlap: false, min_s: 2.0, max_s: 9.5}
      - {cameras: [1, 2], overlap: true, min_s: -3.0, max_s: 1.5}   # overlapping views: in both at once
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tfclip_cli.errors import DataError

HANDOVER_S = 4.0
"""Longest time one person is taken to be in two cameras at once when no graph says which views overlap."""


@dataclass(frozen=True)
class CameraLink:
    """Two cameras a person walks between directly, either way, in ``min_s`` to ``max_s`` seconds from leaving one
    view to entering the other (negative: the views overlap)."""

    cameras: tuple[int, int]
    overlap: bool
    min_s: float
    max_s: float


@dataclass(frozen=True)
class CameraGraph:
    """The cameras of a network and their links."""

    cameras: tuple[int, ...]
    links: tuple[CameraLink, ...]

    def link(self, a: int, b: int) -> CameraLink | None:
        """The link between cameras ``a`` and ``b`` (either order), or None."""
        return next((link for link in self.links if set(link.cameras) == {a, b}), None)

    def min_travel_s(self, a: int, b: int) -> float:
        """The least seconds from leaving ``a`` to entering ``b``: the shortest path of ``max(min_s, 0)`` over the
        links; 0 when the graph does not connect them (or ``a == b``)."""
        best = {a: 0.0}
        heap = [(0.0, a)]
        while heap:
            seconds, camera = heapq.heappop(heap)
            if camera == b:
                return seconds
            if seconds > best.get(camera, np.inf):
                continue
            for link in self.links:
                if camera in link.cameras:
                    other = link.cameras[1] if link.cameras[0] == camera else link.cameras[0]
                    through = seconds + max(link.min_s, 0.0)
                    if through < best.get(other, np.inf):
                        best[other] = through
                        heapq.heappush(heap, (through, other))
        return 0.0


def _link(entry: object, path: Path) -> CameraLink:
    try:
        a, b = (int(c) for c in entry["cameras"])
        link = CameraLink((a, b), bool(entry.get("overlap", False)), float(entry["min_s"]), float(entry["max_s"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        raise DataError(f"{path}: link {entry!r} is not {{cameras: [A, B], overlap: true|false, min_s: S, max_s: S}}",
                        hint="see `tfclip link --help` for the camera graph's layout") from None
    if link.max_s < link.min_s or a == b:
        raise DataError(f"{path}: link {entry!r}: expected two cameras and min_s ≤ max_s")
    return link


def read_camera_graph(path: Path) -> CameraGraph:
    """Read a ``cameras.yaml`` (module docstring).

    Raises:
        DataError: naming the file when it is missing, not YAML, or a link is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: expected a camera graph (cameras.yaml)")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DataError(f"{path} is not YAML ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("links", []), list):
        raise DataError(f"{path}: expected a mapping with a list of links", hint="see `tfclip link --help`")
    links = tuple(_link(entry, path) for entry in document.get("links", []))
    cameras = {int(c["id"]) if isinstance(c, dict) else int(c) for c in document.get("cameras", [])}
    return CameraGraph(tuple(sorted(cameras | {c for link in links for c in link.cameras})), links)


@dataclass(frozen=True)
class TrackletTimes:
    """What the rules need of N tracklets, as arrays ``[N]``."""

    camids: np.ndarray  # int
    start_time: np.ndarray  # seconds since the epoch; NaN when unknown
    end_time: np.ndarray
    source_video: np.ndarray  # object: the video each one was cut from ("" when unknown)
    start_s: np.ndarray  # seconds into its video; NaN when unknown
    end_s: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> "TrackletTimes":
        """From tracklet rows (embeddings or gallery), missing columns read as unknown."""

        def column(name: str) -> np.ndarray:
            if name not in rows:
                return np.full(len(rows), np.nan)
            return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

        videos = rows["source_video"].fillna("").astype(str).to_numpy() if "source_video" in rows else (
            np.full(len(rows), "", dtype=object))
        return cls(rows["camid"].to_numpy(dtype=np.int64), column("start_time"), column("end_time"), videos,
                   column("start_s"), column("end_s"))

    def __len__(self) -> int:
        return len(self.camids)


def _overlapping(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``[N, N]``: the intervals ``[start, end)`` share a moment (False where either is unknown). A tracklet ends
    when its last frame does (``(last + 1) / fps``), so a track cut at one frame and continued at the next touch
    without overlapping."""
    with np.errstate(invalid="ignore"):
        return (start[:, None] < end[None, :]) & (start[None, :] < end[:, None])


def gaps_s(times: TrackletTimes) -> np.ndarray:
    """``[N, N]``: seconds from the end of the earlier tracklet to the start of the later one (negative when they
    overlap; NaN where a time is unknown)."""
    start, end = times.start_time, times.end_time
    return np.maximum(start[None, :] - end[:, None], start[:, None] - end[None, :])


def overlaps_s(times: TrackletTimes) -> np.ndarray:
    """``[N, N]``: seconds two tracklets are seen at once (negative when they are not; NaN where unknown)."""
    start, end = times.start_time, times.end_time
    return np.minimum(end[:, None], end[None, :]) - np.maximum(start[:, None], start[None, :])


def cannot_link(times: TrackletTimes, graph: CameraGraph | None = None) -> np.ndarray:
    """``[N, N]`` bool: pairs the rules (module docstring) say are two people; the diagonal is False."""
    same_camera = times.camids[:, None] == times.camids[None, :]
    known = ~np.isnan(times.start_time) & ~np.isnan(times.end_time)
    at_once = _overlapping(times.start_time, times.end_time)
    same_video = (times.source_video[:, None] == times.source_video[None, :]) & (times.source_video[:, None] != "")
    unknown_pair = ~(known[:, None] & known[None, :])
    within_video = same_video & unknown_pair & _overlapping(times.start_s, times.end_s)
    forbidden = same_camera & (at_once | within_video)  # rule 1
    allowed_at_once = np.zeros_like(forbidden)
    if graph is not None:
        for link in graph.links:
            if link.overlap:
                a, b = link.cameras
                allowed_at_once |= ((times.camids[:, None] == a) & (times.camids[None, :] == b)) | (
                    (times.camids[:, None] == b) & (times.camids[None, :] == a))
    if graph is None:
        with np.errstate(invalid="ignore"):
            forbidden |= ~same_camera & (overlaps_s(times) > HANDOVER_S)  # rule 2, hand-overs allowed
    else:
        forbidden |= ~same_camera & at_once & ~allowed_at_once  # rule 2
        gaps, travel = gaps_s(times), _travel_matrix(times.camids, graph)  # rule 3
        with np.errstate(invalid="ignore"):
            forbidden |= ~same_camera & (gaps >= 0) & (gaps < travel)
    np.fill_diagonal(forbidden, False)
    return forbidden


def _travel_matrix(camids: np.ndarray, graph: CameraGraph) -> np.ndarray:
    """``[N, N]``: the graph's least travel seconds between the tracklets' cameras."""
    cameras = np.unique(camids)
    table = {(a, b): graph.min_travel_s(int(a), int(b)) for a in cameras for b in cameras}
    return np.array([[table[a, b] for b in camids] for a in camids]).reshape(len(camids), len(camids))


def plausible_moves(times: TrackletTimes, graph: CameraGraph) -> np.ndarray:
    """``[N, N]`` bool: pairs at linked cameras whose gap lies in the link's ``[min_s, max_s]``."""
    gaps = gaps_s(times)
    plausible = np.zeros((len(times), len(times)), dtype=bool)
    for link in graph.links:
        a, b = link.cameras
        pair = ((times.camids[:, None] == a) & (times.camids[None, :] == b)) | (
            (times.camids[:, None] == b) & (times.camids[None, :] == a))
        with np.errstate(invalid="ignore"):
            plausible |= pair & (gaps >= link.min_s) & (gaps <= link.max_s)
    return plausible
