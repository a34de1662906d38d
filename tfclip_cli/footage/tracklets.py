"""``tfclip track``: raw camera videos → person tracklets in the ``footage`` layout, ready for ``tfclip prepare``.

Each video goes through the footage pipeline (:mod:`~tfclip_cli.footage.pipeline`: detect, track, crop, optionally
cut and re-link by appearance, drop tracklets too short or that never move), and every tracklet it returns is
written as ``ROOT/<camid>/<video stem>/<tracklet>/`` (JPEG crops and a ``track.json``, see
:mod:`tfclip_cli.datasets.footage`).
A video's folder is built under a hidden name and renamed into place when complete, so an interrupted run leaves
no half-written video. Videos run in parallel worker processes (one video each), and under ``torchrun`` each rank
takes every ``world_size``-th video.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from tfclip_cli import display
from tfclip_cli.datasets.footage import TRACK_FILE, crop_name
from tfclip_cli.errors import UserError
from tfclip_cli.footage.clock import resolve_start_times, tracklet_times, video_start_time
from tfclip_cli.footage.detect import (
    DEFAULT_DETECTOR,
    detector_for_video,
    resolve_detector,
    set_threads,
    video_info,
)
from tfclip_cli.footage.detection import Detector
from tfclip_cli.footage.pipeline import CutTracklet, FrameProgress, PipelineOptions, check_options, run_video
from tfclip_cli.footage.relink import model_crop_embedder
from tfclip_cli.tables import check_writable_folder

log = logging.getLogger(__name__)

T = TypeVar("T")
CAMID_RULE = re.compile(r"^(?:camera|cam|c)[_-]?(\d+)(?!\d)", re.IGNORECASE)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class TrackOptions:
    """How ``tfclip track`` treats each video (one picklable value, handed to worker processes)."""

    detector: str | Detector = DEFAULT_DETECTOR  # "ssdlite", "hog", a YOLO .onnx path, or a Detector
    checkpoint: Path | None = None  # a TF-CLIP checkpoint: relink tracks by appearance
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)  # frame step, minimum length, thresholds
    start_times: Mapping[str, float] = field(default_factory=dict)  # video path -> start (footage.clock), as given


@dataclass(frozen=True)
class VideoTracklets:
    """What ``tfclip track`` did with one video."""

    video: str
    camid: int
    folder: str  # ROOT/<camid>/<stem>
    frames: int
    fps: float
    tracks: int  # motion tracks found
    tracklets: int  # written (at least min_frames frames, after relinking, moving)
    static: int  # not written: at least min_frames frames, but the box never moved (a false positive, or
    # a person standing still the whole time: kept with PipelineOptions.keep_static, `track --keep-static`)
    seconds: float

    @property
    def speed(self) -> float:
        """Frames processed per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class TrackingSummary:
    """The result of :func:`track_videos`: the output root and one record per video, in input order."""

    out: str
    detector: str
    relinked: bool
    videos: tuple[VideoTracklets, ...]

    @property
    def tracklets(self) -> int:
        return sum(v.tracklets for v in self.videos)

    @property
    def static(self) -> int:
        return sum(v.static for v in self.videos)


def camid_from_name(video: Path) -> int | None:
    """The camera number a file or its folder is named for: ``cam2_lobby.mp4``, ``c2.avi``, ``camera02/0800.mp4``
    → 2; None when neither name starts with ``cam``/``camera``/``c`` and a number."""
    for name in (video.stem, video.parent.name):
        match = CAMID_RULE.match(name)
        if match:
            return int(match.group(1))
    return None


def _camid(video: Path, camid: int | None) -> int:
    if camid is not None:
        return camid
    found = camid_from_name(video)
    if found is None:
        raise UserError(
            f"{video}: no camera number in its name or folder (expected cam<N>..., camera<N>... or c<N>...)",
            hint="pass --camid N, or name the file or its folder e.g. cam2_lobby.mp4 or cam2/lobby.mp4",
        )
    return found


