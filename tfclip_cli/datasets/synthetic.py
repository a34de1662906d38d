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

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfclip_cli import display
from tfclip_cli.errors import DataError
from tfclip_cli.tables import reporting_write_errors, umask_mode

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
View = Literal["front", "back", "side"]

# Small shared palettes: many identities wear the same colours and differ by pattern, shape and accessories.
CLOTHING: tuple[RGB, ...] = (
    (28, 28, 32),  # black
    (222, 222, 215),  # white
    (125, 125, 128),  # grey
    (36, 48, 104),  # navy
    (172, 38, 42),  # red
    (58, 108, 178),  # blue
    (52, 118, 64),  # green
    (196, 172, 128),  # beige
)
BOTTOMS: tuple[RGB, ...] = ((28, 28, 32), (48, 66, 110), (110, 110, 112), (186, 164, 122))
SHOES: tuple[RGB, ...] = ((20, 20, 22), (230, 230, 228), (96, 62, 38))
SKIN: tuple[RGB, ...] = ((241, 200, 170), (224, 172, 130), (190, 134, 94), (140, 92, 62), (92, 60, 42))
HAIR: tuple[RGB, ...] = ((22, 18, 16), (66, 42, 26), (120, 80, 44), (206, 170, 102), (150, 150, 150))
PATTERNS = ("solid", "stripes", "checks", "logo", "two_tone")
LOGOS = ("circle", "triangle", "diamond", "bar")
HAIR_STYLES = ("short", "long", "ponytail", "cap", "bald")
BOTTOM_KINDS = ("trousers", "shorts", "skirt")
ACCESSORIES = ("none", "backpack", "shoulder_bag", "handbag")
VIEWS: tuple[View, ...] = ("front", "back", "side")
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
class Appearance:
    """What an identity looks like, in every camera."""

    skin: RGB
    hair: RGB
    hair_style: str
    top: RGB
    pattern: str
    pattern_colour: RGB
    logo: str
    long_sleeves: bool
    bottom: RGB
    bottom_kind: str
    shoes: RGB
    accessory: str
    accessory_colour: RGB
    height: float  # share of the camera's person height, 0.86..1
    build: float  # width factor, 0.82..1.22


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


def _pick(rng: np.random.Generator, items: tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity's appearance from the shared palettes."""
    top = _pick(rng, CLOTHING)
    pattern_colour = _pick(rng, tuple(c for c in CLOTHING if c != top))
    return Appearance(
        skin=_pick(rng, SKIN),
        hair=_pick(rng, HAIR),
        hair_style=_pick(rng, HAIR_STYLES),
        top=top,
        pattern=_pick(rng, PATTERNS),
        pattern_colour=pattern_colour,
        logo=_pick(rng, LOGOS),
        long_sleeves=bool(rng.random() < 0.5),
        bottom=_pick(rng, BOTTOMS),
        bottom_kind=_pick(rng, BOTTOM_KINDS),
        shoes=_pick(rng, SHOES),
        accessory=_pick(rng, ACCESSORIES),
        accessory_colour=_pick(rng, CLOTHING),
        height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.82, 1.22)),
    )


def _signature(appearance: Appearance) -> tuple:
    """The discrete cues that make identities tell apart."""
    a = appearance
    logo = a.logo if a.pattern == "logo" else ""
    return (a.top, a.pattern, a.pattern_colour, logo, a.bottom, a.bottom_kind, a.hair_style, a.accessory)


def sample_appearances(count: int, seed: int) -> list[Appearance]:
    """``count`` appearances with pairwise different discrete cues, deterministic for ``seed``."""
    rng = np.random.default_rng([seed, 1])
    found: list[Appearance] = []
    seen: set[tuple] = set()
    while len(found) < count:
        appearance = sample_appearance(rng)
        if _signature(appearance) not in seen:
            seen.add(_signature(appearance))
            found.append(appearance)
    return found


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


