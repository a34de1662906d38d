"""``tfclip watch``: live footage → tracklets → a searchable gallery, within seconds of a person leaving the view.

Each source (:mod:`~tfclip_cli.watch.sources`) has a reader thread and a worker thread running the footage pipeline
of ``tfclip track`` (:class:`~tfclip_cli.footage.pipeline.FootagePipeline`: detect, track, relink by appearance)
on the frames due at ``fps``. A tracklet is done when its person has been lost for a while or it reaches
``max_seconds`` (:meth:`FootagePipeline.finished`), and at the end of a file. Done tracklets of every source are
embedded together in batches (the crops never touch the disk; their first, middle and last crop are kept as key
frames in ``GALLERY.keyframes/``) and appended to the gallery (created by the first batch when missing) with their
camera, wall-clock start and end, and place in their video. When the gallery's rows carry people (``tfclip
link --gallery``), each batch is linked onto them (``people.link.link_onto``).

Stopping (:meth:`Ingest.stop`, SIGINT / SIGTERM under :func:`watch`) stops the readers, closes the open tracklets
and appends them. A gallery write is atomic, so ``kill -9`` loses at most the open tracklets of that moment; the
files of watched folders are recorded as done (``SeenFiles``) only once their tracklets are in the gallery, and a
file read again after a crash skips the tracklets the gallery already holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from tfclip_cli.errors import Terminated, UserError
from tfclip_cli.footage.detect import build_detector, detector_for_video, resolve_detector
from tfclip_cli.footage.detection import Detector
from tfclip_cli.footage.pipeline import CutTracklet, FootagePipeline, PipelineOptions, check_options
from tfclip_cli.index import (
    QueryEmbedder,
    append_to_index,
    build_index,
    load_index,
    load_model_embedder,
    load_query_embedder,
    set_person_ids,
)
from tfclip_cli.people.cluster import ClusterOptions
from tfclip_cli.people.link import link_onto
from tfclip_cli.tables import PERSON_COLUMN, Embeddings, FootageOrigin, Tracklet, atomic_output, tracklet_table
from tfclip_cli.watch.sources import Frame, ReaderOptions, Reader, SeenFiles, SourceSpec, VideoEnd, start_readers

log = logging.getLogger(__name__)

LAG_WINDOW = 1000  # recent tracklets the lag percentiles are computed over
KEY_JPEG_QUALITY = 90
TIMES_KEPT = 100_000  # frame times a worker remembers (far more than any open tracklet spans)


@dataclass(frozen=True)
class WatchOptions:
    """How ``tfclip watch`` turns footage into gallery rows."""

    detector: str | Detector = "auto"  # as ``tfclip track --detector`` ("gt": the gt.txt beside each file), or one
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    max_seconds: float = 60.0  # a tracklet this long is cut and goes on as a new one
    batch: int = 32  # most tracklets embedded at once
    batch_wait_s: float = 1.0  # a tracklet waits at most this long for others to share its batch
    status_every_s: float = 2.0  # how often the status is reported (and --json-status written)
    device: str | None = None  # None: this process's (CUDA when there is one)
    state: Path | None = None  # the folders' state file; default: GALLERY.watch.json beside the gallery
    json_status: Path | None = None
    link: ClusterOptions = field(default_factory=ClusterOptions)  # online linking, when the gallery is linked


@dataclass(frozen=True)
class SourceFigures:
    """One source's figures in the status (``/stats``'s ``ingest.sources`` entries)."""

    name: str
    camera: int
    state: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    open_tracks: int
    tracklets_appended: int
    lag_p50_s: float | None
    lag_p95_s: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class IngestStatus:
    """Every source's figures; ``to_dict()`` is the ``ingest`` key of ``tfclip serve``'s ``/stats``."""

    sources: tuple[SourceFigures, ...]

    def to_dict(self) -> dict:
        return {"sources": [source.to_dict() for source in self.sources]}


@dataclass(frozen=True)
class _Done:
    """A tracklet done, on its way to the gallery."""

    source: int  # position of its source
    tracklet: CutTracklet
    row: Tracklet  # its gallery row (frames: the key-frame paths, filled in when written)
    left_at: float  # when its last frame arrived: the lag runs from here to searchable


@dataclass(frozen=True)
class _FileDone:
    source: int
    video: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "source"


def _session_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


class _Embedding:
    """The gallery's model, one forward pass at a time, over crops held in memory (as a footage query's)."""

    def __init__(self, embedder: QueryEmbedder) -> None:
        self.embedder = embedder
        self._lock = threading.Lock()

    def __call__(self, clips: Sequence[Sequence[np.ndarray]], *, sampling: str = "dense") -> np.ndarray:
        with self._lock:
            return self.embedder.embed_crops(clips, sampling=sampling)


class _Worker(threading.Thread):
    """Feeds one source's frames through the footage pipeline and hands the tracklets done to ``done``."""

    def __init__(self, position: int, reader: Reader, options: WatchOptions, embed: _Embedding,
                 done: queue.Queue, session: str) -> None:
        super().__init__(name=f"watch-track-{reader.spec.name}", daemon=True)
        self.position, self.reader, self.options, self.embed, self.done = position, reader, options, embed, done
        self.session = session
        self.frames_processed = 0
        self.pipeline: FootagePipeline | None = None
        self._video: str | None = None
        self._times: dict[int, tuple[float | None, float]] = {}
        self._starts: dict[int, int] = {}  # first frame -> tracklets of this video starting there so far
        self._detector: Detector | None = None
        self._max_frames = max(1, round(options.max_seconds * options.reader.fps))

    @property
    def open_tracks(self) -> int:
        pipeline = self.pipeline
        return 0 if pipeline is None else pipeline.open_tracks

    def run(self) -> None:
        try:
            self._follow()
        except Exception:  # a worker thread must say why it stopped; its source stops with it
            log.exception("%s: tracking stopped", self.reader.spec.name)
            self.reader.stop()

    def _follow(self) -> None:
        while True:
            item = self.reader.queue.get(timeout=0.2)
            if item is None:
                if not self.reader.is_alive() or self.reader.is_stopping:
                    break
                continue
            if isinstance(item, VideoEnd):
                self._close()
                self.done.put(_FileDone(self.position, item.video))
                continue
            self._feed(item)
        self._close()

    def _feed(self, frame: Frame) -> None:
        if self.pipeline is None or frame.video != self._video:
            self._close()
            self._open(frame)
        assert self.pipeline is not None
        self._times[frame.index] = (frame.time, frame.arrival)
        for kept in (self._times, self._starts):
            if len(kept) > TIMES_KEPT:
                del kept[next(iter(kept))]
        self.pipeline.feed(frame.index, frame.image)
        self.frames_processed += 1
        self._hand_over(self.pipeline.finished(frame.index, max_frames=self._max_frames).tracklets)

    def _open(self, frame: Frame) -> None:
        spec = self.reader.spec
        chosen = self.options.detector
        if not isinstance(chosen, str):
            self._detector = chosen
        elif self._detector is None or chosen == "gt":
            self._detector = (detector_for_video(chosen, Path(frame.video)) if spec.kind in ("file", "folder")
                              else build_detector(chosen))
        self.pipeline = FootagePipeline(self._detector, camid=spec.camera, fps=frame.fps, source=frame.video,
                                        options=self.options.pipeline, embed=self.embed)
        self._video, self._starts = frame.video, {}

    def _close(self) -> None:
        if self.pipeline is not None:
            self._hand_over(self.pipeline.close().tracklets)
        self.pipeline, self._video = None, None

    def _hand_over(self, tracklets: Sequence[CutTracklet]) -> None:
        spec = self.reader.spec
        video = str(self._video)
        within = {"file": None, "folder": _safe(Path(video).stem)}.get(spec.kind, self.session)
        folder = "/".join(part for part in (f"c{spec.camera}", _safe(spec.name), within) if part)
        for tracklet in tracklets:  # two tracklets may start at one frame (two people, or a cut and its sequel)
            number = self._starts[tracklet.first_frame] = self._starts.get(tracklet.first_frame, -1) + 1
            first, last = self._times.get(tracklet.first_frame), self._times.get(tracklet.last_frame)
            start_time = None if first is None else first[0]
            end_time = None if last is None or last[0] is None else last[0] + 1.0 / tracklet.fps
            track = tracklet.track
            origin = FootageOrigin(
                source_video=str(Path(video).resolve()) if not spec.is_live else video,
                first_frame=tracklet.first_frame, last_frame=tracklet.last_frame, start_s=tracklet.start_s,
                end_s=tracklet.end_s, boxes=tuple(tuple(float(v) for v in box) for box in track.boxes),
                frame_indices=track.frame_indices, start_time=start_time, end_time=end_time)
            row = Tracklet(f"{folder}/{tracklet.first_frame:07d}-{number}", -1, spec.camera, "gallery",
                           len(tracklet.crops), frames=(), origin=origin)
            self.done.put(_Done(self.position, tracklet, row, time.time() if last is None else last[1]))