def plan_outputs(videos: Sequence[Path], out: Path, *, camid: int | None, force: bool) -> list[Path]:
    """The output folder of each video, checked before any work.

    Raises:
        UserError: a camera number that cannot be found, two videos mapping to one folder, or (without
        ``force``) a folder that exists. OutputError: ``out`` cannot take files (read-only, a file in its path).
    """
    check_writable_folder(Path(out))
    folders = [Path(out) / str(_camid(Path(v), camid)) / Path(v).stem for v in videos]
    for folder, video in zip(folders, videos):
        if folders.count(folder) > 1:
            raise UserError(f"{video}: another video of the same camera has the same name; both would go to {folder}")
        if folder.exists() and not force:
            raise UserError(f"{folder} already exists", hint="pass --force to overwrite it, or choose another --out")
    return folders


def _write_tracklet(tracklet: CutTracklet, target: Path, *, record: dict) -> None:
    """Write a tracklet's crops as JPEG files into ``target`` and its ``track.json``."""
    target.mkdir(parents=True)
    track = tracklet.track
    for index, crop in zip(track.frame_indices, tracklet.crops):
        Image.fromarray(crop).save(target / crop_name(index), quality=JPEG_QUALITY)
    payload = {
        **record,
        "camid": track.camid,
        "frame_indices": list(track.frame_indices),
        "boxes": [[round(float(v), 2) for v in box] for box in track.boxes],
        "scores": [round(float(s), 4) for s in track.scores],
        **tracklet_times(record["start_time"], track.frame_indices, record["fps"]),
    }
    (target / TRACK_FILE).write_text(json.dumps(payload) + "\n")


def track_one_video(
    video: Path, folder: Path, *, camid: int, options: TrackOptions, progress: FrameProgress | None
) -> VideoTracklets:
    """Track one video and write its tracklets into ``folder`` (built hidden beside it, renamed when complete).

    Raises:
        DataError: the video does not open. UserError: the detector or checkpoint cannot be loaded.
    """
    started = time.perf_counter()
    detector = detector_for_video(options.detector, video) if isinstance(options.detector, str) else options.detector
    # onnxruntime gets torch's thread count: one in a worker process (one core each), else all of them
    embed = None if options.checkpoint is None else model_crop_embedder(options.checkpoint,
                                                                        threads=torch.get_num_threads())
    done = run_video(video, detector, camid=camid, options=options.pipeline, embed=embed, progress=progress)
    fps = video_info(video).fps
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as work:
        building = Path(work) / "tracklets"
        building.mkdir()
        start = video_start_time(video, options.start_times.get(str(video)))
        record = {"source_video": str(Path(video).resolve()), "fps": fps,
                  "start_time": None if start is None else start.time}
        for tracklet in done.tracklets:
            _write_tracklet(tracklet, building / f"{tracklet.track.track_id:04d}", record=record)
        if folder.exists():  # --force was checked by plan_outputs
            shutil.rmtree(folder)
        os.replace(building, folder)
    seconds = time.perf_counter() - started
    return VideoTracklets(str(video), camid, str(folder), done.frames, fps, done.tracks, len(done.tracklets),
                          done.static, seconds)


REPORT_EVERY = 10  # frames between two progress messages from a worker process


def _queue_progress(reports: "queue.Queue[tuple[int, int]]", job: int) -> FrameProgress:
    """Progress of a worker's video, sent to the parent's progress board every few frames."""

    def wrap(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        done = 0
        for done, frame in enumerate(frames, start=1):
            yield frame
            if done % REPORT_EVERY == 0:
                reports.put((job, REPORT_EVERY))
        reports.put((job, done % REPORT_EVERY))

    return wrap


_reports: queue.Queue | None = None  # a worker process's channel to the parent's progress board


def _start_worker(reports: queue.Queue) -> None:
    """Set up a worker process: one thread, so N workers use N cores, and the progress channel."""
    global _reports
    _reports = reports
    set_threads(1)
    torch.set_num_threads(1)


def _worker(job: int, spec: tuple[Path, Path, int], options: TrackOptions) -> VideoTracklets:
    """Video number ``job`` = (video, output folder, camid), in a worker process."""
    assert _reports is not None
    video, folder, camid = spec
    return track_one_video(video, folder, camid=camid, options=options, progress=_queue_progress(_reports, job))


def _run_parallel(jobs: list[tuple[Path, Path, int]], options: TrackOptions, workers: int) -> list[VideoTracklets]:
    """Each video in its own process (``spawn``: torch and OpenCV thread pools do not survive ``fork``), with a
    progress bar per video fed through a queue."""
    context = multiprocessing.get_context("spawn")
    totals = [video_info(video).num_frames or None for video, _, _ in jobs]
    reports = context.Queue()
    names = [f"tracking {video.name}" for video, _, _ in jobs]
    with display.progress_board(names, totals, unit="frames") as advance, concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(reports,)
    ) as pool:
        futures = [pool.submit(_worker, job, spec, options) for job, spec in enumerate(jobs)]
        while not all(f.done() for f in futures):
            _drain(reports, advance, timeout=0.2)
        _drain(reports, advance, timeout=0.0)
        return [f.result() for f in futures]


