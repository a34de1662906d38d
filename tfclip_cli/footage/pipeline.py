"""One footage pipeline: frames → detections → tracks → relinked tracklets, with their crops in memory and times.

Everything that turns camera footage into person tracklets calls this (``tfclip track``, a footage ``tfclip
query``, ``benchmarks/bench_tracking.py``), with one set of defaults (:class:`PipelineOptions`). Frames arrive one
at a time (:meth:`FootagePipeline.feed`), so a video file (:func:`run_video`) and a live stream are fed alike, and
each frame is read once: the detector sees it, the tracker moves on, and every live track's box is cropped out of it
there and then. :meth:`FootagePipeline.close` keeps the crops of the tracks confirmed, relinks them by appearance
(when given a crop embedder), drops the tracklets too short or that never move (a detector's false positive on a
sign or a cone), and returns each tracklet with its crops and its times in the video. Nothing is written to disk.

Boxes are clipped to the frame (detections before tracking, tracks' boxes before cropping), and a box smaller than
``min_side`` pixels after clipping (a prediction that left the picture) is no crop: the track skips that frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from tfclip_cli import display
from tfclip_cli.errors import UserError
from tfclip_cli.footage.detect import read_video, video_info
from tfclip_cli.footage.detection import Detector, clip_box, clipped, is_big_enough
from tfclip_cli.footage.relink import (
    CropEmbedder,
    Linked,
    Piece,
    RelinkConfig,
    crop_span_embedder,
    relink,
    unlinked,
)
from tfclip_cli.footage.track import ByteTracker, Track, TrackerConfig

MIN_SIDE = 8  # pixels: a box narrower or shorter than this, once clipped to the frame, holds no usable person
STATIC_MOTION = 0.15  # box heights: a tracklet whose detected box edges all stay within this range never moved


@dataclass(frozen=True)
class PipelineOptions:
    """How footage becomes tracklets; one set of defaults for every caller."""

    every: int = 1  # detect on every k-th frame, predict boxes between
    min_frames: int = 8  # shorter tracklets are left out
    min_side: int = MIN_SIDE  # boxes smaller than this (pixels, after clipping to the frame) give no crop
    keep_static: bool = False  # keep tracklets whose box never moves (a person standing still the whole time)
    static_motion: float = STATIC_MOTION  # see :func:`is_static`
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    relink: RelinkConfig = field(default_factory=RelinkConfig)


@dataclass(frozen=True)
class CutTracklet:
    """One person's tracklet cut from footage: its track (boxes inside the frame), the motion-track pieces it was
    relinked from, one RGB crop ``[h, w, 3]`` uint8 per frame of the track, and the video's frame rate."""

    track: Track
    pieces: tuple[Piece, ...]
    crops: tuple[np.ndarray, ...]
    fps: float

    @property
    def first_frame(self) -> int:
        return self.track.frame_indices[0]

    @property
    def last_frame(self) -> int:
        return self.track.frame_indices[-1]

    @property
    def start_s(self) -> float:
        """Seconds from the start of the video to the first frame."""
        return self.first_frame / self.fps

    @property
    def end_s(self) -> float:
        """Seconds from the start of the video to the end of the last frame (which lasts ``1 / fps``)."""
        return (self.last_frame + 1) / self.fps


@dataclass(frozen=True)
class PipelineResult:
    """What the pipeline made of one video or stream."""

    tracklets: tuple[CutTracklet, ...]  # numbered 1, 2, ... (track_id) by first frame
    frames: int  # frames fed
    tracks: int  # motion tracks the tracker confirmed
    static: int  # tracklets of at least min_frames frames left out because their box never moved


def check_options(options: PipelineOptions) -> None:
    """Raises UserError when the frame step or the least tracklet length is below 1."""
    if options.every < 1 or options.min_frames < 1:
        raise UserError(f"--every {options.every} and --min-frames {options.min_frames}: both must be at least 1")


def is_static(track: Track, max_motion: float) -> bool:
    """Whether ``track``'s box never moved: each edge (x1, y1, x2, y2) of its detected boxes (predicted ones drift
    on a stale velocity) stays within ``max_motion`` median box heights over the track's life. A walker moves at
    least one edge by more (one walking across shifts, one walking towards the camera grows); a detector firing
    on a sign, a cone or the ground does not, and neither does a person standing still the whole time."""
    detected = track.boxes[track.scores > 0]
    boxes = detected if len(detected) else track.boxes
    height = float(np.median(boxes[:, 3] - boxes[:, 1]))
    spread = boxes.max(axis=0) - boxes.min(axis=0)  # [4]
    return bool((spread <= max_motion * max(height, 1.0)).all())


