"""The embedded synthetic video ReID dataset: procedurally drawn pedestrians seen by a few cameras.

It is the project's default data: the demo, the tests and the benchmarks run on it. Each identity keeps a stable
appearance (skin and hair, hair style, top colour and pattern, bottom, shoes, accessory, height and build); each
camera changes the background, illumination and colour cast, scale, blur, noise and the usual viewpoint. Identity
colours come from a small palette, so many identities share them and differ by pattern, shape and accessories: a
colour histogram cannot solve the task, a model that sees shapes can learn it.

The tree is written in the ``folder`` layout, ``ROOT/<split>/<pid>/<camid>/<tracklet>``, where a tracklet is an
MPEG-4 ``tNN.mp4`` video or a ``tNN/`` folder of JPEG frames ``000000.jpg ...``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfclip_cli import display
from tfclip_cli.datasets.pedestrian import (
    CLOTHING,
    RGB,
    VIEWS,
    Appearance,
    Body,
    View,
    draw_person,
    pick,
    sample_appearances,
)
from tfclip_cli.errors import DataError
from tfclip_cli.tables import reporting_write_errors, umask_mode

logger = logging.getLogger(__name__)

# Camera looks: per-channel gain (colour cast and illumination), additive offset and gamma.
CASTS: tuple[tuple[tuple[float, float, float], float, float], ...] = (
    ((1.28, 1.02, 0.70), 0.0, 1.0),  # warm sodium light
    ((0.74, 0.96, 1.32), 0.0, 1.1),  # cold blue shade
    ((0.86, 1.18, 0.84), 8.0, 0.9),  # green fluorescent
    ((0.62, 0.60, 0.66), 0.0, 1.25),  # dim, dark corridor
    ((1.05, 1.05, 1.08), 45.0, 0.8),  # washed-out daylight
    ((1.15, 0.82, 1.10), 0.0, 1.0),  # magenta tint
)
FPS = 25
WALK_PERIOD = (14, 22)  # frames per walking cycle


@dataclass(frozen=True)
class SyntheticOptions:
    """What to generate; the defaults draw a small benchmark in a few seconds on 2 cores."""

    identities: int = 60  # identities with query/gallery or training tracklets
    cameras: int = 3  # cameras; each sees every identity
    tracklets_per_camera: int = 1  # tracklets per identity per camera
    train_fraction: float = 0.5  # share of the identities used for training (the rest are test ids)
    distractors: int = 5  # gallery-only identities, numbered after the real ones
    image_size: tuple[int, int] = (256, 128)  # (height, width) of every frame; both even (yuv420p video needs it)
    min_frames: int = 12  # shortest tracklet
    max_frames: int = 64  # longest tracklet
    video_fraction: float = 1 / 3  # share of tracklets written as .mp4 videos instead of JPEG folders
    seed: int = 0  # one seed fixes every pixel


@dataclass(frozen=True)
class CameraStyle:
    """How a camera renders people: background, colour, scale, blur, noise and its usual viewpoint."""

    background: Image.Image  # texture the crop slides over: world width plus one frame width repeated
    world_width: int  # period of the texture, in pixels
    gain: tuple[float, float, float]
    offset: float
    gamma: float
    scale: float  # person height as a share of the frame height
    blur: float  # Gaussian blur radius as a share of the frame height
    noise: np.ndarray  # int16 pool of Gaussian sensor noise, two frames long, sliced at random offsets
    view: View


@dataclass(frozen=True)
class TrackletPlan:
    """One tracklet to draw: who, where, which split, how long and how it is stored."""

    pid: int
    camid: int
    index: int
    split: Literal["train", "query", "gallery"]
    num_frames: int
    is_video: bool

    def relative_path(self) -> Path:
        name = f"t{self.index:02d}" + (".mp4" if self.is_video else "")
        return Path(self.split, f"{self.pid:04d}", str(self.camid), name)


def _wall(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Brick, panelled or leafy texture [height, width, 3] float."""
    base = rng.uniform(60, 200, size=3)
    y, x = np.mgrid[0:height, 0:width]
    kind = int(rng.integers(3))
    if kind == 0:  # bricks with mortar
        brick_h = max(2, height // int(rng.integers(6, 10)))
        row = y // brick_h
        shift = (row % 2) * brick_h
        brick = (row * 7919 + (x + shift) // (2 * brick_h) * 104729) % 13 / 13.0
        mortar = ((y % brick_h) < max(1, brick_h // 6)) | (((x + shift) % (2 * brick_h)) < max(1, brick_h // 6))
        shade = 0.8 + 0.35 * brick[..., None]
        return np.where(mortar[..., None], 200.0, base * shade)
    if kind == 1:  # shop-front panels and windows
        panel_w = max(4, width // int(rng.integers(6, 12)))
        window = ((x % panel_w) > panel_w // 5) & ((y % max(4, height // 2)) > height // 10)
        return np.where(window[..., None], base * 0.45 + 40, base)
    noise = rng.normal(0, 1, size=(height // 4 + 1, width // 4 + 1))
    smooth = np.kron(noise, np.ones((4, 4)))[:height, :width]
    return base * (0.85 + 0.2 * np.tanh(smooth))[..., None]


def _ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tiled, striped or asphalt ground texture [height, width, 3] float."""
    base = rng.uniform(70, 190, size=3)
    y, x = np.mgrid[0:height, 0:width]
    kind = int(rng.integers(3))
    if kind == 0:  # square tiles
        tile = max(3, width // int(rng.integers(10, 20)))
        lines = ((x % tile) == 0) | ((y % tile) == 0)
        return np.where(lines[..., None], base * 0.6, base)
    if kind == 1:  # crossing stripes
        stripe = max(3, width // int(rng.integers(12, 24)))
        return np.where(((x // stripe) % 2 == 0)[..., None], np.full(3, 215.0), base * 0.55)
    grain = rng.normal(0, 12, size=(height, width, 1))
    return base * 0.8 + grain


def sample_camera(camid: int, *, seed: int, image_size: tuple[int, int], supersample: int) -> CameraStyle:
    """Draw camera ``camid``'s look for frames of ``image_size`` (height, width); cameras take distinct colour casts
    and cycle through the viewpoints."""
    rng = np.random.default_rng([seed, 2, camid])
    cast_order = np.random.default_rng([seed, 3]).permutation(len(CASTS))
    gain, offset, gamma = CASTS[int(cast_order[camid % len(CASTS)])]
    height, width = (side * supersample for side in image_size)
    world_width = 4 * width
    horizon = int(height * rng.uniform(0.45, 0.7))
    texture = np.concatenate([_wall(rng, horizon, world_width), _ground(rng, height - horizon, world_width)], axis=0)
    periodic = np.concatenate([texture, texture[:, :width]], axis=1)  # a crop never needs to wrap around
    jitter = rng.uniform(0.9, 1.1, size=3)
    pool_size = 2 * image_size[0] * image_size[1] * 3
    return CameraStyle(
        background=Image.fromarray(np.clip(periodic, 0, 255).astype(np.uint8)),
        world_width=world_width,
        gain=tuple(float(g) for g in np.asarray(gain) * jitter),
        offset=offset,
        gamma=gamma,
        scale=float(rng.uniform(0.74, 0.94)),
        blur=float(rng.uniform(0.0, 0.008)),
        noise=np.round(rng.normal(0.0, rng.uniform(2.0, 9.0), size=pool_size)).astype(np.int16),
        view=VIEWS[camid % len(VIEWS)],
    )


def _split_of(pid: int, camid: int, index: int, *, query_camid: int, options: SyntheticOptions) -> str:
    """Train ids → train; distractors → gallery; test ids: one camera → query, the others → gallery."""
    if pid < round(options.identities * options.train_fraction):
        return "train"
    if pid >= options.identities:
        return "gallery"
    if options.cameras > 1:
        return "query" if camid == query_camid else "gallery"
    return "query" if index == 0 else "gallery"  # one camera: its first tracklet is the query


def plan_tracklets(options: SyntheticOptions) -> list[TrackletPlan]:
    """Every tracklet of the dataset, deterministic for ``options.seed``; about ``video_fraction`` are videos."""
    rng = np.random.default_rng([options.seed, 4])
    places = []
    for pid in range(options.identities + options.distractors):
        query_camid = int(rng.integers(options.cameras))
        for camid in range(options.cameras):
            for index in range(options.tracklets_per_camera):
                split = _split_of(pid, camid, index, query_camid=query_camid, options=options)
                places.append((pid, camid, index, split))
    lengths = rng.integers(options.min_frames, options.max_frames + 1, size=len(places))
    is_video = np.zeros(len(places), dtype=bool)
    is_video[rng.permutation(len(places))[: round(len(places) * options.video_fraction)]] = True
    return [
        TrackletPlan(pid=p, camid=c, index=i, split=s, num_frames=int(n), is_video=bool(v))
        for (p, c, i, s), n, v in zip(places, lengths, is_video)
    ]


@dataclass(frozen=True)
class _Motion:
    """How one tracklet moves: viewpoint, gait, drift, box jitter, light and occlusion."""

    view: View
    facing: int  # +1 walks to the right, -1 to the left (side view)
    phase: float  # walking phase of the first frame, radians
    period: float  # frames per walking cycle
    drift: tuple[float, float]  # person centre at the first and last frame, share of the width
    background_start: int  # first column of the camera texture
    background_speed: float  # texture columns per frame, opposite to the walk
    illumination: float  # per-tracklet light factor around the camera's
    jitter: np.ndarray  # [T, 3] box offsets (x, y as shares of the size) and scale
    occluder: tuple[str, float, float, RGB] | None  # kind, position, size, colour


def _sample_motion(rng: np.random.Generator, camera: CameraStyle, num_frames: int) -> _Motion:
    view = camera.view if rng.random() < 0.7 else pick(rng, VIEWS)
    facing = 1 if rng.random() < 0.5 else -1
    occluder = None
    if rng.random() < 0.25:
        kind = "low" if rng.random() < 0.6 else "pole"
        size = rng.uniform(0.2, 0.38) if kind == "low" else rng.uniform(0.12, 0.22)
        occluder = (kind, float(rng.uniform(0.0, 1.0)), float(size), pick(rng, CLOTHING))
    return _Motion(
        view=view,
        facing=facing,
        phase=float(rng.uniform(0, 2 * math.pi)),
        period=float(rng.uniform(*WALK_PERIOD)),
        drift=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        background_start=int(rng.integers(camera.world_width)),
        background_speed=float(rng.uniform(1.0, 3.0)) * (-facing if view == "side" else rng.choice([-0.3, 0.3])),
        illumination=float(rng.uniform(0.88, 1.12)),
        jitter=rng.normal(0.0, [0.012, 0.012, 0.02], size=(num_frames, 3)),
        occluder=occluder,
    )


def _draw_occluder(draw: ImageDraw.ImageDraw, occluder: tuple[str, float, float, RGB], *, size: tuple[int, int],
                   shift: float) -> None:
    """A low wall or car bonnet across the bottom, or a pole that slides with the background."""
    kind, position, extent, colour = occluder
    height, width = size
    if kind == "low":
        top = height * (1 - extent)
        draw.rectangle([0, top, width, height], fill=colour)
        draw.rectangle([0, top, width, top + height * 0.02], fill=tuple(min(255, c + 60) for c in colour))
        return
    left = (position * width - shift) % (1.6 * width) - 0.3 * width
    draw.rectangle([left, 0, left + extent * width, height], fill=colour)


def colour_table(camera: CameraStyle, illumination: float) -> list[int]:
    """The camera's gamma, colour cast and ``illumination`` as a 768-entry lookup table for ``Image.point``."""
    levels = np.power(np.arange(256) / 255.0, camera.gamma) * 255.0
    light = np.asarray(camera.gain) * illumination
    table = np.clip(levels[None, :] * light[:, None] + camera.offset, 0, 255)
    return [int(v) for v in np.round(table).reshape(-1)]


def add_noise(image: Image.Image, camera: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise sliced from the camera's pool at a random offset; uint8 [H, W, 3]."""
    pixels = np.asarray(image).astype(np.int16)
    start = int(rng.integers(camera.noise.size - pixels.size + 1))
    pixels += camera.noise[start : start + pixels.size].reshape(pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _render_frame(t: int, look: Appearance, camera: CameraStyle, *, motion: _Motion, options: SyntheticOptions,
                  supersample: int, colours: list[int], rng: np.random.Generator) -> np.ndarray:
    """Frame ``t`` of a tracklet as uint8 [H, W, 3]: drawn at ``supersample`` times the size, then reduced."""
    height, width = (side * supersample for side in options.image_size)
    shift = motion.background_start + motion.background_speed * t * supersample
    left = int(shift) % camera.world_width
    canvas = camera.background.crop((left, 0, left + width, height))
    draw = ImageDraw.Draw(canvas)
    dx, dy, ds = motion.jitter[t]
    progress_share = t / max(1, len(motion.jitter) - 1)
    centre = 0.5 + motion.drift[0] + (motion.drift[1] - motion.drift[0]) * progress_share + dx
    phase = motion.phase + 2 * math.pi * t / motion.period
    unit = height * camera.scale * look.height * (1 + ds)
    bob = 0.012 * unit * abs(math.cos(phase))
    body = Body(
        cx=centre * width,
        top=height * (0.5 + dy + camera.scale / 2) - unit - bob,  # feet on one line: short people look short
        unit=unit,
        mirror=motion.facing if motion.view == "side" else (1 if motion.view == "front" else -1),
        swing=math.sin(phase),
        build=look.build,
    )
    draw_person(draw, body, look, view=motion.view)
    if motion.occluder is not None:
        _draw_occluder(draw, motion.occluder, size=(height, width), shift=shift - motion.background_start)
    image = canvas.reduce(supersample) if supersample > 1 else canvas
    if camera.blur * options.image_size[0] >= 0.3:
        image = image.filter(ImageFilter.BoxBlur(camera.blur * options.image_size[0]))
    return add_noise(image.point(colours), camera, rng)


def render_tracklet(plan: TrackletPlan, look: Appearance, camera: CameraStyle, *, options: SyntheticOptions,
                    supersample: int) -> list[np.ndarray]:
    """All frames of one tracklet, uint8 [H, W, 3] each, deterministic for the seed and the tracklet."""
    rng = np.random.default_rng([options.seed, 5, plan.pid, plan.camid, plan.index])
    motion = _sample_motion(rng, camera, plan.num_frames)
    colours = colour_table(camera, motion.illumination)
    return [
        _render_frame(t, look, camera, motion=motion, options=options, supersample=supersample, colours=colours,
                      rng=rng)
        for t in range(plan.num_frames)
    ]


def write_frames(frames: list[np.ndarray], folder: Path) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:06d}.jpg", quality=92)


def write_video(frames: list[np.ndarray], path: Path, *, fps: int = FPS) -> None:
    """Encode frames as an MPEG-4 Part 2 .mp4 whose bytes depend on the frames alone.

    MPEG-4 rather than H.264: the first libx264 encode of a process was seen to give other bytes than later ones for
    the same frames (PyAV 18, x264 core 165), which would make the dataset depend on what ran before. Single-threaded
    and bitexact (no creation time); a keyframe every 12 frames keeps reading a few frames cheap.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps, options={"qscale": "3"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.gop_size = 12
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def _check_options(options: SyntheticOptions) -> None:
    """Raises DataError naming the first option that cannot give a usable dataset."""
    height, width = options.image_size
    problems = [
        (options.identities < 2, f"identities={options.identities}: expected at least 2"),
        (options.cameras < 1 or options.tracklets_per_camera < 1, "cameras and tracklets_per_camera must be ≥ 1"),
        (options.cameras * options.tracklets_per_camera < 2,
         "cameras × tracklets_per_camera must be ≥ 2, so a test id has a query and a gallery tracklet"),
        (not 0 < round(options.identities * options.train_fraction) < options.identities,
         f"train_fraction={options.train_fraction}: expected at least one train and one test identity"),
        (options.distractors < 0, f"distractors={options.distractors}: expected ≥ 0"),
        (height % 2 or width % 2 or height < 16 or width < 16,
         f"image_size={options.image_size}: expected even (height, width), each ≥ 16 (yuv420p video needs even sizes)"),
        (not 1 <= options.min_frames <= options.max_frames,
         f"min_frames={options.min_frames}, max_frames={options.max_frames}: expected 1 ≤ min_frames ≤ max_frames"),
        (not 0.0 <= options.video_fraction <= 1.0, f"video_fraction={options.video_fraction}: expected 0..1"),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"synthetic dataset option {message}")


@contextlib.contextmanager
def drawing_into(root: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``root`` that becomes ``root`` when the block succeeds.

    An interrupted drawing so leaves nothing behind; the folder gets the permissions the umask gives any new folder,
    and a full disk or read-only folder is one OutputError naming ROOT.
    """
    with reporting_write_errors(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            os.chmod(temp, umask_mode(0o777))
            yield temp
            if root.exists():
                root.rmdir()
            temp.rename(root)
        finally:
            shutil.rmtree(temp, ignore_errors=True)


def check_empty(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root} is not an empty folder: the synthetic dataset is written into a new or empty ROOT",
            hint="choose another ROOT, or delete this one first",
        )


def generate_synthetic(root: Path, options: SyntheticOptions = SyntheticOptions()) -> None:
    """Draw the synthetic dataset into ``root`` in the ``folder`` layout.

    The tree is drawn in a temporary sibling folder and moved into place at the end, so an interrupted run leaves
    nothing behind.

    Raises:
        DataError: when ``root`` exists and is not an empty folder, or an option is impossible.
        OutputError: when the tree cannot be written (no space, read-only), naming ``root``.
    """
    root = Path(root)
    _check_options(options)
    check_empty(root)
    supersample = 2 if options.image_size[0] < 512 else 1  # smooth edges for small frames, cheap at this size
    looks = sample_appearances(options.identities + options.distractors, options.seed)
    cameras = [
        sample_camera(camid, seed=options.seed, image_size=options.image_size, supersample=supersample)
        for camid in range(options.cameras)
    ]
    plans = plan_tracklets(options)
    with drawing_into(root) as temp:
        for plan in display.progress(plans, "Drawing synthetic tracklets", unit="tracklets"):
            frames = render_tracklet(plan, looks[plan.pid], cameras[plan.camid], options=options,
                                     supersample=supersample)
            target = temp / plan.relative_path()
            if plan.is_video:
                write_video(frames, target)
            else:
                write_frames(frames, target)
    logger.info("wrote %d synthetic tracklets into %s", len(plans), root)