def _drain(reports: queue.Queue, advance: Callable[[int, int], None], *, timeout: float) -> None:
    """Apply every progress message waiting (after up to ``timeout`` seconds for the first)."""
    try:
        while True:
            advance(*reports.get(timeout=timeout))
            timeout = 0.0
    except queue.Empty:
        return


def _run(jobs: list[tuple[Path, Path, int]], options: TrackOptions, workers: int) -> list[VideoTracklets]:
    if workers > 1 and len(jobs) > 1:
        return _run_parallel(jobs, options, min(workers, len(jobs)))
    return [track_one_video(v, f, camid=c, options=options, progress=None) for v, f, c in jobs]


def _run_sharded(jobs: list[tuple[Path, Path, int]], options: TrackOptions, workers: int) -> list[VideoTracklets]:
    """Under torchrun: this rank runs every ``world_size``-th video, then all ranks share their records."""
    import torch.distributed as dist

    from tfclip_cli.inference import start_distributed  # the model stack (open_clip) loads only when needed

    context = start_distributed()
    try:
        mine = _run(jobs[context.rank :: context.world_size], options, workers)
        shards: list = [None] * context.world_size
        dist.all_gather_object(shards, mine)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return interleave(shards)


def interleave(shards: Sequence[Sequence[T]]) -> list[T]:
    """The items of rank shards ``shards[r] = items[r::world_size]`` back in their original order."""
    count, size = sum(len(shard) for shard in shards), len(shards)
    return [shards[i % size][i // size] for i in range(count)]


def track_videos(
    videos: Sequence[Path],
    out: Path,
    *,
    options: TrackOptions = TrackOptions(),
    camid: int | None = None,
    workers: int = 1,
    force: bool = False,
) -> TrackingSummary:
    """``tfclip track``: turn each video into person tracklets under ``out`` (the ``footage`` layout).

    Args:
        videos: the camera videos.
        out: the output root, read by ``tfclip prepare footage``.
        options: detector, relinking checkpoint, and the pipeline's frame step, minimum length and thresholds.
        camid: the camera of every video; default: from each file or folder name (:func:`camid_from_name`).
        workers: videos processed at once, one process each.
        force: replace the output folder of a video that was tracked before.
    Raises:
        UserError: before any work, for a camera number not found, a clash of outputs or an existing output
        without ``force``; DataError: a video that does not open.
    """
    check_options(options.pipeline)
    videos = [Path(v) for v in videos]
    for video in videos:
        if not video.is_file():
            raise UserError(f"{video} not found: expected a video file")
    folders = plan_outputs(videos, out, camid=camid, force=force)
    resolve_start_times(videos, options.start_times)  # warns, before any work, for each video without a start
    if isinstance(options.detector, str):  # resolve "auto" once, here, so workers and the summary agree
        options = dataclasses.replace(options, detector=resolve_detector(options.detector))
    jobs = [(video, folder, _camid(video, camid)) for video, folder in zip(videos, folders)]
    is_sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1  # launched by torchrun
    done = _run_sharded(jobs, options, workers) if is_sharded else _run(jobs, options, workers)
    detector = Path(options.detector).name if isinstance(options.detector, str) else options.detector.name
    return TrackingSummary(str(out), detector, options.checkpoint is not None, tuple(done))
