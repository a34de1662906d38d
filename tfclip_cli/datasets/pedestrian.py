"""Drawn pedestrians: an identity's appearance and the drawing of one person in one pose.

Shared by the synthetic tracklet dataset (:mod:`synthetic`) and the synthetic camera footage
(:mod:`synthetic_footage`): both draw the same people, so a model trained on one recognises them in the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import ImageDraw

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


def pick(rng: np.random.Generator, items: tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity's appearance from the shared palettes."""
    top = pick(rng, CLOTHING)
    pattern_colour = pick(rng, tuple(c for c in CLOTHING if c != top))
    return Appearance(
        skin=pick(rng, SKIN),
        hair=pick(rng, HAIR),
        hair_style=pick(rng, HAIR_STYLES),
        top=top,
        pattern=pick(rng, PATTERNS),
        pattern_colour=pattern_colour,
        logo=pick(rng, LOGOS),
        long_sleeves=bool(rng.random() < 0.5),
        bottom=pick(rng, BOTTOMS),
        bottom_kind=pick(rng, BOTTOM_KINDS),
        shoes=pick(rng, SHOES),
        accessory=pick(rng, ACCESSORIES),
        accessory_colour=pick(rng, CLOTHING),
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

@dataclass(frozen=True)
class Body:
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


def _limb(draw: ImageDraw.ImageDraw, body: Body, points: list[tuple[float, float]], *, colours: list[RGB],
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


def _draw_top(draw: ImageDraw.ImageDraw, body: Body, look: Appearance, *, half_width: float, shows_logo: bool) -> None:
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


def _draw_head(draw: ImageDraw.ImageDraw, body: Body, look: Appearance, *, view: View) -> None:
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


def _draw_accessory(draw: ImageDraw.ImageDraw, body: Body, look: Appearance, *, view: View) -> None:
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


def _draw_frontal(draw: ImageDraw.ImageDraw, body: Body, look: Appearance, *, view: View) -> None:
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


def _draw_side(draw: ImageDraw.ImageDraw, body: Body, look: Appearance) -> None:
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


def draw_person(draw: ImageDraw.ImageDraw, body: Body, look: Appearance, *, view: View) -> None:
    """One person in pose ``body`` seen from ``view``, drawn onto ``draw``."""
    if view == "side":
        _draw_side(draw, body, look)
    else:
        _draw_frontal(draw, body, look, view=view)