def sample_camera(camid: int, options: SyntheticOptions, *, supersample: int) -> CameraStyle:
    """Draw camera ``camid``'s look; cameras take distinct colour casts and cycle through the viewpoints."""
    rng = np.random.default_rng([options.seed, 2, camid])
    cast_order = np.random.default_rng([options.seed, 3]).permutation(len(CASTS))
    gain, offset, gamma = CASTS[int(cast_order[camid % len(CASTS)])]
    height, width = (side * supersample for side in options.image_size)
    world_width = 4 * width
    horizon = int(height * rng.uniform(0.45, 0.7))
    texture = np.concatenate([_wall(rng, horizon, world_width), _ground(rng, height - horizon, world_width)], axis=0)
    periodic = np.concatenate([texture, texture[:, :width]], axis=1)  # a crop never needs to wrap around
    jitter = rng.uniform(0.9, 1.1, size=3)
    pool_size = 2 * options.image_size[0] * options.image_size[1] * 3
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
    view = camera.view if rng.random() < 0.7 else _pick(rng, VIEWS)
    facing = 1 if rng.random() < 0.5 else -1
    occluder = None
    if rng.random() < 0.25:
        kind = "low" if rng.random() < 0.6 else "pole"
        size = rng.uniform(0.2, 0.38) if kind == "low" else rng.uniform(0.12, 0.22)
        occluder = (kind, float(rng.uniform(0.0, 1.0)), float(size), _pick(rng, CLOTHING))
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


@dataclass(frozen=True)
class _Body:
    """One frame's pose in pixels: body coordinates are shares of the person height, x from the centre line."""

    cx: float
    top: float
    unit: float  # person height in pixels
    mirror: int  # +1 front view; -1 back view; the facing direction in side view
    swing: float  # sin of the walking phase, -1..1
    build: float

    def at(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.unit * self.mirror, self.top + y * self.unit

    def box(self, corners: tuple[float, float, float, float]) -> list[float]:
        """Pixel box [left, top, right, bottom] of two opposite corners (x0, y0, x1, y1) in body coordinates."""
        (ax, ay), (bx, by) = self.at(*corners[:2]), self.at(*corners[2:])
        return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]

    def width(self, share: float) -> int:
        return max(1, round(share * self.unit))


def _limb(draw: ImageDraw.ImageDraw, body: _Body, points: list[tuple[float, float]], *, colours: list[RGB],
          thick: float) -> None:
    """A limb of straight segments, each in its colour, with round joints."""
    width = body.width(thick)
    pixels = [body.at(x, y) for x, y in points]
    for start, end, colour in zip(pixels, pixels[1:], colours):
        draw.line([start, end], fill=colour, width=width)
        x, y = end
        draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=colour)


def _leg_colours(look: Appearance) -> list[RGB]:
    """Colours of the thigh and the shin."""
    if look.bottom_kind == "trousers":
        return [look.bottom, look.bottom]
    if look.bottom_kind == "shorts":
        return [look.bottom, look.skin]
    return [look.skin, look.skin]


def _arm_colours(look: Appearance) -> list[RGB]:
    return [look.top, look.top if look.long_sleeves else look.skin]


def _draw_top(draw: ImageDraw.ImageDraw, body: _Body, look: Appearance, *, half_width: float, shows_logo: bool) -> None:
    """The torso with the identity's pattern."""
    x0, y0, x1, y1 = body.box((-half_width, 0.155, half_width, 0.52))
    draw.rectangle([x0, y0, x1, y1], fill=look.top)
    w, h = x1 - x0, y1 - y0
    if look.pattern == "stripes":
        for band in range(1, 7, 2):
            draw.rectangle([x0, y0 + band * h / 7, x1, y0 + (band + 1) * h / 7], fill=look.pattern_colour)
    elif look.pattern == "checks":
        for row in range(6):
            for col in range(row % 2, 4, 2):
                cell = [x0 + col * w / 4, y0 + row * h / 6, x0 + (col + 1) * w / 4, y0 + (row + 1) * h / 6]
                draw.rectangle(cell, fill=look.pattern_colour)
    elif look.pattern == "two_tone":
        draw.rectangle([x0, y0, x1, y0 + 0.45 * h], fill=look.pattern_colour)
    elif look.pattern == "logo" and shows_logo:
        _draw_logo(draw, look, centre=(x0 + w / 2, y0 + 0.38 * h), size=0.22 * body.unit * half_width / 0.13)