def _crop(frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The pixels of ``frame`` inside ``box`` (already clipped to it), as a copy: the frame is not kept."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return frame[y1:y2, x1:x2].copy()


class FootagePipeline:
    """Feed it the frames of one video or stream in order; :meth:`close` returns the tracklets.

    Args:
        detector: finds people in a frame.
        camid: the camera, copied into every track.
        fps: frames per second, for the tracklets' times.
        source: the video or stream (a name), copied into every track.
        options: the pipeline's settings.
        embed: embeds clips of crops (for relinking by appearance); None keeps the motion tracks as they are.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        camid: int,
        fps: float,
        source: str = "",
        options: PipelineOptions = PipelineOptions(),
        embed: CropEmbedder | None = None,
    ) -> None:
        check_options(options)
        self.detector = detector
        self.fps = fps
        self.options = options
        self.embed = embed
        self._tracker = ByteTracker(camid=camid, source=source, config=options.tracker, fps=fps)
        self._crops: dict[int, dict[int, np.ndarray]] = {}  # serial → frame index → crop
        self._boxes: dict[int, dict[int, tuple]] = {}  # serial → frame index → clipped box
        self._frames = 0
        self._numbered = 0  # tracklets returned so far

    def feed(self, frame_index: int, frame: np.ndarray) -> None:
        """Detect (every ``every``-th frame), track, and crop every live track's box out of ``frame`` (RGB
        ``[H, W, 3]`` uint8; frame indices increasing)."""
        height, width = frame.shape[:2]
        if frame_index % self.options.every == 0:
            found = self.detector.detect(frame, frame_index=frame_index)
            self._tracker.update(clipped(found, width=width, height=height, min_side=self.options.min_side),
                                 frame_index)
        else:
            self._tracker.carry(frame_index)
        for serial, box in self._tracker.live_boxes():
            box = clip_box(box, width=width, height=height)
            if is_big_enough(box, self.options.min_side):
                self._crops.setdefault(serial, {})[frame_index] = _crop(frame, box)
                self._boxes.setdefault(serial, {})[frame_index] = box
        self._frames += 1

    @property
    def open_tracks(self) -> int:
        """Tracks the tracker follows now (tentative, tracked, or lost and waiting to be found again)."""
        return len(self._tracker.live_boxes())

    def close(self) -> PipelineResult:
        """The tracklets of everything fed: relinked (with an embedder), long enough, and moving (unless
        ``keep_static``), numbered 1, 2, ... by first frame (after those :meth:`finished` returned, if any)."""
        return self._result(self._tracker.keyed_tracks())

    def finished(self, frame_index: int, *, max_frames: int) -> PipelineResult:
        """For live footage, called between frames: the tracklets done by ``frame_index``, whose crops then leave
        memory. A track is done when it died (lost for longer than the tracker's lost buffer) and was last seen
        more than the relinking's ``max_gap`` frames before ``frame_index`` (a fragment that may continue it has
        started by then), or when it holds ``max_frames`` frames (it is cut there and goes on as a new
        tracklet). They are relinked among themselves and filtered as :meth:`close` does, and numbered after
        every tracklet returned before; :meth:`close` then returns only the rest."""
        released = self._tracker.release(dead_before=frame_index - self.options.relink.max_gap,
                                         max_frames=max_frames)
        result = self._result(released)
        held = self._tracker.serials()
        for serial in [serial for serial in self._crops if serial not in held]:
            del self._crops[serial], self._boxes[serial]
        return result

    def _result(self, keyed: list[tuple[int, Track]]) -> PipelineResult:
        trimmed = [self._trimmed(serial, track) for serial, track in keyed]
        tracks = [pair for pair in trimmed if pair is not None]
        crops_of = {track.track_id: crops for track, crops in tracks}
        motion = [track for track, _ in tracks]
        linked = unlinked(motion) if self.embed is None else relink(
            motion, crop_span_embedder([crops_of[track.track_id] for track in motion], self.embed), self.options.relink)
        long_enough = [link for link in linked if link.track.num_frames >= self.options.min_frames]
        moving = [link for link in long_enough
                  if self.options.keep_static or not is_static(link.track, self.options.static_motion)]
        moving.sort(key=lambda link: (link.track.frame_indices[0], link.track.track_id))
        tracklets = tuple(self._tracklet(number, link, motion, crops_of)
                          for number, link in enumerate(moving, self._numbered + 1))
        self._numbered += len(tracklets)
        return PipelineResult(tracklets, self._frames, len(motion), len(long_enough) - len(moving))

    def _trimmed(self, serial: int, track: Track) -> tuple[Track, tuple[np.ndarray, ...]] | None:
        """``track`` with its boxes clipped to the frame, on the frames that gave a crop, and those crops; None
        when no frame did."""
        crops, boxes = self._crops.get(serial, {}), self._boxes.get(serial, {})
        keep = [i for i, index in enumerate(track.frame_indices) if index in crops]
        if not keep:
            return None
        indices = tuple(track.frame_indices[i] for i in keep)
        cut = Track(track.track_id, track.camid, indices, np.array([boxes[i] for i in indices], dtype=np.float32),
                    track.scores[keep], track.source)
        return cut, tuple(crops[i] for i in indices)

    def _tracklet(self, number: int, link: Linked, motion: list[Track],
                  crops_of: dict[int, tuple[np.ndarray, ...]]) -> CutTracklet:
        crops = tuple(crop for piece in link.pieces
                      for crop in crops_of[motion[piece.track].track_id][piece.start:piece.stop])
        track = link.track
        numbered = Track(number, track.camid, track.frame_indices, track.boxes, track.scores, track.source)
        return CutTracklet(numbered, link.pieces, crops, self.fps)


FrameProgress = Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]]


def run_video(
    video: Path,
    detector: Detector,
    *,
    camid: int,
    options: PipelineOptions = PipelineOptions(),
    embed: CropEmbedder | None = None,
    progress: FrameProgress | None = None,
) -> PipelineResult:
    """Feed every frame of ``video`` through a :class:`FootagePipeline` (decoded once).

    Args:
        progress: wraps the frame iterator to report progress; default: a progress bar on stderr.
    Raises:
        DataError: when the video does not open.
    """
    info = video_info(video)
    pipeline = FootagePipeline(detector, camid=camid, fps=info.fps, source=str(video), options=options, embed=embed)
    if progress is None:
        progress = functools.partial(display.progress, description=f"tracking {Path(video).name}",
                                     total=info.num_frames or None, unit="frames")
    for frame_index, frame in enumerate(progress(read_video(video))):
        pipeline.feed(frame_index, frame)
    return pipeline.close()