def load_embedder(gallery: Path, checkpoint: Path, device: str | None) -> tuple[QueryEmbedder, dict]:
    """The model that embeds for ``gallery`` (checked against it when it exists) and the provenance its rows
    record: ``checkpoint`` (a ``.onnx`` file runs with onnxruntime, without torch); ``device`` None is this
    process's.

    Raises:
        GalleryError: a checkpoint other than the gallery's; CheckpointError / UserError from the loaders.
    """
    if Path(gallery).exists():
        loaded = load_index(gallery)
        embedder = load_query_embedder(loaded, checkpoint, device)
        return embedder, {"checkpoint": loaded.info.checkpoint, "checkpoint_sha256": loaded.info.checkpoint_sha256,
                          "sampling": embedder.sampling}
    embedder = load_model_embedder(Path(checkpoint), device)
    return embedder, {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": embedder.checkpoint_sha256,
                      "sampling": "dense", "embedding": embedder.embedding, "source": "tfclip watch"}


def key_frames_folder(gallery: Path) -> Path:
    """Where the key frames of watched tracklets are kept: ``GALLERY.keyframes/`` beside the gallery."""
    return Path(gallery).with_name(Path(gallery).name + ".keyframes")


def _write_key_frames(tracklet: CutTracklet, folder: Path) -> tuple[str, ...]:
    """The first, middle and last crop of ``tracklet`` as JPEG files in ``folder`` (built hidden, renamed)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    last = len(tracklet.crops) - 1
    positions = sorted({0, last // 2, last})
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as work:
        building = Path(work) / "frames"
        building.mkdir()
        for position in positions:
            index = tracklet.track.frame_indices[position]
            Image.fromarray(tracklet.crops[position]).save(building / f"{index:07d}.jpg", quality=KEY_JPEG_QUALITY)
        building.rename(folder)
    return tuple(str(folder / f"{tracklet.track.frame_indices[p]:07d}.jpg") for p in positions)


def link_new_rows(gallery_path: Path, options: ClusterOptions) -> int:
    """Link the gallery's rows without a person onto its people (``people.link.link_onto``) when the gallery is
    linked (its rows carry ``person_id``); returns how many rows were linked."""
    gallery = load_index(gallery_path)
    if PERSON_COLUMN not in gallery.rows:
        return 0
    live = gallery.live
    rows = gallery.rows[live].reset_index(drop=True)
    known = rows[PERSON_COLUMN].fillna(-1).to_numpy(dtype=np.int64)
    if (known >= 0).all():
        return 0
    vectors = gallery.index.reconstruct_n(0, gallery.info.count)[live]
    people = link_onto(Embeddings(rows=rows, vectors=vectors, info={}), known, options=options)
    set_person_ids(gallery_path, dict(zip(rows["tracklet_id"].astype(str), map(int, people))))
    return int((known < 0).sum())


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.array(values), q)) if len(values) else None


class Ingest:
    """Sources → gallery; :meth:`run` until every source ended or :meth:`stop`.

    Args:
        specs: the sources.
        gallery: the gallery file, created by the first batch when missing.
        checkpoint: the model (the gallery's, when it exists).
        options: the settings.
    """

    def __init__(self, specs: Sequence[SourceSpec], gallery: Path, checkpoint: Path,
                 options: WatchOptions = WatchOptions()) -> None:
        check_options(options.pipeline)
        if isinstance(options.detector, str):  # "auto" resolved once, for every source
            options = dataclasses.replace(options, detector=resolve_detector(options.detector))
        live = [spec.name for spec in specs if spec.is_live]
        if options.detector == "gt" and live:
            raise UserError(f"detector gt replays the gt.txt beside each file; {live[0]} is a stream",
                            hint="name the ground truth: --detector gt:PATH/gt.txt")
        self.specs, self.gallery, self.options = list(specs), Path(gallery).absolute(), options
        embedder, self._info = load_embedder(self.gallery, checkpoint, options.device)
        self._embed = _Embedding(embedder)
        self._known = (set(load_index(self.gallery).rows["tracklet_id"].astype(str)) if self.gallery.exists()
                       else set())
        self._seen = SeenFiles(options.state or self.gallery.with_name(self.gallery.name + ".watch.json"))
        self._done: queue.Queue = queue.Queue()
        self._lags = [deque(maxlen=LAG_WINDOW) for _ in self.specs]
        self._appended = [0] * len(self.specs)
        self._readers: list[Reader] = []
        self._workers: list[_Worker] = []
        self._stopping = threading.Event()

    def status(self) -> IngestStatus:
        """Every source's figures now."""
        figures = []
        for position, spec in enumerate(self.specs):
            reader = self._readers[position] if position < len(self._readers) else None
            worker = self._workers[position] if position < len(self._workers) else None
            lags = list(self._lags[position])
            read = reader.status if reader is not None else None
            figures.append(SourceFigures(
                name=spec.name, camera=spec.camera, state=read.state if read else "running",
                frames_read=read.frames_read if read else 0,
                frames_processed=worker.frames_processed if worker else 0,
                frames_dropped=read.frames_dropped if read else 0, reconnects=read.reconnects if read else 0,
                open_tracks=worker.open_tracks if worker else 0, tracklets_appended=self._appended[position],
                lag_p50_s=_percentile(lags, 50), lag_p95_s=_percentile(lags, 95)))
        return IngestStatus(tuple(figures))

    def stop(self) -> None:
        """Ask the readers to stop; :meth:`run` then closes the open tracklets, appends them and returns."""
        self._stopping.set()
        for reader in self._readers:
            reader.stop()

    def run(self, report: Callable[[IngestStatus], None] | None = None) -> IngestStatus:
        """Watch until every source has ended (files, folders never do) or :meth:`stop`; returns the last status."""
        options = self.options
        self._readers = start_readers(self.specs, options.reader, seen=self._seen)
        session = _session_stamp()
        self._workers = [_Worker(n, reader, options, self._embed, self._done, session)
                         for n, reader in enumerate(self._readers)]
        for worker in self._workers:
            worker.start()
        if self._stopping.is_set():
            self.stop()
        pending: list[_Done] = []
        next_report = time.monotonic() + options.status_every_s
        while True:
            is_running = any(worker.is_alive() for worker in self._workers)
            self._collect(pending, wait=0.1 if is_running else 0.0)
            if pending and (not is_running or len(pending) >= options.batch
                            or time.time() - pending[0].left_at >= options.batch_wait_s):
                self._flush(pending)
            if time.monotonic() >= next_report:
                self._report(report)
                next_report = time.monotonic() + options.status_every_s
            if not is_running and self._done.empty() and not pending:
                break
        self._report(report)
        return self.status()

    def _collect(self, pending: list[_Done], *, wait: float) -> None:
        """Move what the workers handed over into ``pending``; a file done is recorded once its tracklets are in."""
        try:
            item = self._done.get(timeout=wait) if wait else self._done.get_nowait()
            while True:
                if isinstance(item, _FileDone):
                    self._flush(pending)
                    if self.specs[item.source].kind in ("file", "folder") and Path(item.video).exists():
                        self._seen.mark_done(Path(item.video))
                else:
                    pending.append(item)
                item = self._done.get_nowait()
        except queue.Empty:
            return

    def _flush(self, pending: list[_Done]) -> None:
        """Embed ``pending`` in batches, keep their key frames, append them to the gallery, link them."""
        while pending:
            batch = [done for done in pending[: self.options.batch] if done.row.tracklet_id not in self._known]
            del pending[: self.options.batch]
            if batch:
                self._append(batch)

    def _append(self, batch: list[_Done]) -> None:
        vectors = self._embed([done.tracklet.crops for done in batch], sampling=self._info["sampling"])
        folder = key_frames_folder(self.gallery)
        rows = []
        for done in batch:
            frames = _write_key_frames(done.tracklet, folder / done.row.tracklet_id)
            rows.append(dataclasses.replace(done.row, num_frames=len(frames), frames=frames))
        embeddings = Embeddings(rows=tracklet_table(rows), vectors=vectors, info=self._info)
        if not self._create(embeddings):
            append_to_index(embeddings, self.gallery)
        searchable = time.time()
        for done in batch:
            self._known.add(done.row.tracklet_id)
            self._appended[done.source] += 1
            self._lags[done.source].append(max(0.0, searchable - done.left_at))
        linked = link_new_rows(self.gallery, self.options.link)
        log.info("appended %d tracklet(s) to %s%s", len(batch), self.gallery,
                 f", {linked} linked to people" if linked else "")

    def _create(self, embeddings: Embeddings) -> bool:
        """Build the gallery from ``embeddings`` when it does not exist yet; False when it does (another writer may
        have just created it)."""
        if self.gallery.exists():
            return False
        try:
            build_index(embeddings, self.gallery)
        except UserError:
            if not self.gallery.exists():
                raise
            return False
        return True

    def _report(self, report: Callable[[IngestStatus], None] | None) -> None:
        status = self.status()
        if self.options.json_status is not None:
            with atomic_output(self.options.json_status, force=True) as temp:
                temp.write_text(json.dumps({"time": time.time(), **status.to_dict()}) + "\n")
        if report is not None:
            report(status)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def watch(specs: Sequence[SourceSpec], gallery: Path, checkpoint: Path, options: WatchOptions = WatchOptions(), *,
          report: Callable[[IngestStatus], None] | None = None) -> IngestStatus:
    """``tfclip watch``: ingest ``specs`` into ``gallery`` until they all end; Ctrl-C or SIGTERM stop the readers,
    and the open tracklets are appended before KeyboardInterrupt (Ctrl-C) or Terminated (SIGTERM) is raised.

    Raises:
        UserError / GalleryError / CheckpointError: before any work, for a bad checkpoint or gallery.
    """
    ingest = Ingest(specs, gallery, checkpoint, options)
    received: list[int] = []

    def on_signal(number: int, _frame: object) -> None:
        if not received:
            log.warning("stopping: closing the open tracklets and appending them (again to quit at once)")
        elif number == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(number)
        ingest.stop()

    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    try:
        status = ingest.run(report)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise Terminated if received[0] == signal.SIGTERM else KeyboardInterrupt
    return status
