"""The service's state: the model and the gallery loaded once, statistics, and one method per endpoint.

Searches read an immutable snapshot of the gallery; writes go through ``index``'s locked, atomic functions and
then swap the snapshot, so a search never sees a half-written gallery. The snapshot is also reloaded when the
gallery changes on disk (its base file replaced: read again; records appended to its log by ``tfclip index
--append`` or ``tfclip watch`` while serving: only the new records read, ``index.refresh_index``), which is how
the page's camera view sees a growing gallery: :meth:`Service.cameras` answers the latest tracklets of each camera
of the current snapshot.
"""

from __future__ import annotations

import base64
import collections
import io
import logging
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Collection, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.footage.query import FootageQuery, query_gallery
from tfclip_cli.frames import tracklet_from_path
from tfclip_cli.index import (
    FIGURE_KEYS,
    Gallery,
    MinScore,
    QueryEmbedder,
    QueryResult,
    SearchOptions,
    append_to_index,
    gallery_stamp,
    load_index,
    load_query_embedder,
    refresh_index,
    remove_from_index,
    resolve_min_score,
    search_with_tracklet,
    stale_calibration,
    threshold_in_force,
    tracklet_key_frames,
    warn_if_stale,
)
from tfclip_cli.people.answer import add_timelines, hit_people
from tfclip_cli.people.timeline import Person, person_of
from tfclip_cli.serve.uploads import UploadLimits, allowed_path, clip_from_upload, save_upload
from tfclip_cli.tables import (
    PERSON_COLUMN,
    Embeddings,
    Tracklet,
    reporting_write_errors,
    row_to_tracklet,
    tracklet_table,
)
from tfclip_cli.watch.ingest import Ingest, WatchOptions
from tfclip_cli.watch.sources import SourceSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LATENCY_WINDOW = 1000
"""Recent queries the latency percentiles are computed over."""
THUMBNAIL_HEIGHT = 128
CROP_MARGIN = 0.15
"""The share of a person's box height added around it when a footage key frame is cut to the person."""


class NotFound(UserError):
    """A tracklet or key frame the gallery does not hold (HTTP 404)."""


@dataclass(frozen=True)
class ServeConfig:
    """What ``tfclip serve`` was started with."""

    gallery: Path
    checkpoint: Path | None
    """A checkpoint (run by PyTorch) or an exported ``.onnx`` file (run by onnxruntime, torch never imported)."""
    device: torch.device | str | None
    """Where a checkpoint's model runs; None: this process's device."""
    limits: UploadLimits
    allow_dirs: tuple[Path, ...]
    store: Path
    """Where clips uploaded to the gallery are kept (their rows point there)."""
    detector: str
    """The detector spec that tells a person crop from footage and finds the people in footage (as ``query``'s)."""
    watch: tuple[SourceSpec, ...] = ()
    """Cameras ingested into the gallery while serving (``tfclip serve --watch streams.yaml``)."""


@dataclass(frozen=True)
class NewTracklet:
    """Metadata of a tracklet added through the API."""

    tracklet_id: str | None = None
    pid: int = -1
    camid: int = -1
    start_s: float | None = None
    end_s: float | None = None


