"""Where live footage comes from: a video file, a folder that receives files, a stream or a webcam, each read by
one thread into a bounded queue.

Every source is decoded with PyAV (FFmpeg): one decoder for files, RTSP, HTTP (MJPEG, MPEG-TS, HLS), UDP and V4L2
webcams, which gives each frame's presentation time (the ``stream`` clock) and takes open and read timeouts, so an
unreachable host is an error after seconds rather than a hang (``benchmarks/bench_watch.py`` measures it against
OpenCV's FFmpeg backend, which the footage pipeline keeps for files). A reader keeps the frames due at the
processing rate (``fps``) and hands them over through a :class:`FrameQueue`: a file or a folder waits for the
pipeline (nothing is lost, only late), a live source (stream, webcam) keeps the newest frames and counts the ones
it pushes out, so a slow pipeline drops frames instead of falling further and further behind. A stream that ends
or fails is reopened after a back-off that doubles from ``RETRY_FIRST_S`` up to ``RETRY_MAX_S``, and a log line
says so; after ``retries`` failures in a row (default: never) the source is marked failed and the others go on.

A folder is polled: a file is picked up once its size has not changed for ``settle_s`` seconds (a recorder is
still writing it otherwise), oldest first, and never twice: :class:`SeenFiles` keeps the files done in a state
file that survives restarts.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av
import numpy as np
import yaml

from tfclip_cli.errors import UserError
from tfclip_cli.footage.clock import video_start_time
from tfclip_cli.tables import atomic_output

log = logging.getLogger(__name__)

SourceKind = Literal["file", "folder", "stream", "webcam"]
Clock = Literal["stream", "name", "arrival"]
State = Literal["running", "reconnecting", "failed", "ended"]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".ts", ".webm", ".m4v", ".mpg", ".mpeg", ".flv"}
DEFAULT_FPS = 25.0  # a stream that states no frame rate (MJPEG over HTTP) is taken to run at this rate
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
UNTIMED_FORMATS = {"mpjpeg"}  # demuxers whose timestamps are made up (a fixed 25 frames/s): arrival times instead
POLL_S = 1.0  # how often a folder is listed


@dataclass(frozen=True)
class SourceSpec:
    """One camera to watch: where its footage comes from and how its frames' times are known.

    ``clock``: ``stream`` (the stream's own timestamps, anchored at the arrival of its first frame), ``name`` (a
    file's start from its name or container, :mod:`tfclip_cli.footage.clock`, plus each frame's timestamp) or
    ``arrival`` (the moment each frame is decoded).
    """

    location: str  # a path, a URL, or a webcam index
    kind: SourceKind
    camera: int
    name: str
    clock: Clock

    @property
    def is_live(self) -> bool:
        """Whether the source runs on its own clock (frames not taken in time are lost, not late)."""
        return self.kind in ("stream", "webcam")


def _kind(location: str) -> SourceKind:
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme in STREAM_SCHEMES:
        return "stream"
    if location.isdigit():
        return "webcam"
    if scheme:
        raise UserError(f"source {location}: unknown scheme {scheme}://",
                        hint=f"a stream is one of {', '.join(s + '://' for s in STREAM_SCHEMES)}")
    path = Path(location)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "file"
    raise UserError(f"source {location} not found: expected a video file, a folder, a stream URL "
                    "(rtsp://, http://, udp://...) or a webcam index")


def make_source(location: str, *, camera: int, name: str | None = None, clock: Clock | None = None) -> SourceSpec:
    """A source from how a user names it: a stream URL, a webcam index (``0``), a folder or a video file.

    Raises:
        UserError: a path that does not exist, an unknown scheme, or the ``name`` clock for a live source.
    """
    kind = _kind(location)
    is_live = kind in ("stream", "webcam")
    chosen: Clock = clock or ("stream" if kind == "stream" else "arrival" if kind == "webcam" else "name")
    if is_live and chosen == "name":
        raise UserError(f"source {location}: the file-name clock is for files and folders; a live source has "
                        "stream timestamps (clock: stream) or arrival times (clock: arrival)")
    default_name = location if is_live else Path(location).stem or Path(location).name
    return SourceSpec(location, kind, camera, name or default_name, chosen)


def read_sources(path: Path) -> list[SourceSpec]:
    """The cameras of a ``streams.yaml``::

        cameras:
          - {id: 0, name: lobby, url: rtsp://10.0.0.5/stream1}             # clock: stream (default for streams)
          - {id: 1, name: door, url: /srv/nvr/door/, clock: name}           # a folder; file-name times
          - {id: 2, name: desk, url: 0, clock: arrival}                     # a webcam

    Raises:
        UserError: naming the file and the entry that is malformed (a missing key, a repeated id, an unknown clock).
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the sources ({exc})") from exc
    cameras = document.get("cameras") if isinstance(document, dict) else None
    if not isinstance(cameras, list) or not cameras:
        raise UserError(f"{path}: expected a list under 'cameras:', each with id, url and optionally name and clock")
    specs = []
    for number, entry in enumerate(cameras):
        unknown = set(entry) - {"id", "name", "url", "clock"} if isinstance(entry, dict) else {"?"}
        if unknown or "id" not in entry or "url" not in entry:
            raise UserError(f"{path}: camera entry {number} must have id and url (and may have name, clock); got "
                            f"{entry!r}")
        clock = entry.get("clock")
        if clock not in (None, "stream", "name", "arrival"):
            raise UserError(f"{path}: camera {entry['id']}: clock {clock!r}: expected stream, name or arrival")
        specs.append(make_source(str(entry["url"]), camera=int(entry["id"]), name=entry.get("name"), clock=clock))
    cameras_seen = [spec.camera for spec in specs]
    repeated = sorted({c for c in cameras_seen if cameras_seen.count(c) > 1})
    if repeated:
        raise UserError(f"{path}: camera ids {repeated} appear more than once: each camera needs its own id")
    return specs


@dataclass(frozen=True)
class Frame:
    """One decoded frame due for processing.

    ``index`` counts the frames of its video from 0 (a file's frame number; a stream's frames since the reader
    started, with a gap for the time it was away). ``time`` is when it was filmed (seconds since the epoch; None
    when the clock is unknown), ``arrival`` when it was decoded (``time.time()``).
    """

    video: str
    index: int
    image: np.ndarray  # [H, W, 3] RGB uint8
    time: float | None
    arrival: float
    fps: float


@dataclass(frozen=True)
class VideoEnd:
    """The last frame of a file has been handed over (a folder's next file is a new video)."""

    video: str


@dataclass
class SourceStatus:
    """A reader's counters (written by the reader thread, read by anyone)."""

    state: State = "running"
    frames_read: int = 0  # decoded
    frames_dropped: int = 0  # due for processing but pushed out of the queue by newer ones
    reconnects: int = 0
    error: str | None = None  # the last failure, while reconnecting or failed


class FrameQueue:
    """A bounded queue of frames; full, a live source's put drops the oldest frame (counted), a file's waits."""

    def __init__(self, size: int, status: SourceStatus) -> None:
        self._items: collections.deque = collections.deque()
        self._size = size
        self._status = status
        self._ready = threading.Condition()

    def put(self, item: Frame | VideoEnd, *, is_lossy: bool, stop: threading.Event) -> None:
        with self._ready:
            while not is_lossy and len(self._items) >= self._size and not stop.is_set():
                self._ready.wait(0.1)
            if is_lossy and len(self._items) >= self._size:
                self._items.popleft()
                self._status.frames_dropped += 1
            self._items.append(item)
            self._ready.notify_all()

    def get(self, timeout: float) -> Frame | VideoEnd | None:
        """The oldest item, or None after ``timeout`` seconds without one."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._ready.notify_all()
            return item


class SeenFiles:
    """The files of watched folders already processed, kept in a JSON state file (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._done: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self._done = json.loads(self.path.read_text()).get("files", {})
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"{self.path}: unreadable watch state ({exc})",
                                hint="delete it to process the watched folders from the start") from exc

    def is_done(self, video: Path) -> bool:
        with self._lock:
            return str(Path(video).resolve()) in self._done

    def mark_done(self, video: Path) -> None:
        """Record ``video`` as processed (its tracklets appended)."""
        with self._lock:
            stat = Path(video).stat() if Path(video).exists() else None
            self._done[str(Path(video).resolve())] = {"size": stat.st_size if stat else None, "done_at": time.time()}
            with atomic_output(self.path, force=True) as temp:
                temp.write_text(json.dumps({"files": self._done}, indent=1) + "\n")


def settled_files(folder: Path, sizes: dict[str, tuple[int, float]], *, settle_s: float, now: float) -> list[Path]:
    """The video files of ``folder`` whose size has not changed for ``settle_s`` seconds, oldest first.

    ``sizes`` (path -> (size, when that size was first seen)) is carried from one poll to the next.
    """
    ready = []
    for path in folder.iterdir():
        if path.suffix.lower() not in VIDEO_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        stat = path.stat()
        seen = sizes.get(str(path))
        if seen is None or seen[0] != stat.st_size:
            sizes[str(path)] = (stat.st_size, now)
        elif now - seen[1] >= settle_s:
            ready.append((stat.st_mtime, path.name, path))
    return [path for _, _, path in sorted(ready)]


@dataclass(frozen=True)
class ReaderOptions:
    """How a reader takes frames from its source."""

    fps: float = 5.0  # frames per second handed to the pipeline
    queue_frames: int = 64  # frames the queue holds before a live source drops the oldest
    retries: int | None = None  # failures in a row before a live source is given up (None: never)
    settle_s: float = 2.0  # a folder's file is taken once its size has not changed for this long
    open_timeout_s: float = OPEN_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    retry_max_s: float = RETRY_MAX_S


def _av_open(spec: SourceSpec, location: str, options: ReaderOptions) -> av.container.InputContainer:
    if spec.kind == "webcam":
        return av.open(f"/dev/video{int(location)}", format="v4l2",
                       timeout=(options.open_timeout_s, options.read_timeout_s))
    rtsp = {"rtsp_transport": "tcp"} if location.startswith("rtsp") else {}
    return av.open(location, options=rtsp, timeout=(options.open_timeout_s, options.read_timeout_s))


def _decoded(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """The frames of ``stream``; when the input breaks off (a stream ends in an I/O error), the frames the decoder
    still holds come out before the error."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except (av.error.FFmpegError, OSError):
        yield from stream.codec_context.decode(None)
        raise


class Reader(threading.Thread):
    """Reads one source into :attr:`queue` until it ends (a file, a failed stream) or :meth:`stop`."""

    def __init__(self, spec: SourceSpec, options: ReaderOptions, *, seen: SeenFiles | None = None) -> None:
        super().__init__(name=f"watch-read-{spec.name}", daemon=True)
        self.spec = spec
        self.options = options
        self.status = SourceStatus()
        self.queue = FrameQueue(options.queue_frames, self.status)
        self.seen = seen
        self._stopping = threading.Event()
        self._next_index = 0  # a live source's frame numbers go on across reconnections
        self._lost_at: float | None = None  # when the live source was last lost

    def stop(self) -> None:
        self._stopping.set()

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        try:
            if self.spec.kind == "folder":
                self._watch_folder(Path(self.spec.location))
            elif self.spec.kind == "file":
                if not self._read_file(Path(self.spec.location)):
                    self.status.state = "failed"
            else:
                self._read_live()
        except Exception as exc:  # a reader thread must say why it stopped, not die silently
            log.exception("%s: the reader stopped", self.spec.name)
            self.status.error, self.status.state = str(exc), "failed"
            return
        if self.status.state != "failed":
            self.status.state = "ended"

    def _put(self, item: Frame | VideoEnd) -> None:
        self.queue.put(item, is_lossy=self.spec.is_live, stop=self._stopping)

    def _read_file(self, video: Path) -> bool:
        """Hand over the frames of ``video`` and its end; False when it cannot be decoded (it is skipped)."""
        if self.seen is not None and self.seen.is_done(video):
            log.info("%s: %s was processed before; skipped", self.spec.name, video)
            return True
        start = video_start_time(video) if self.spec.clock == "name" else None
        base = time.time() if self.spec.clock == "arrival" else (None if start is None else start.time)
        try:
            with _av_open(self.spec, str(video), self.options) as container:
                for frame in self._decode(container, str(video), base=base, first_index=0):
                    self._put(frame)
        except (av.error.FFmpegError, OSError) as exc:
            log.error("%s: cannot decode %s (%s); skipped", self.spec.name, video, exc)
            self.status.error = f"{video}: {exc}"
            self._put(VideoEnd(str(video)))
            return False
        self._put(VideoEnd(str(video)))
        return True

    def _watch_folder(self, folder: Path) -> None:
        sizes: dict[str, tuple[int, float]] = {}
        while not self._stopping.is_set():
            for video in settled_files(folder, sizes, settle_s=self.options.settle_s, now=time.monotonic()):
                if self._stopping.is_set():
                    return
                if self.seen is None or not self.seen.is_done(video):
                    log.info("%s: processing %s", self.spec.name, video)
                    self._read_file(video)
            self._stopping.wait(POLL_S)

    def _read_live(self) -> None:
        failures, delay = 0, RETRY_FIRST_S
        while not self._stopping.is_set():
            try:
                with _av_open(self.spec, self.spec.location, self.options) as container:
                    self.status.state, self.status.error = "running", None
                    base = None if self.spec.clock == "arrival" else "first"
                    frames = self._decode(container, self.spec.location, base=base, first_index=self._next_index)
                    for frame in frames:
                        failures, delay = 0, RETRY_FIRST_S
                        self._put(frame)
                reason = "the stream ended"
            except (av.error.FFmpegError, OSError) as exc:
                reason = str(exc)
            if self._stopping.is_set():
                return
            failures += 1
            self.status.error, self._lost_at = reason, time.time()
            if self.options.retries is not None and failures > self.options.retries:
                log.error("%s (%s): %s; given up after %d attempts", self.spec.name, self.spec.location, reason,
                          failures)
                self.status.state = "failed"
                return
            self.status.state = "reconnecting"
            if self.status.frames_read == 0:  # never opened: most likely a bad URL or an unreachable host
                log.error("%s: cannot read %s (%s); trying again in %.1f s", self.spec.name, self.spec.location,
                          reason, delay)
            else:
                log.warning("%s (%s): %s; reconnecting in %.1f s", self.spec.name, self.spec.location, reason, delay)
            self._stopping.wait(delay)
            self.status.reconnects += 1
            delay = min(2 * delay, self.options.retry_max_s)

    def _decode(self, container: av.container.InputContainer, video: str, *, base: float | str | None,
                first_index: int) -> Iterator[Frame]:
        """The frames of ``container`` due at ``fps``, stamped by the clock (``base``: the epoch time of the
        stream's zero; ``"first"``: anchored at the first frame's arrival; None: arrival for live, else unknown)."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS
        if self._lost_at is not None:  # the frames the stream was away for keep their place in the numbering
            first_index += round((time.time() - self._lost_at) * rate)
            self._lost_at = None
        step, due, anchor = 1.0 / self.options.fps, None, base
        has_clock, started = container.format.name not in UNTIMED_FORMATS, time.time()
        for index, decoded in enumerate(_decoded(container, stream), start=first_index):
            arrival = time.time()
            self.status.frames_read += 1
            self._next_index = index + 1  # kept per frame: a stream that breaks off ends this loop in an error
            if self._stopping.is_set():
                break
            offset = (decoded.time if has_clock and decoded.time is not None
                      else arrival - started if self.spec.is_live else (index - first_index) / rate)
            if due is not None and offset < due - 1e-6:
                continue
            due = offset + step if due is None or offset - due > step else due + step
            if anchor == "first":
                anchor = arrival - offset
            when = arrival if self.spec.is_live and anchor is None else (
                None if anchor is None else anchor + offset)
            yield Frame(video, index, decoded.to_ndarray(format="rgb24"), when, arrival, rate)


def start_readers(specs: Sequence[SourceSpec], options: ReaderOptions, *, seen: SeenFiles | None) -> list[Reader]:
    """One started reader per source."""
    readers = [Reader(spec, options, seen=seen) for spec in specs]
    for reader in readers:
        reader.start()
    return readers
