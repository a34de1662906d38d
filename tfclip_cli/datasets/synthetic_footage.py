"""Synthetic camera footage with ground truth: walkers enter, cross, occlude each other and leave.

Each camera films a static scene (the camera looks of :mod:`synthetic`) for ``frames`` frames at 10 frames/s. Every
walker (an identity drawn by :mod:`pedestrian`, the same person in every camera) walks once through every camera's
view, across it (seen from the side) or towards or away from the camera, at a depth that sets its size, some of
them stopping for a while on the way; walkers nearer the camera are drawn over farther ones, so crossings
occlude. The tree::

    ROOT/footage/cam<N>/cam<N>.mp4   the video (MPEG-4, byte-identical for a seed, as synthetic.py writes them)
    ROOT/footage/cam<N>/gt.txt       MOTChallenge ground truth: frame,id,x,y,w,h,1,-1,-1,-1 (id = the walker's pid)
    ROOT/tracklets/<split>/<pid>/<camid>/t00/000000.jpg ...   the ground-truth crops, in the folder layout

Ground-truth boxes are the drawn person's exact extent, clipped to the frame; a walker counts as in view while at
least a quarter of its box is inside the frame. Its crops form one tracklet per camera: the tracklet of the camera
``pid % cameras`` is the query, the others are gallery (with one camera every tracklet is gallery).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfclip_cli import display
from tfclip_cli.datasets.mot import GroundTruth, write_gt
from tfclip_cli.datasets.pedestrian import Appearance, Body, View, draw_person, sample_appearances
from tfclip_cli.datasets.synthetic import (
    WALK_PERIOD,
    CameraStyle,
    add_noise,
    check_empty,
    colour_table,
    drawing_into,
    sample_camera,
    write_frames,
    write_video,
)
from tfclip_cli.errors import DataError
from tfclip_cli.tables import FootageOrigin, Tracklet

logger = logging.getLogger(__name__)

FOOTAGE_FPS = 10  # a typical surveillance frame rate
DEPTH_FORESHORTENING = 3.0  # walking towards the camera moves the feet this many times less on screen than across
MIN_INSIDE = 0.25  # share of a walker's box inside the frame for it to count as in view
PAUSE_SHARE = 0.4  # walkers who stop for 0.5-2 s on their way: people do, and constant-velocity tracking misses it


@dataclass(frozen=True)
class FootageOptions:
    """What footage to draw; the defaults give two cameras of 12 s each in a few seconds."""

    walkers: int = 6  # identities; each walks once through every camera (3-10, so scenes stay readable)
    cameras: int = 2  # cameras, each one video
    image_size: tuple[int, int] = (288, 384)  # (height, width) of the videos, both even
    frames: int = 120  # frames per video, at 10 frames/s
    seed: int = 0  # one seed fixes every pixel


@dataclass(frozen=True)
class Walk:
    """One walker's way through one camera's view; positions are shares of the frame (feet point)."""

    pid: int
    camid: int
    enter: int  # frame at which the walk starts (off screen or at its edge)
    duration: int  # frames from start to end
    start: tuple[float, float]  # (x, y) of the feet at the first frame
    end: tuple[float, float]
    view: View
    facing: int  # +1 walks to the right, -1 to the left (side view)
    phase: float  # walking phase of the first frame, radians
    period: float  # frames per walking cycle
    pause_at: int = 0  # frames of walking before the walker stands still (and a motion model overshoots)
    pause: int = 0  # frames standing still

    def steps(self, frame_index: int) -> int | None:
        """Frames walked (pauses not counted) by ``frame_index``, or None before the walk or after it."""
        elapsed = frame_index - self.enter
        if not 0 <= elapsed <= self.duration + self.pause:
            return None
        return elapsed - min(max(elapsed - self.pause_at, 0), self.pause)

    def feet(self, frame_index: int) -> tuple[float, float] | None:
        """Feet position at ``frame_index``, or None before the walk starts or after it ends."""
        steps = self.steps(frame_index)
        if steps is None:
            return None
        t = steps / max(1, self.duration)
        return self.start[0] + (self.end[0] - self.start[0]) * t, self.start[1] + (self.end[1] - self.start[1]) * t


def person_height(feet_y: float) -> float:
    """Person height as a share of the frame height for feet at ``feet_y``: nearer (lower) people look taller."""
    return 0.28 + 0.9 * (feet_y - 0.7)


def _sample_walk(rng: np.random.Generator, pid: int, camid: int, *, enter: int) -> Walk:
    """A walk across the view (70%) or towards or away from the camera, starting at frame ``enter``."""
    phase, period = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*WALK_PERIOD)) * FOOTAGE_FPS / 25
    if rng.random() < 0.7:
        facing = 1 if rng.random() < 0.5 else -1
        y0 = float(rng.uniform(0.72, 0.97))
        start, end = (0.5 - 0.65 * facing, y0), (0.5 + 0.65 * facing, y0 + float(rng.uniform(-0.04, 0.04)))
        view: View = "side"
    else:
        facing = 1
        x0, x1 = float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85))
        towards = rng.random() < 0.5
        near, far = (x0, 1.15), (x1, 0.72)
        start, end = (far, near) if towards else (near, far)
        view = "front" if towards else "back"
    # A step towards the camera covers less of the picture than one across it: depth counts three times.
    distance = abs(end[0] - start[0]) + DEPTH_FORESHORTENING * abs(end[1] - start[1])
    duration = max(4, round(distance / float(rng.uniform(0.025, 0.045))))
    pause = int(rng.integers(5, 21)) if rng.random() < PAUSE_SHARE else 0
    return Walk(pid=pid, camid=camid, enter=enter, duration=duration, start=start, end=end, view=view,
                facing=facing, phase=phase, period=period, pause_at=int(rng.uniform(0.3, 0.7) * duration),
                pause=pause)


def plan_walks(options: FootageOptions) -> list[Walk]:
    """Every walker's walk through every camera, deterministic for ``options.seed``.

    Each camera lets the walkers in one after another, in its own order, at about even intervals over the first 60%
    of the video, so several are in view at once and their ways cross.
    """
    walks = []
    for camid in range(options.cameras):
        rng = np.random.default_rng([options.seed, 6, camid])
        for slot, pid in enumerate(rng.permutation(options.walkers)):
            enter = round((slot + rng.random()) * 0.6 * options.frames / options.walkers)
            walks.append(_sample_walk(rng, int(pid), camid, enter=enter))
    return sorted(walks, key=lambda walk: (walk.camid, walk.pid))


def _draw_walker(canvas: Image.Image, walk: Walk, look: Appearance, *, frame_index: int
                 ) -> tuple[float, float, float, float] | None:
    """Paste the walker onto ``canvas`` at ``frame_index``; return its exact box (canvas pixels) or None."""
    feet = walk.feet(frame_index)
    if feet is None:
        return None
    height, width = canvas.height, canvas.width
    unit = height * person_height(feet[1]) * look.height
    phase = walk.phase + 2 * math.pi * walk.steps(frame_index) / walk.period  # legs rest while standing
    size = (max(2, round(0.8 * unit)), max(2, round(1.06 * unit)))
    patch = Image.new("RGBA", size, (0, 0, 0, 0))
    mirror = walk.facing if walk.view == "side" else (1 if walk.view == "front" else -1)
    bob = 0.012 * unit * abs(math.cos(phase))
    body = Body(cx=size[0] / 2, top=0.03 * unit - bob, unit=unit, mirror=mirror, swing=math.sin(phase),
                build=look.build)
    draw_person(ImageDraw.Draw(patch), body, look, view=walk.view)
    bbox = patch.getchannel("A").getbbox()
    if bbox is None:
        return None
    left, top = round(feet[0] * width - size[0] / 2), round(feet[1] * height - 0.985 * unit - 0.03 * unit)
    canvas.paste(patch, (left, top), patch)
    return left + bbox[0], top + bbox[1], left + bbox[2], top + bbox[3]


def _in_view(box: tuple[float, float, float, float], *, size: tuple[int, int]) -> tuple[float, ...] | None:
    """``box`` clipped to the frame of ``size`` (height, width), or None when less than MIN_INSIDE of it is inside."""
    height, width = size
    x1, y1, x2, y2 = box
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    area = (x2 - x1) * (y2 - y1)
    inside = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
    return clipped if area > 0 and inside >= MIN_INSIDE * area else None


@dataclass(frozen=True)
class CameraFootage:
    """One camera's drawn video and its ground truth."""

    frames: list[np.ndarray]  # uint8 [H, W, 3] each
    truth: GroundTruth


