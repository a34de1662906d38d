"""``tfclip query`` on footage: find the people in a query video and search the gallery for each of them.

A query input is either a person crop (today's query: one person filling the frame) or footage (a scene with
several people, or people small in the frame). The detector decides, never the file name: on the first, middle and
last frame, a frame where it finds nobody, or one person covering at least :data:`CROP_SHARE` of the frame, looks
like a crop; when most of them do not, the input is footage. Footage goes through the footage pipeline as ``tfclip
track`` does (:mod:`~tfclip_cli.footage.pipeline`, same defaults, relinked with the gallery's model), and each
person's crops, held in memory, are embedded and searched for; the people are numbered 1, 2, ... by the frame they
first appear in; ``person`` picks one by number, ``pointer`` (a frame and a box) picks the one whose box there
overlaps it most. The model is loaded once per call (or passed in), and whatever the inputs, ``--json`` prints one
shape (:func:`query_json`). The tracking code (and scipy under it) is imported only when footage is queried: a
person crop's query starts without it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from tfclip_cli.errors import UserError
from tfclip_cli.footage.detect import detector_for_video
from tfclip_cli.footage.detection import Detector, clipped
from tfclip_cli.frames import read_frames, stack_crops, tracklet_from_path
from tfclip_cli.index import (
    Gallery,
    QueryClip,
    QueryEmbedder,
    QueryResult,
    SearchOptions,
    load_index,
    load_query_embedder,
    query_results,
    read_key_frames,
    warn_if_stale,
)

if TYPE_CHECKING:
    from tfclip_cli.footage.pipeline import CutTracklet
    from tfclip_cli.footage.track import Track

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
    tracklet: CutTracklet
    result: QueryResult  # source reads "<video> person <N>"; key frames are the person's crops

    def to_dict(self) -> dict:
        """JSON-ready: one entry of ``persons`` in :func:`query_json`."""
        track = self.tracklet.track
        middle = track.num_frames // 2
        return _person_dict(self.person, self.result, first_frame=self.tracklet.first_frame,
                            last_frame=self.tracklet.last_frame, start_s=self.tracklet.start_s,
                            end_s=self.tracklet.end_s, key_frame=track.frame_indices[middle],
                            key_box=[float(v) for v in track.boxes[middle]])


@dataclass(frozen=True)
class FootageQuery:
    """A query video holding people, each searched for on their own."""

    source: str
    persons: tuple[PersonQuery, ...]

    @property
    def results(self) -> tuple[QueryResult, ...]:
        """The per-person results, in person order (for tables and the HTML report)."""
        return tuple(person.result for person in self.persons)


def _person_dict(person: int, result: QueryResult, **where: object) -> dict:
    return {"person": person, "num_frames": result.num_frames, **where, "threshold": result.threshold,
            "match": result.is_match, "hits": [hit.to_dict() for hit in result.hits]}


def query_json(results: Sequence[QueryResult | FootageQuery]) -> dict:
    """The one JSON answer of ``tfclip query --json``, whatever the inputs (README "tfclip query --json")::

        {"queries": [{"query": "<path>", "footage": true | false, "persons": [
            {"person": 1, "num_frames": N, "first_frame": F, "last_frame": L, "start_s": S, "end_s": E,
             "key_frame": K, "key_box": [x1, y1, x2, y2], "threshold": T | null, "match": M | null,
             "hits": [{"rank", "score", "tracklet_id", "pid", "camid", "split", "source", "row", "match",
                       "start_s", "end_s", "origin": {...} | null}, ...]}, ...]}, ...]}

    One entry per query clip, in order. A person crop is one person numbered 1 whose place in the query video
    (``first_frame`` ... ``key_box``) is null; footage lists every person searched for (none: an empty list).
    """
    queries = []
    for result in results:
        if isinstance(result, FootageQuery):
            queries.append({"query": result.source, "footage": True,
                            "persons": [person.to_dict() for person in result.persons]})
            continue
        unknown = dict.fromkeys(("first_frame", "last_frame", "start_s", "end_s", "key_frame", "key_box"))
        queries.append({"query": result.source, "footage": False, "persons": [_person_dict(1, result, **unknown)]})
    return {"queries": queries}


def is_person_crop(clip: Path, detector: Detector) -> bool:
    """Whether ``clip`` (video or frame folder) looks like one person's crop to ``detector`` (see the module)."""
    tracklet = tracklet_from_path(clip)
    indices = sorted({0, (tracklet.num_frames - 1) // 2, tracklet.num_frames - 1})
    frames = read_frames(tracklet, indices)  # [K, H, W, 3]
    crop_like = 0
    for index, frame in zip(indices, frames):
        height, width = frame.shape[:2]
        found = clipped(detector.detect(frame, frame_index=index), width=width, height=height, min_side=1)
        found = [d for d in found if d.score >= CONFIDENT]
        crop_like += not found or (len(found) == 1 and _area(found[0].box) >= CROP_SHARE * width * height)
    return 2 * crop_like > len(indices)


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


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
    from tfclip_cli.footage.track import iou_matrix

    here = [(t, t.boxes[t.frame_indices.index(pointer.frame)]) for t in tracks if pointer.frame in t.frame_indices]
    overlaps = iou_matrix(np.array([pointer.box]), np.array([box for _, box in here]).reshape(-1, 4))[0]
    if len(here) == 0 or overlaps.max() < MIN_POINTER_IOU:
        seen = "; ".join(f"person {t.track_id} at {_xywh(box)}" for t, box in here) or "nobody"
        raise UserError(f"--box {_xywh(pointer.box)} --frame {pointer.frame} overlaps no person there ({seen})")
    return [here[int(np.argmax(overlaps))][0]]


def _xywh(box: Sequence[float]) -> str:
    return ",".join(f"{v:.0f}" for v in (box[0], box[1], box[2] - box[0], box[3] - box[1]))


def _key_frames(crops: Sequence[np.ndarray]) -> np.ndarray:
    """A person's first, middle and last crop as uint8 ``[K, H, W, 3]`` at the first one's size."""
    last = len(crops) - 1
    chosen = [crops[i] for i in sorted({0, last // 2, last})]
    return stack_crops(chosen, crops[0].shape[:2])


def query_footage(gallery: Gallery, video: Path, detector: Detector, embedder: QueryEmbedder, *,
                  search: SearchOptions = SearchOptions(), person: int | None = None,
                  pointer: PersonPointer | None = None) -> FootageQuery:
    """Cut the people of ``video`` out with the footage pipeline (relinked with ``embedder``'s model) and search
    ``gallery`` for each (or for the one picked, see :func:`pick_persons`), their crops never leaving memory.

    Raises:
        UserError: a frame folder (tracking needs a video), nobody found, or a person that cannot be picked.
        DataError: the video does not open.
    """
    if Path(video).is_dir():
        raise UserError(f"{video} is a folder of frames holding several people (or none): tracking them needs a "
                        "video file", hint="query a video of the scene, or a folder holding one person's crops")
    from tfclip_cli.footage.pipeline import PipelineOptions, run_video

    # a query searches for everyone the user filmed, one standing still too: the static filter keeps galleries free
    # of signs and cones, and a false person in a query only adds a row of weak hits; relinking embeds one clip
    # (the model's seq_len crops) per span it reads, every track's spans in the same batches
    found = run_video(video, detector, camid=-1, options=PipelineOptions(keep_static=True), embed=functools.partial(
        embedder.embed_crops, sampling="rrs")).tracklets  # numbered 1, 2, ... by first appearance
    picked = [found[track.track_id - 1] for track in pick_persons([t.track for t in found], person=person,
                                                                   pointer=pointer)]
    vectors = embedder.embed_crops([tracklet.crops for tracklet in picked])
    clips = [QueryClip(f"{video} person {t.track.track_id} (frames {t.first_frame}-{t.last_frame}, "
                       f"{t.start_s:.1f}-{t.end_s:.1f}s)", t.track.num_frames, _key_frames(t.crops)) for t in picked]
    results = query_results(gallery, vectors, clips, search)
    return FootageQuery(str(video), tuple(PersonQuery(t.track.track_id, t, r) for t, r in zip(picked, results)))


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
            found[number] = query_footage(gallery, Path(clip), detect, embedder, search=search, person=person,
                                          pointer=pointer)
    crops = [number for number in range(len(clips)) if number not in found]
    if crops:
        tracklets = [tracklet_from_path(Path(clips[number])) for number in crops]
        described = [QueryClip(t.source, t.num_frames, read_key_frames(t)) for t in tracklets]
        found.update(zip(crops, query_results(gallery, embedder.embed(tracklets), described, search)))
    return [found[number] for number in range(len(clips))]
