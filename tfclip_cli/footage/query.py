"""``tfclip query`` on footage: find the people in a query video and search the gallery for each of them.

A query input is either a person crop (today's query: one person filling the frame) or footage (a scene with
several people, or people small in the frame). The detector decides, never the file name: on the first, middle and
last frame, a frame where it finds nobody, or one person covering at least :data:`CROP_SHARE` of the frame, looks
like a crop; when most of them do not, the input is footage. Footage is tracked (:func:`~tfclip_cli.footage.track.
track_video`), each person's track of at least ``min_frames`` frames is cropped and searched for, and the people
are numbered 1, 2, ... by the frame they first appear in; ``person`` picks one by number, ``pointer`` (a frame and
a box) picks the one whose box there overlaps it most.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tfclip_cli.clips import read_frames
from tfclip_cli.datasets.footage import crop_name
from tfclip_cli.errors import UserError
from tfclip_cli.footage.detect import Detector, detector_for_video, video_info
from tfclip_cli.footage.track import Track, iou_matrix, track_video
from tfclip_cli.footage.tracklets import write_crops
from tfclip_cli.index import (
    Gallery, QueryEmbedder, QueryResult, SearchOptions, load_index, load_query_embedder, query_tracklets,
    warn_if_stale,
)
from tfclip_cli.inference import tracklet_from_path
from tfclip_cli.tables import Tracklet

CROP_SHARE = 0.4  # one confident person covering this share of the frame: the input is a person crop
CONFIDENT = 0.5  # detections at least this confident count when deciding crop or footage
MIN_POINTER_IOU = 0.3  # least overlap of --box with a person's box at --frame


@dataclass(frozen=True)
class PersonPointer:
    """A person pointed at in a query video: a 0-based frame index and an ``x1, y1, x2, y2`` pixel box in it."""

    frame: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class PersonQuery:
    """One person found in query footage, and what the gallery holds of them."""

    person: int  # 1, 2, ... in order of first appearance in the query video
    track: Track
    fps: float
    result: QueryResult  # source reads "<video> person <N>"; key frames are the person's crops

    def to_dict(self) -> dict:
        """JSON-ready: the person's number, frames, times, middle box and hits."""
        middle = self.track.num_frames // 2
        first, last = self.track.frame_indices[0], self.track.frame_indices[-1]
        return {"person": self.person, "first_frame": first, "last_frame": last, "start_s": first / self.fps,
                "end_s": last / self.fps, "key_frame": self.track.frame_indices[middle],
                "key_box": [float(v) for v in self.track.boxes[middle]],
                "hits": [hit.to_dict() for hit in self.result.hits]}