def _draw_logo(draw: ImageDraw.ImageDraw, look: Appearance, *, centre: tuple[float, float], size: float) -> None:
    x, y, r = centre[0], centre[1], size / 2
    colour = look.pattern_colour
    if look.logo == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif look.logo == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    elif look.logo == "diamond":
        draw.polygon([(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)], fill=colour)
    else:
        draw.rectangle([x - r * 1.2, y - r * 0.35, x + r * 1.2, y + r * 0.35], fill=colour)


def _draw_head(draw: ImageDraw.ImageDraw, body: _Body, look: Appearance, *, view: View) -> None:
    """Neck, head and hair; the face shows from the front and the side, hair covers the back of the head."""
    draw.rectangle(body.box((-0.022, 0.11, 0.022, 0.17)), fill=look.skin)
    face_x = 0.012 if view == "side" else 0.0
    if look.hair_style == "long":
        draw.rectangle(body.box((-0.058, 0.06, 0.058 if view != "side" else 0.0, 0.23)), fill=look.hair)
    if look.hair_style == "ponytail" and view != "front":
        tail_x = -0.055 if view == "side" else 0.0
        draw.ellipse(body.box((tail_x - 0.022, 0.07, tail_x + 0.022, 0.19)), fill=look.hair)
    head = body.box((-0.05, 0.01, 0.05, 0.14))
    hairy = look.hair_style not in ("bald", "cap")
    draw.ellipse(head, fill=look.hair if hairy else look.skin)
    if view != "back" or not hairy:
        lower = 0.03 if hairy else 0.01
        draw.ellipse(body.box((face_x - 0.045, lower, face_x + 0.045, 0.14)), fill=look.skin)
    if look.hair_style == "cap":
        draw.chord(body.box((-0.053, 0.0, 0.053, 0.1)), 180, 360, fill=look.accessory_colour)
        brim = (0.0, 0.09) if view == "side" else (-0.05, 0.05)
        if view != "back":
            draw.rectangle(body.box((brim[0], 0.045, brim[1], 0.058)), fill=look.accessory_colour)
    if view == "front":
        for eye in (-0.018, 0.018):
            draw.ellipse(body.box((eye - 0.006, 0.07, eye + 0.006, 0.082)), fill=(30, 24, 20))


def _draw_accessory(draw: ImageDraw.ImageDraw, body: _Body, look: Appearance, *, view: View) -> None:
    """Bags in front of the body; a backpack shows whole from the back, as straps from the front."""
    colour, b = look.accessory_colour, body.build
    if look.accessory == "backpack" and view == "back":
        draw.rounded_rectangle(body.box((-0.11 * b, 0.19, 0.11 * b, 0.45)), radius=body.width(0.02), fill=colour)
        draw.rectangle(body.box((-0.07 * b, 0.33, 0.07 * b, 0.43)), fill=tuple(int(c * 0.7) for c in colour))
    elif look.accessory == "backpack" and view == "front":
        for x in (-0.085 * b, 0.085 * b):
            draw.line([body.at(x, 0.16), body.at(x, 0.38)], fill=colour, width=body.width(0.022))
    elif look.accessory == "shoulder_bag":
        draw.line([body.at(-0.11 * b, 0.16), body.at(0.12 * b, 0.47)], fill=colour, width=body.width(0.016))
        draw.rectangle(body.box((0.1 * b, 0.44, 0.22 * b, 0.56)), fill=colour)
    elif look.accessory == "handbag":
        hand_x = 0.17 * b if view != "side" else 0.32 * body.swing * 0.42
        draw.rectangle(body.box((hand_x - 0.04, 0.5, hand_x + 0.04, 0.6)), fill=colour)


