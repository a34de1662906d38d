"""A person's timeline: the ordered visits to cameras of the tracklets linked into one person.

Tracklets of one person in one camera less than ``VISIT_GAP_S`` apart (a track cut by an occlusion) are one visit.
A visit's key frame is the key frame (source video, frame, box) of its longest tracklet. Visits are ordered by start
time; visits without an absolute time come last, by camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from tfclip_cli.tables import PERSON_COLUMN, row_to_tracklet

VISIT_GAP_S = 2.0
UNLINKED = -1
"""The person id of a tracklet no link assigned (rows of a gallery appended after linking)."""


@dataclass(frozen=True)
class KeyFrame:
    """The frame that shows a visit: a frame of a source video, the person's box in it, and the tracklet it is the
    key frame of."""

    tracklet_id: str
    source_video: str
    frame: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class CameraVisit:
    """One stay of a person in one camera's view."""

    camid: int
    start_time: float | None  # seconds since the epoch; None when the video's start is unknown
    end_time: float | None
    tracklet_ids: tuple[str, ...]
    key_frame: KeyFrame | None

    def to_dict(self) -> dict:
        key = self.key_frame
        return {"camid": self.camid, "start_time": self.start_time, "end_time": self.end_time,
                "tracklet_ids": list(self.tracklet_ids),
                "key_frame": None if key is None else {"tracklet_id": key.tracklet_id, "source_video": key.source_video,
                                                       "frame": key.frame, "box": list(key.box)}}


@dataclass(frozen=True)
class Person:
    """One person across cameras: an id and the visits in time order."""

    person_id: int
    visits: tuple[CameraVisit, ...]

    @property
    def cameras(self) -> tuple[int, ...]:
        """The cameras that saw this person, in order of first visit."""
        return tuple(dict.fromkeys(visit.camid for visit in self.visits))

    def to_dict(self) -> dict:
        return {"person": self.person_id, "visits": [visit.to_dict() for visit in self.visits]}


@dataclass(frozen=True)
class _Seen:
    """One tracklet's part in a timeline."""

    tracklet_id: str
    camid: int
    start_time: float | None
    end_time: float | None
    num_frames: int
    key_frame: KeyFrame | None


def _seen(record: pd.Series) -> _Seen:
    tracklet = row_to_tracklet(record)
    origin = tracklet.origin if tracklet is not None else None
    key = None if origin is None else KeyFrame(tracklet.tracklet_id, origin.source_video, origin.key_frame,
                                               origin.key_box)
    return _Seen(str(record["tracklet_id"]), int(record["camid"]), origin and origin.start_time,
                 origin and origin.end_time, int(record["num_frames"]), key)


def _visit(parts: list[_Seen]) -> CameraVisit:
    longest = max(parts, key=lambda part: part.num_frames)
    starts = [p.start_time for p in parts if p.start_time is not None]
    ends = [p.end_time for p in parts if p.end_time is not None]
    return CameraVisit(parts[0].camid, min(starts, default=None), max(ends, default=None),
                       tuple(p.tracklet_id for p in parts), longest.key_frame)


def _visits(seen: Iterable[_Seen]) -> tuple[CameraVisit, ...]:
    """Group one person's tracklets into visits (module docstring), in time order."""
    timed = sorted(seen, key=lambda s: (s.start_time is None, s.start_time or 0.0, s.camid))
    groups: list[list[_Seen]] = []
    for part in timed:
        last = groups[-1][-1] if groups else None  # a visit elsewhere in between ends this one
        is_near = (last is not None and last.camid == part.camid and part.start_time is not None
                   and last.end_time is not None and part.start_time - last.end_time < VISIT_GAP_S)
        if is_near:
            groups[-1].append(part)
        else:
            groups.append([part])
    return tuple(_visit(group) for group in groups)


def build_people(rows: pd.DataFrame) -> dict[int, Person]:
    """Every linked person of tracklet rows with a ``person_id`` column, by id (unlinked rows are left out)."""
    if PERSON_COLUMN not in rows:
        return {}
    ids = pd.to_numeric(rows[PERSON_COLUMN], errors="coerce").fillna(UNLINKED).astype("int64")
    people = {}
    for person_id in sorted(set(ids) - {UNLINKED}):
        mine = rows[(ids == person_id).to_numpy()]
        people[int(person_id)] = Person(int(person_id), _visits(_seen(r) for _, r in mine.iterrows()))
    return people


def person_of(rows: pd.DataFrame, person_id: int) -> Person | None:
    """The person ``person_id`` of tracklet rows with a ``person_id`` column, or None when no row is theirs."""
    if PERSON_COLUMN not in rows:
        return None
    ids = pd.to_numeric(rows[PERSON_COLUMN], errors="coerce").fillna(UNLINKED)
    return build_people(rows[(ids == person_id).to_numpy()]).get(person_id)