def jpeg(frame: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` frame as a JPEG thumbnail ``THUMBNAIL_HEIGHT`` pixels high."""
    image = Image.fromarray(frame)
    image.thumbnail((4 * THUMBNAIL_HEIGHT, THUMBNAIL_HEIGHT))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _optional(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _url(tracklet_id: str, tail: str) -> str:
    return f"/tracklets/{urllib.parse.quote(tracklet_id, safe='/')}/{tail}"


def _card(record: pd.Series) -> dict:
    """One tracklet of the camera view: its id, camera, linked person, times (wall clock and in its video) and the
    URLs of its person crop and of a search with it."""
    tracklet_id = str(record["tracklet_id"])
    person = record.get(PERSON_COLUMN)
    tracklet = row_to_tracklet(record)
    return {
        "tracklet_id": tracklet_id, "camid": int(record["camid"]), "num_frames": int(record["num_frames"]),
        "person": None if person is None or pd.isna(person) or int(person) < 0 else int(person),
        **{name: _optional(record.get(name)) for name in ("start_time", "end_time", "start_s", "end_s")},
        "source": "" if tracklet is None else tracklet.source,
        "crop_url": _url(tracklet_id, "crop"), "search_url": _url(tracklet_id, "search"),
    }


def latest_rows(rows: np.ndarray, ends: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` latest of ``rows`` (ascending) by ``ends`` (-inf: unknown), then by row, newest first; linear
    in ``len(rows)``: a camera of a million rows is not sorted for the 8 the page shows."""
    if len(rows) > count:
        kth = np.partition(ends, len(ends) - count)[len(ends) - count]  # the count-th latest end
        later, tied = np.flatnonzero(ends > kth), np.flatnonzero(ends == kth)
        chosen = np.concatenate([later, tied[len(tied) - (count - len(later)):]])  # of the tied, the last added
        rows, ends = rows[chosen], ends[chosen]
    return rows[np.lexsort((rows, ends))[::-1]]


def latest_per_camera(gallery: Gallery, count: int) -> dict:
    """Per camera (camid ascending) its live tracklet count and its ``count`` latest tracklets, newest first:
    latest by wall-clock end (``end_time``), then by the order they entered the gallery (rows without an end time
    after those with one)."""
    rows = gallery.rows
    live = np.flatnonzero(gallery.live)
    camids = rows["camid"].to_numpy()[live]
    ends = rows["end_time"].to_numpy(dtype=float)[live] if "end_time" in rows else np.full(len(live), np.nan)
    ends = np.nan_to_num(ends, nan=-np.inf)
    sizes = pd.Series(camids).value_counts().sort_index()  # hashed: no sort of every row
    cameras = []
    for camid, size in sizes.items():
        mine = camids == camid
        latest = latest_rows(live[mine], ends[mine], count)
        cameras.append({"camid": int(camid), "tracklets": int(size),
                        "latest": [_card(rows.iloc[row]) for row in latest]})
    return {"rows": len(live), "cameras": cameras}


def _data_uris(result: QueryResult) -> list[str]:
    """A query's key frames as JPEG ``data:`` URIs for the page."""
    return ["data:image/jpeg;base64," + base64.b64encode(jpeg(frame)).decode() for frame in result.key_frames]


def _footage_answer(footage: FootageQuery, threshold: float | None, num_frames: int,
                    people: Mapping[int, Person]) -> dict:
    """``tfclip query --json``'s answer for footage (its ``query``, a temporary path, left out), each person with
    the key frames of their crops, each hit with its linked person's ``timeline``."""
    persons = [{**found.to_dict(), "key_frames": _data_uris(found.result)} for found in footage.persons]
    for found in persons:
        add_timelines(found["hits"], people)
    return {"num_frames": num_frames, "threshold": threshold, "persons": persons}


class Service:
    """The loaded model and gallery, and what the endpoints do with them."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._swap = threading.Lock()
        self._model = threading.Lock()  # one forward pass at a time: predictable memory on a shared machine
        self._identity = gallery_stamp(config.gallery)  # before the load: a change in between reloads later
        self._gallery = load_index(config.gallery)
        warn_if_stale(self._gallery)
        self.embedder: QueryEmbedder = load_query_embedder(self._gallery, config.checkpoint, config.device)
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.queries_served = 0
        self._latest: tuple[Gallery, int, dict] | None = None  # the camera view of one snapshot, for polling pages
        self.ingest: Ingest | None = None
        self._ingesting: threading.Thread | None = None

    def start_ingest(self) -> None:
        """Ingest the ``watch`` cameras into the gallery in a background thread (searches see each batch as it is
        appended: the gallery is reloaded when its file changes)."""
        if not self.config.watch:
            return
        options = WatchOptions(detector=self.config.detector, device=None if self.config.device is None else str(self.config.device))
        self.ingest = Ingest(self.config.watch, self.config.gallery, self.embedder.checkpoint, options)
        self._ingesting = threading.Thread(target=self.ingest.run, name="serve-watch", daemon=True)
        self._ingesting.start()

    def stop_ingest(self) -> None:
        """Stop the readers, append the open tracklets, and wait for the ingest to finish."""
        if self.ingest is not None and self._ingesting is not None:
            self.ingest.stop()
            self._ingesting.join()

    def gallery(self) -> Gallery:
        """The current gallery, reloaded first if its file was replaced or its log grew since it was read."""
        with self._swap:
            identity = gallery_stamp(self.config.gallery)
            if identity != self._identity:
                was_stale = stale_calibration(self._gallery) is not None
                self._gallery, self._identity = refresh_index(self._gallery), identity
                log.info("reloaded %s: %d tracklets", self.config.gallery, self._gallery.info.live_count)
                if not was_stale:  # warn once, when it goes stale, not on every append after
                    warn_if_stale(self._gallery)
            return self._gallery

    def _embed(self, tracklet: Tracklet) -> np.ndarray:
        with self._model:
            return self.embedder.embed([tracklet])

    def query(
        self, upload: BinaryIO, *, top_k: int, min_score: MinScore, camids: Collection[int] | None
    ) -> dict:
        """Search the gallery for an uploaded clip, as ``tfclip query`` does: the JSON answer of ``POST /query``.

        A person crop answers its hits; footage (as the detector sees it) answers each person found in it with
        their hits, as ``tfclip query --json`` does, and the person's key frames.

        Raises:
            TooLarge, DataError: as ``uploads.clip_from_upload``; GalleryError for ``auto`` when uncalibrated;
            UserError: footage in which the detector finds nobody.
        """
        started = time.perf_counter()
        gallery = self.gallery()
        floor = resolve_min_score(gallery, min_score)
        search = SearchOptions(top_k=top_k, min_score=floor, camids=None if camids is None else frozenset(camids))
        with tempfile.TemporaryDirectory(prefix="tfclip-query-") as folder:
            clip = clip_from_upload(save_upload(upload, Path(folder) / "upload", self.config.limits),
                                    Path(folder), self.config.limits)
            with self._model:
                (result,) = query_gallery(gallery, [Path(clip.source)], self.embedder, detector=self.config.detector,
                                          search=search)
        with self._swap:
            self._latencies.append(time.perf_counter() - started)
            self.queries_served += 1
        threshold = threshold_in_force(gallery, floor)
        people = hit_people(gallery, getattr(result, "results", (result,)))
        if isinstance(result, FootageQuery):
            return _footage_answer(result, threshold, clip.num_frames, people)
        hits = [hit.to_dict() for hit in result.hits]
        add_timelines(hits, people)
        return {"num_frames": clip.num_frames, "key_frames": _data_uris(result), "threshold": threshold,
                "match": result.is_match, "hits": hits}

    def search_tracklet(self, tracklet_id: str, *, top_k: int, min_score: MinScore,
                        camids: Collection[int] | None) -> dict:
        """Search the gallery with one of its own tracklets (``GET /tracklets/{id}/search``, a click in the camera
        view): ``POST /query``'s answer for a person crop, with ``query`` the tracklet's id and ``tracklet`` its
        card (as ``GET /cameras`` answers it); its stored embedding is searched, so it comes first.

        Raises:
            NotFound: for an unknown tracklet; GalleryError for ``auto`` when uncalibrated.
        """
        gallery = self.gallery()
        row = gallery.row_of(tracklet_id)
        if row is None:
            raise NotFound(f"{self.config.gallery} holds no tracklet {tracklet_id}")
        floor = resolve_min_score(gallery, min_score)
        result = search_with_tracklet(gallery, tracklet_id, SearchOptions(
            top_k=top_k, min_score=floor, camids=None if camids is None else frozenset(camids)))
        hits = [hit.to_dict() for hit in result.hits]
        add_timelines(hits, hit_people(gallery, (result,)))
        return {"query": tracklet_id, "tracklet": _card(gallery.rows.iloc[row]), "num_frames": result.num_frames,
                "key_frames": _data_uris(result), "threshold": result.threshold, "match": result.is_match,
                "hits": hits}

    def cameras(self, count: int) -> dict:
        """``GET /cameras``: :func:`latest_per_camera` of the current gallery, computed once per snapshot."""
        gallery = self.gallery()
        with self._swap:
            if self._latest is not None and self._latest[0] is gallery and self._latest[1] == count:
                return self._latest[2]
        answer = latest_per_camera(gallery, count)
        with self._swap:
            self._latest = (gallery, count, answer)
        return answer

    def calibration(self) -> dict:
        """``GET /calibration``: the calibration stored in the gallery header, with what draws its DET curve and
        score histograms when ``tfclip calibrate`` stored them (per search), and whether it is stale.

        Raises:
            NotFound: when the gallery was never calibrated.
        """
        gallery = self.gallery()
        if gallery.info.calibration is None:
            raise NotFound(f"{self.config.gallery} has no calibration",
                           hint=f"calibrate it: tfclip calibrate VAL.parquet --gallery {self.config.gallery}")
        return {**gallery.info.calibration, "stale_message": stale_calibration(gallery)}

    def _kept_clip(self, upload: BinaryIO) -> Tracklet:
        """Save an upload into the store for good (the gallery row points at it) and read it as a tracklet."""
        folder = self.config.store / uuid.uuid4().hex
        with reporting_write_errors(self.config.store):  # a read-only --store, or a file in its path
            folder.mkdir(parents=True)
        try:
            return clip_from_upload(save_upload(upload, folder / "clip", self.config.limits), folder,
                                    self.config.limits)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def add(self, metadata: NewTracklet, *, upload: BinaryIO | None, path: str | None) -> dict:
        """Embed a clip (an upload, or a server-side path under ``--allow-dir``) and append it to the gallery.

        Raises:
            UserError: as the upload, path or append checks (a known tracklet id, ...).
        """
        if (upload is None) == (path is None):
            raise UserError("give either an uploaded file or a server-side path, not both or neither")
        clip = self._kept_clip(upload) if upload is not None else tracklet_from_path(
            allowed_path(path, self.config.allow_dirs))
        gallery = self.gallery()
        tracklet_id = metadata.tracklet_id or uuid.uuid4().hex[:12]
        row = Tracklet(tracklet_id, metadata.pid, metadata.camid, "gallery", clip.num_frames, clip.frames, clip.video)
        rows = tracklet_table([row]).assign(start_s=[metadata.start_s], end_s=[metadata.end_s])
        info = {"checkpoint": gallery.info.checkpoint, "checkpoint_sha256": gallery.info.checkpoint_sha256}
        try:
            append_to_index(Embeddings(rows=rows, vectors=self._embed(clip), info=info), self.config.gallery)
        except BaseException:
            if upload is not None:  # a refused addition keeps no copy of its clip
                shutil.rmtree(Path(clip.source).parent, ignore_errors=True)
            raise
        return {"added": tracklet_id, "source": clip.source, "rows": self.gallery().info.live_count}

    def remove(self, tracklet_id: str) -> dict:
        """Remove a tracklet from the gallery (a tombstone, persisted atomically).

        Raises:
            NotFound: when the gallery holds no such tracklet.
        """
        if self.gallery().row_of(tracklet_id) is None:
            raise NotFound(f"{self.config.gallery} holds no tracklet {tracklet_id}")
        try:
            info = remove_from_index(self.config.gallery, [tracklet_id])
        except GalleryError as exc:  # removed by another writer since the check above
            raise NotFound(exc.message) from exc
        return {"removed": tracklet_id, "rows": info.live_count}

    def key_frame(self, tracklet_id: str, number: int) -> bytes:
        """Key frame ``number`` (0: first, 1: middle, 2: last) of a gallery tracklet as a JPEG thumbnail.

        Raises:
            NotFound: for an unknown tracklet, a frame past its key frames, or an unreadable source.
        """
        try:
            frames = tracklet_key_frames(self.gallery(), tracklet_id)
        except GalleryError as exc:
            raise NotFound(exc.message) from exc
        if not 0 <= number < len(frames):
            raise NotFound(f"tracklet {tracklet_id} has {len(frames)} key frame(s); asked for frame {number}")
        return jpeg(frames[number])

    def key_crop(self, tracklet_id: str) -> bytes:
        """The person of a gallery tracklet as a JPEG thumbnail: a footage tracklet's key frame cut to its box (with
        a ``CROP_MARGIN``), another tracklet's middle key frame (already a crop).

        Raises:
            NotFound: for an unknown tracklet or an unreadable source.
        """
        gallery = self.gallery()
        try:
            frames = tracklet_key_frames(gallery, tracklet_id)
        except GalleryError as exc:
            raise NotFound(exc.message) from exc
        if not len(frames):
            raise NotFound(f"the source of tracklet {tracklet_id} cannot be read")
        tracklet = row_to_tracklet(gallery.rows.iloc[gallery.row_of(tracklet_id)])
        if tracklet is None or tracklet.origin is None:
            return jpeg(frames[len(frames) // 2])
        x1, y1, x2, y2 = tracklet.origin.key_box
        margin = CROP_MARGIN * (y2 - y1)
        height, width = frames[0].shape[:2]
        top, bottom = max(0, int(y1 - margin)), min(height, int(np.ceil(y2 + margin)))
        left, right = max(0, int(x1 - margin)), min(width, int(np.ceil(x2 + margin)))
        return jpeg(np.ascontiguousarray(frames[0][top:max(bottom, top + 1), left:max(right, left + 1)]))

    def person(self, person_id: int) -> dict:
        """A linked person's timeline (``GET /people/{id}``): the visits in time order, each with its key frame
        and the URL of that frame's thumbnail.

        Raises:
            NotFound: when no live gallery row belongs to that person (or the gallery was never linked).
        """
        gallery = self.gallery()
        found = person_of(gallery.rows[gallery.live], person_id)
        if found is None:
            raise NotFound(f"{self.config.gallery} holds no person {person_id}",
                           hint="people are linked with: tfclip link E.parquet --gallery GALLERY --out P.parquet")
        answer = found.to_dict()
        for visit in answer["visits"]:
            key = visit["key_frame"]
            visit["key_frame_url"] = None if key is None else _url(key["tracklet_id"], "frames/0")
        return answer

    def stats(self) -> dict:
        """Rows, dimension, checkpoint, calibration (without what draws its pictures) and threshold (and whether the
        gallery outgrew it), queries served and latency percentiles (milliseconds)."""
        gallery = self.gallery()
        info, stale = gallery.info, stale_calibration(gallery)
        with self._swap:
            latencies = np.array(self._latencies) * 1000
        percentiles = {f"p{p}": float(np.percentile(latencies, p)) if len(latencies) else None for p in (50, 95, 99)}
        return {
            "gallery": str(self.config.gallery), "rows": info.live_count, "dim": info.dim, "type": info.type,
            "checkpoint": str(self.embedder.checkpoint),
            "calibration": None if info.calibration is None else {  # its pictures: GET /calibration
                key: value for key, value in info.calibration.items() if key not in FIGURE_KEYS},
            "threshold": threshold_in_force(gallery, None), "calibration_stale": stale is not None,
            "calibration_message": stale, "queries_served": self.queries_served,
            "latency_ms": percentiles,
            **({"ingest": self.ingest.status().to_dict()} if self.ingest is not None else {}),
        }