def _draw_frontal(draw: ImageDraw.ImageDraw, body: _Body, look: Appearance, *, view: View) -> None:
    """A person seen from the front or the back: legs lift in turn, arms swing a little."""
    b, s = body.build, body.swing
    legs = _leg_colours(look)
    draw.rectangle(body.box((-0.115 * b, 0.48, 0.115 * b, 0.56)), fill=look.bottom)
    for side, lift in ((-1, max(0.0, s)), (1, max(0.0, -s))):
        hip, foot = (side * 0.055 * b, 0.53), (side * 0.06 * b, 0.955 - 0.035 * lift)
        knee = ((hip[0] + foot[0]) / 2, (hip[1] + foot[1]) / 2)
        _limb(draw, body, [hip, knee, foot], colours=legs, thick=0.075 * b)
        draw.ellipse(body.box((foot[0] - 0.04, foot[1] - 0.01, foot[0] + 0.04, foot[1] + 0.03)), fill=look.shoes)
    if look.bottom_kind == "skirt":
        draw.polygon([body.at(-0.115 * b, 0.5), body.at(0.115 * b, 0.5), body.at(0.16 * b, 0.74),
                      body.at(-0.16 * b, 0.74)], fill=look.bottom)
    _draw_top(draw, body, look, half_width=0.13 * b, shows_logo=view == "front")
    for side in (-1, 1):
        shoulder = (side * 0.15 * b, 0.18)
        hand = (side * (0.17 * b), 0.5 + 0.02 * side * s)
        elbow = ((shoulder[0] + hand[0]) / 2 + side * 0.008, 0.34)
        _limb(draw, body, [shoulder, elbow, hand], colours=_arm_colours(look), thick=0.055 * b)
        draw.ellipse(body.box((hand[0] - 0.022, hand[1] - 0.01, hand[0] + 0.022, hand[1] + 0.035)), fill=look.skin)
    _draw_accessory(draw, body, look, view=view)
    _draw_head(draw, body, look, view=view)


def _draw_side(draw: ImageDraw.ImageDraw, body: _Body, look: Appearance) -> None:
    """A person seen from the side, walking towards ``body.mirror``: legs and arms swing in opposite phase."""
    b, s = body.build, body.swing
    half = 0.075 * b

    def walk_limbs(sign: int, shade: float) -> tuple[tuple[float, float], list[RGB]]:
        angle = 0.42 * s * sign
        foot = (0.43 * math.sin(angle), 0.53 + 0.43 * math.cos(angle))
        knee = (foot[0] / 2 + 0.02, (0.53 + foot[1]) / 2)
        dim = [tuple(int(c * shade) for c in colour) for colour in _leg_colours(look)]
        _limb(draw, body, [(0.0, 0.53), knee, foot], colours=dim, thick=0.08 * b)
        shoe = tuple(int(c * shade) for c in look.shoes)
        draw.ellipse(body.box((foot[0] - 0.03, foot[1] - 0.012, foot[0] + 0.06, foot[1] + 0.028)), fill=shoe)
        hand = (0.3 * math.sin(-angle), 0.18 + 0.3 * math.cos(angle))
        arm = [tuple(int(c * shade) for c in colour) for colour in _arm_colours(look)]
        return hand, arm

    far_hand, far_arm = walk_limbs(-1, 0.75)
    _limb(draw, body, [(0.0, 0.18), far_hand], colours=far_arm[:1], thick=0.055 * b)
    near_hand, near_arm = walk_limbs(1, 1.0)
    if look.accessory == "backpack":
        draw.rounded_rectangle(body.box((-half - 0.08, 0.19, -half + 0.01, 0.44)), radius=body.width(0.02),
                               fill=look.accessory_colour)
    if look.bottom_kind == "skirt":
        draw.polygon([body.at(-half, 0.5), body.at(half, 0.5), body.at(half + 0.05, 0.74),
                      body.at(-half - 0.05, 0.74)], fill=look.bottom)
    if look.bottom_kind != "skirt":
        draw.rectangle(body.box((-half, 0.48, half, 0.57)), fill=look.bottom)
    _draw_top(draw, body, look, half_width=half, shows_logo=False)
    elbow = (near_hand[0] / 2, (0.18 + near_hand[1]) / 2)
    _limb(draw, body, [(0.0, 0.18), elbow, near_hand], colours=near_arm, thick=0.055 * b)
    if look.accessory in ("shoulder_bag", "handbag"):
        _draw_accessory(draw, body, look, view="side")
    _draw_head(draw, body, look, view="side")


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