@dataclass(frozen=True)
class _Scene:
    """A static camera: its look, where its background crop starts, and the drawing scale."""

    camera: CameraStyle
    background_left: int
    supersample: int
    colours: list[int]


def _render_frame(frame_index: int, walks: list[Walk], looks: list[Appearance], *, scene: _Scene,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict[int, tuple[float, ...]]]:
    """Frame ``frame_index`` of one camera and the in-view ground-truth box of each walker, by pid."""
    s = scene.supersample
    height, width = scene.camera.background.height, scene.camera.background.width - scene.camera.world_width
    canvas = scene.camera.background.crop((scene.background_left, 0, scene.background_left + width, height))
    ahead = [walk for walk in walks if walk.feet(frame_index) is not None]
    boxes = {}
    for walk in sorted(ahead, key=lambda w: w.feet(frame_index)[1]):  # farther (higher) walkers first
        box = _draw_walker(canvas, walk, looks[walk.pid], frame_index=frame_index)
        clipped = box and _in_view(tuple(v / s for v in box), size=(height // s, width // s))
        if clipped:
            boxes[walk.pid] = clipped
    image = canvas.reduce(s) if s > 1 else canvas
    if scene.camera.blur * image.height >= 0.3:
        image = image.filter(ImageFilter.BoxBlur(scene.camera.blur * image.height))
    return add_noise(image.point(scene.colours), scene.camera, rng), boxes


def render_camera(camid: int, walks: list[Walk], looks: list[Appearance], *, options: FootageOptions
                  ) -> CameraFootage:
    """Every frame of camera ``camid`` and its ground truth, deterministic for the seed and the camera."""
    supersample = 2 if options.image_size[0] < 512 else 1  # as synthetic.py: smooth edges, cheap at this size
    camera = sample_camera(camid, seed=options.seed, image_size=options.image_size, supersample=supersample)
    rng = np.random.default_rng([options.seed, 7, camid])
    scene = _Scene(camera=camera, background_left=int(rng.integers(camera.world_width)), supersample=supersample,
                   colours=colour_table(camera, 1.0))
    frames, rows = [], []
    for frame_index in range(options.frames):
        frame, boxes = _render_frame(frame_index, walks, looks, scene=scene, rng=rng)
        frames.append(frame)
        rows.extend((frame_index, pid, box) for pid, box in boxes.items())
    truth = GroundTruth(
        frame_indices=np.array([r[0] for r in rows], dtype=np.int64),
        pids=np.array([r[1] for r in rows], dtype=np.int64),
        boxes=np.array([r[2] for r in rows], dtype=np.float32).reshape(-1, 4),
    )
    return CameraFootage(frames=frames, truth=truth)


def _crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return frame[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


def _write_tracklets(footage: CameraFootage, camid: int, *, into: Path, root: Path, options: FootageOptions
                     ) -> list[Tracklet]:
    """Cut each walker's ground-truth crops into ``into/tracklets``, one tracklet per walker with its origin in the
    video, described with the paths they will have under ``root`` (the drawing folder ``into`` becomes ``root``)."""
    written = []
    for pid in np.unique(footage.truth.pids):
        rows = np.flatnonzero(footage.truth.pids == pid)
        split = "query" if options.cameras > 1 and pid % options.cameras == camid else "gallery"
        relative = Path("tracklets", split, f"{pid:04d}", str(camid), "t00")
        indices = [int(i) for i in footage.truth.frame_indices[rows]]
        write_frames([_crop(footage.frames[i], footage.truth.boxes[r]) for i, r in zip(indices, rows)],
                     into / relative)
        frames = tuple(str(root / relative / f"{t:06d}.jpg") for t in range(len(rows)))
        origin = FootageOrigin(
            source_video=str(root / "footage" / f"cam{camid}" / f"cam{camid}.mp4"),
            first_frame=indices[0], last_frame=indices[-1], start_s=indices[0] / FOOTAGE_FPS,
            end_s=(indices[-1] + 1) / FOOTAGE_FPS,
            boxes=tuple(tuple(float(v) for v in footage.truth.boxes[r]) for r in rows), frame_indices=tuple(indices),
        )
        written.append(Tracklet(str(relative), int(pid), camid, split, len(rows), frames=frames, origin=origin))
    return written


def check_options(options: FootageOptions) -> None:
    """Raises DataError naming the first option that cannot give usable footage."""
    height, width = options.image_size
    problems = [
        (not 3 <= options.walkers <= 10, f"walkers={options.walkers}: expected 3 to 10 walkers per scene"),
        (options.cameras < 1, f"cameras={options.cameras}: expected at least 1"),
        (options.frames < 8, f"frames={options.frames}: expected at least 8 frames per video"),
        (height % 2 or width % 2 or height < 64 or width < 64,
         f"image_size={options.image_size}: expected even (height, width), each ≥ 64"),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"synthetic footage option {message}")


def generate_footage(root: Path, options: FootageOptions = FootageOptions()) -> list[Tracklet]:
    """Draw the footage, its ground truth and the ground-truth tracklets into ``root`` (see the module docstring).

    Returns:
        The ground-truth tracklets, with absolute paths under ``root``.
    Raises:
        DataError: when ``root`` exists and is not an empty folder, or an option is impossible.
    """
    root = Path(root).resolve()
    check_options(options)
    check_empty(root)
    looks = sample_appearances(options.walkers, options.seed)
    walks = plan_walks(options)
    written: list[Tracklet] = []
    with drawing_into(root) as temp:
        for camid in display.progress(range(options.cameras), "Drawing synthetic footage", unit="cameras"):
            footage = render_camera(camid, [w for w in walks if w.camid == camid], looks, options=options)
            folder = Path("footage", f"cam{camid}")
            write_video(footage.frames, temp / folder / f"cam{camid}.mp4", fps=FOOTAGE_FPS)
            write_gt(footage.truth, temp / folder / "gt.txt")
            written += _write_tracklets(footage, camid, into=temp, root=root, options=options)
    logger.info("drew %d cameras and %d ground-truth tracklets into %s", options.cameras, len(written), root)
    return written