@dataclass(frozen=True)
class FootageQuery:
    """A query video holding people, each searched for on their own."""

    source: str
    persons: tuple[PersonQuery, ...]

    @property
    def results(self) -> tuple[QueryResult, ...]:
        """The per-person results, in person order (for tables and the HTML report)."""
        return tuple(person.result for person in self.persons)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"query": video, "persons": [{"person": N, ..., "hits": [...]}, ...]}``."""
        return {"query": self.source, "persons": [person.to_dict() for person in self.persons]}


def is_person_crop(clip: Path, detector: Detector) -> bool:
    """Whether ``clip`` (video or frame folder) looks like one person's crop to ``detector`` (see the module)."""
    tracklet = tracklet_from_path(clip)
    indices = sorted({0, (tracklet.num_frames - 1) // 2, tracklet.num_frames - 1})
    frames = read_frames(tracklet, indices).permute(0, 2, 3, 1).numpy()  # [K, H, W, 3]
    crop_like = 0
    for index, frame in zip(indices, frames):
        found = [d for d in detector.detect(frame, frame_index=index) if d.score >= CONFIDENT]
        area = frame.shape[0] * frame.shape[1]
        crop_like += not found or (len(found) == 1 and _area(found[0].box) >= CROP_SHARE * area)
    return 2 * crop_like > len(indices)


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def find_persons(video: Path, detector: Detector, *, min_frames: int = 4) -> list[Track]:
    """The people of a query video: tracks of at least ``min_frames`` frames, ordered by first appearance, their
    ``track_id`` renumbered 1, 2, ... in that order."""
    tracks = [t for t in track_video(video, detector, camid=-1) if t.num_frames >= min_frames]
    tracks.sort(key=lambda t: (t.frame_indices[0], t.track_id))
    return [Track(number, t.camid, t.frame_indices, t.boxes, t.scores) for number, t in enumerate(tracks, start=1)]


def pick_persons(tracks: list[Track], *, person: int | None = None, pointer: PersonPointer | None = None
                 ) -> list[Track]:
    """Every person, or the one numbered ``person``, or the one ``pointer`` points at.

    Raises:
        UserError: a number out of range, or a box that overlaps nobody at its frame (naming who is there).
    """
    if not tracks:
        raise UserError("the detector found nobody to follow in the query video",
                        hint="try another --detector, or query a crop of the person")
    if person is not None:
        if not 1 <= person <= len(tracks):
            raise UserError(f"--person {person}: the query video holds persons 1 to {len(tracks)}")
        return [tracks[person - 1]]
    if pointer is None:
        return tracks
    here = [(t, t.boxes[t.frame_indices.index(pointer.frame)]) for t in tracks if pointer.frame in t.frame_indices]
    overlaps = iou_matrix(np.array([pointer.box]), np.array([box for _, box in here]).reshape(-1, 4))[0]
    if len(here) == 0 or overlaps.max() < MIN_POINTER_IOU:
        seen = "; ".join(f"person {t.track_id} at {_xywh(box)}" for t, box in here) or "nobody"
        raise UserError(f"--box {_xywh(pointer.box)} --frame {pointer.frame} overlaps no person there ({seen})")
    return [here[int(np.argmax(overlaps))][0]]


def _xywh(box: Sequence[float]) -> str:
    return ",".join(f"{v:.0f}" for v in (box[0], box[1], box[2] - box[0], box[3] - box[1]))


def _person_tracklet(folder: Path, track: Track) -> Tracklet:
    """The crops ``write_crops`` wrote for ``track`` as a query tracklet."""
    frames = tuple(str(folder / str(track.track_id) / crop_name(index)) for index in track.frame_indices)
    return Tracklet(f"person-{track.track_id}", -1, -1, "query", len(frames), frames=frames)


def query_footage(gallery: Gallery, video: Path, detector: Detector, *, embedder: QueryEmbedder,
                  search: SearchOptions = SearchOptions(), person: int | None = None,
                  pointer: PersonPointer | None = None) -> FootageQuery:
    """Track the people of ``video`` and search ``gallery`` for each (or for the one picked, see
    :func:`pick_persons`), embedding their crops with ``embedder``.

    Raises:
        UserError: a frame folder (tracking needs a video), nobody found, or a person that cannot be picked.
        DataError: the video does not open.
    """
    if Path(video).is_dir():
        raise UserError(f"{video} is a folder of frames holding several people (or none): tracking them needs a "
                        "video file", hint="query a video of the scene, or a folder holding one person's crops")
    tracks = pick_persons(find_persons(video, detector), person=person, pointer=pointer)
    fps = video_info(video).fps
    with tempfile.TemporaryDirectory(prefix="tfclip-query-") as work:
        write_crops(video, tracks, Path(work))
        tracklets = [_person_tracklet(Path(work), track) for track in tracks]
        results = query_tracklets(gallery, tracklets, embedder, search)
    persons = []
    for track, result in zip(tracks, results):
        first, last = track.frame_indices[0], track.frame_indices[-1]
        source = f"{video} person {track.track_id} (frames {first}-{last}, {first / fps:.1f}-{last / fps:.1f}s)"
        persons.append(PersonQuery(track.track_id, track, fps, dataclasses.replace(result, source=source)))
    return FootageQuery(str(video), tuple(persons))


def query_clips(gallery_path: Path, clips: Sequence[Path], *, detector: str, search: SearchOptions = SearchOptions(),
                person: int | None = None, pointer: PersonPointer | None = None) -> list[QueryResult | FootageQuery]:
    """``tfclip query``: search the gallery for each clip; a person crop gives a :class:`QueryResult` (as
    :func:`tfclip_cli.index.query`), footage a :class:`FootageQuery` with one result per person.

    Args:
        detector: the detector spec (:func:`~tfclip_cli.footage.detect.detector_for_video`) that tells crops from
            footage and finds the people.
        person, pointer: pick one person of a single query video (which is then footage, whatever it looks like).
    Raises:
        UserError: ``person`` or ``pointer`` with several clips, or as :func:`query_footage`.
        GalleryError, DataError: as :func:`tfclip_cli.index.query`.
    """
    if (person is not None or pointer is not None) and len(clips) != 1:
        raise UserError(f"--person and --box/--frame pick a person in one query video; {len(clips)} were given")
    gallery = load_index(gallery_path)
    warn_if_stale(gallery)
    embedder = load_query_embedder(gallery, search.checkpoint, search.device, backend=search.backend)
    return query_gallery(gallery, clips, embedder, detector=detector, search=search, person=person, pointer=pointer)


def query_gallery(gallery: Gallery, clips: Sequence[Path], embedder: QueryEmbedder, *, detector: str,
                  search: SearchOptions = SearchOptions(), person: int | None = None,
                  pointer: PersonPointer | None = None) -> list[QueryResult | FootageQuery]:
    """:func:`query_clips` on a loaded gallery with an embedder loaded once by the caller (``tfclip serve``)."""
    is_pointed = person is not None or pointer is not None
    found: dict[int, QueryResult | FootageQuery] = {}
    for number, clip in enumerate(clips):
        detect = detector_for_video(detector, Path(clip))
        if is_pointed or not is_person_crop(Path(clip), detect):
            found[number] = query_footage(gallery, Path(clip), detect, embedder=embedder, search=search,
                                          person=person, pointer=pointer)
    crops = [number for number in range(len(clips)) if number not in found]
    if crops:
        tracklets = [tracklet_from_path(Path(clips[number])) for number in crops]
        results = query_tracklets(gallery, tracklets, embedder, search)
        found.update(zip(crops, results))
    return [found[number] for number in range(len(clips))]