def _colour_table(camera: CameraStyle, motion: _Motion) -> list[int]:
    """The camera's gamma, colour cast and illumination as a 768-entry lookup table for ``Image.point``."""
    levels = np.power(np.arange(256) / 255.0, camera.gamma) * 255.0
    light = np.asarray(camera.gain) * motion.illumination
    table = np.clip(levels[None, :] * light[:, None] + camera.offset, 0, 255)
    return [int(v) for v in np.round(table).reshape(-1)]


def _add_noise(image: Image.Image, camera: CameraStyle, rng: np.random.Generator) -> np.ndarray:
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
    body = _Body(
        cx=centre * width,
        top=height * (0.5 + dy + camera.scale / 2) - unit - bob,  # feet on one line: short people look short
        unit=unit,
        mirror=motion.facing if motion.view == "side" else (1 if motion.view == "front" else -1),
        swing=math.sin(phase),
        build=look.build,
    )
    if motion.view == "side":
        _draw_side(draw, body, look)
    else:
        _draw_frontal(draw, body, look, view=motion.view)
    if motion.occluder is not None:
        _draw_occluder(draw, motion.occluder, size=(height, width), shift=shift - motion.background_start)
    image = canvas.reduce(supersample) if supersample > 1 else canvas
    if camera.blur * options.image_size[0] >= 0.3:
        image = image.filter(ImageFilter.BoxBlur(camera.blur * options.image_size[0]))
    return _add_noise(image.point(colours), camera, rng)


def render_tracklet(plan: TrackletPlan, look: Appearance, camera: CameraStyle, *, options: SyntheticOptions,
                    supersample: int) -> list[np.ndarray]:
    """All frames of one tracklet, uint8 [H, W, 3] each, deterministic for the seed and the tracklet."""
    rng = np.random.default_rng([options.seed, 5, plan.pid, plan.camid, plan.index])
    motion = _sample_motion(rng, camera, plan.num_frames)
    colours = _colour_table(camera, motion)
    return [
        _render_frame(t, look, camera, motion=motion, options=options, supersample=supersample, colours=colours,
                      rng=rng)
        for t in range(plan.num_frames)
    ]


def _write_frames(frames: list[np.ndarray], folder: Path) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:06d}.jpg", quality=92)


def _write_video(frames: list[np.ndarray], path: Path) -> None:
    """Encode frames as an MPEG-4 Part 2 .mp4 whose bytes depend on the frames alone.

    MPEG-4 rather than H.264: the first libx264 encode of a process was seen to give other bytes than later ones for
    the same frames (PyAV 18, x264 core 165), which would make the dataset depend on what ran before. Single-threaded
    and bitexact (no creation time); a keyframe every 12 frames keeps reading a few frames cheap.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=FPS, options={"qscale": "3"})
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


def _check_empty(root: Path) -> None:
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
    _check_empty(root)
    supersample = 2 if options.image_size[0] < 512 else 1  # smooth edges for small frames, cheap at this size
    looks = sample_appearances(options.identities + options.distractors, options.seed)
    cameras = [sample_camera(camid, options, supersample=supersample) for camid in range(options.cameras)]
    plans = plan_tracklets(options)
    with reporting_write_errors(root):  # a full disk or read-only folder is one OutputError naming ROOT
        root.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            os.chmod(temp, umask_mode(0o777))
            for plan in display.progress(plans, "Drawing synthetic tracklets", unit="tracklets"):
                frames = render_tracklet(plan, looks[plan.pid], cameras[plan.camid], options=options,
                                         supersample=supersample)
                target = temp / plan.relative_path()
                if plan.is_video:
                    _write_video(frames, target)
                else:
                    _write_frames(frames, target)
            if root.exists():
                root.rmdir()
            temp.rename(root)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    logger.info("wrote %d synthetic tracklets into %s", len(plans), root)
