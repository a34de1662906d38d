"""Synthetic camera footage with ground truth: a network of cameras that walkers cross, one after another.

Each camera films a static scene (the camera looks of :mod:`synthetic`) for ``frames`` frames at 10 frames/s,
starting at its own known time (whole seconds after ``NETWORK_START``). The cameras form a network: neighbours on a
line (closed into a ring from four cameras) are linked, each link with a range of transit seconds between leaving
one view and entering the next; some links join overlapping views (the walker enters the next view before leaving
the last: a negative transit). Every walker (an identity drawn by :mod:`pedestrian`) starts in one camera and
walks from camera to linked camera, up to ``MAX_VISITS`` views, so some visit only some cameras and some come back
to a camera later; a route ends where a view would outlast its camera's video. In a view, a walk goes across it
(seen from the side) or towards or away from the camera, at a depth that sets its size, some walkers stopping for
a while; walkers nearer the camera are drawn over farther ones, so crossings occlude. The tree::

    ROOT/footage/cam<N>/cam<N>_<YYYYMMDDTHHMMSS>.mp4   the video, named by its start (the file-name rule of
                                     footage.clock); MPEG-4, byte-identical for a seed, as synthetic.py writes them
    ROOT/footage/cam<N>/gt.txt       MOTChallenge ground truth: frame,id,x,y,w,h,1,-1,-1,-1 (id = the walker's pid,
                                     global over the network)
    ROOT/footage/mtmc_gt.txt         the whole network in the AI City Challenge multi-camera layout: space-separated
                                     ``camera_id obj_id frame_id xmin ymin width height xworld yworld`` (frames
                                     1-based, camera ids as the folder numbers, world coordinates -1: unknown)
    ROOT/footage/cameras.yaml        the camera graph, as ``tfclip link --cameras`` reads it (people.constraints)
    ROOT/tracklets/<split>/<pid>/<camid>/t<NN>/000000.jpg ...   the ground-truth crops, in the folder layout

Ground-truth boxes are the drawn person's exact extent, clipped to the frame; a walker counts as in view while at
least a quarter of its box is inside the frame. Its crops form one tracklet per visit (``t00``, ``t01`` for a
return), with absolute start and end times; the first visit of a walker seen more than once is the query, the
others are gallery. cameras.yaml gives each link's transit as the drawn range widened by ``EDGE_MARGIN_S`` at the
top: a walk starts and ends just outside the view, so the visible gap runs a little longer than the drawn transit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
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
from tfclip_cli.tables import FootageOrigin, Tracklet, atomic_output

logger = logging.getLogger(__name__)

FOOTAGE_FPS = 10  # a typical surveillance frame rate
DEPTH_FORESHORTENING = 3.0  # walking towards the camera moves the feet this many times less on screen than across
MIN_INSIDE = 0.25  # share of a walker's box inside the frame for it to count as in view
PAUSE_SHARE = 0.4  # walkers who stop for 0.5-2 s on their way: people do, and constant-velocity tracking misses it
NETWORK_START = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc).timestamp()  # every network's first moment
MAX_START_OFFSET_S = 3  # cameras start recording 0..3 whole seconds after NETWORK_START (whole: file names say it)
MAX_VISITS = 4  # views a walker's route passes through at most
OVERLAP_SHARE = 0.3  # links between overlapping views (at least one from three cameras)
EDGE_MARGIN_S = 2.0  # cameras.yaml's max transit over the drawn one: walks begin and end just outside the view
CAMERA_GRAPH = "cameras.yaml"
MTMC_GT = "mtmc_gt.txt"


@dataclass(frozen=True)
class FootageOptions:
    """What footage to draw; the defaults give four cameras of 16 s each in a few seconds."""

    walkers: int = 8  # identities, each routed through the network (3-20, so scenes stay readable)
    cameras: int = 4  # cameras, each one video
    image_size: tuple[int, int] = (288, 384)  # (height, width) of the videos, both even
    frames: int = 160  # frames per video, at 10 frames/s
    seed: int = 0  # one seed fixes every pixel, the camera graph and the routes


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


@dataclass(frozen=True)
class CameraLink:
    """Two linked cameras and the transit drawn between their views, either way."""

    cameras: tuple[int, int]
    overlap: bool  # the views overlap: a walker enters the next one before leaving the last
    min_s: float  # seconds from leaving one view to entering the other (negative: in both at once)
    max_s: float


@dataclass(frozen=True)
class Network:
    """A drawn camera network: when each camera starts, how cameras are linked, and every walk through a view."""

    starts: tuple[float, ...]  # start of each camera's video, seconds since the epoch
    links: tuple[CameraLink, ...]
    walks: tuple[Walk, ...]  # by camera, then pid, then time


def _plan_links(cameras: int, rng: np.random.Generator) -> list[CameraLink]:
    """Neighbours on a line (a ring from four cameras), about ``OVERLAP_SHARE`` of them overlapping views."""
    pairs = [(c, c + 1) for c in range(cameras - 1)] + ([(0, cameras - 1)] if cameras >= 4 else [])
    overlapping = rng.random(len(pairs)) < OVERLAP_SHARE
    if cameras >= 3 and not overlapping.any():
        overlapping[rng.integers(len(pairs))] = True
    links = []
    for pair, overlap in zip(pairs, overlapping):
        low = -float(rng.uniform(2.0, 3.5)) if overlap else float(rng.uniform(1.0, 3.0))
        high = low + (1.5 if overlap else float(rng.uniform(2.0, 4.0)))
        links.append(CameraLink(pair, bool(overlap), round(low, 1), round(high, 1)))
    return links


def _route(rng: np.random.Generator, pid: int, *, links: list[CameraLink], offsets: list[int],
           options: FootageOptions) -> list[Walk]:
    """One walker's walks: from a random camera along random links, until ``MAX_VISITS`` views, a view that outlasts
    its video, or one that would begin less than a second before the video ends."""
    camid = int(rng.integers(options.cameras))
    walk = _sample_walk(rng, pid, camid, enter=0)
    walks = [replace(walk, enter=int(rng.integers(0, max(1, options.frames // 3))))]
    for _ in range(int(rng.integers(1, MAX_VISITS + 1)) - 1):
        last = walks[-1]
        if last.enter + last.duration + last.pause >= options.frames:  # still in view when the video ends
            break
        leave_s = offsets[last.camid] + (last.enter + last.duration + last.pause) / FOOTAGE_FPS
        choices = [link for link in links if last.camid in link.cameras]
        if not choices:
            break
        link = choices[int(rng.integers(len(choices)))]
        camid = link.cameras[1] if link.cameras[0] == last.camid else link.cameras[0]
        enter = round((leave_s + float(rng.uniform(link.min_s, link.max_s)) - offsets[camid]) * FOOTAGE_FPS)
        if enter >= options.frames - FOOTAGE_FPS:  # the camera stops before the walker would be seen
            break
        if any(w.camid == camid and w.enter + w.duration + w.pause + FOOTAGE_FPS > enter for w in walks):
            break  # back through two overlapping views to one still showing them: no one is in a view twice
        walks.append(_sample_walk(rng, pid, camid, enter=enter))  # before 0: in view when recording starts
    return walks


def plan_network(options: FootageOptions) -> Network:
    """The camera graph, the cameras' start times and every walker's route, deterministic for ``options.seed``."""
    rng = np.random.default_rng([options.seed, 6])
    offsets = [int(v) for v in rng.integers(0, MAX_START_OFFSET_S + 1, size=options.cameras)]
    links = _plan_links(options.cameras, rng)
    walks = [walk for pid in range(options.walkers) for walk in _route(
        np.random.default_rng([options.seed, 8, pid]), pid, links=links, offsets=offsets, options=options)]
    return Network(starts=tuple(NETWORK_START + offset for offset in offsets), links=tuple(links),
                   walks=tuple(sorted(walks, key=lambda walk: (walk.camid, walk.pid, walk.enter))))


def plan_walks(options: FootageOptions) -> list[Walk]:
    """Every walk of every walker through a camera's view (see :func:`plan_network`)."""
    return list(plan_network(options).walks)


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


def _visits(rows: np.ndarray, frame_indices: np.ndarray) -> list[np.ndarray]:
    """``rows`` (one walker in one camera, in frame order) cut into visits: unbroken stretches of frames."""
    breaks = np.flatnonzero(np.diff(frame_indices[rows]) > 1) + 1
    return np.split(rows, breaks)


def query_visits(network: Network) -> set[tuple[int, int, int]]:
    """The query tracklets as (pid, camid, visit number in that camera): the first visit of each walker with more."""
    queries = set()
    for pid in {walk.pid for walk in network.walks}:
        mine = [w for w in network.walks if w.pid == pid]
        if len(mine) > 1:
            first = min(mine, key=lambda w: network.starts[w.camid] + w.enter / FOOTAGE_FPS)
            number = sorted(w.enter for w in mine if w.camid == first.camid).index(first.enter)
            queries.add((pid, first.camid, number))
    return queries


def _write_tracklets(footage: CameraFootage, camid: int, *, into: Path, root: Path, start: float,
                     queries: set[tuple[int, int, int]]) -> list[Tracklet]:
    """Cut each walker's ground-truth crops into ``into/tracklets``, one tracklet per visit with its origin in the
    video, described with the paths they will have under ``root`` (the drawing folder ``into`` becomes ``root``)."""
    written = []
    truth = footage.truth
    for pid in np.unique(truth.pids):
        ordered = np.flatnonzero(truth.pids == pid)
        ordered = ordered[np.argsort(truth.frame_indices[ordered], kind="stable")]
        for number, rows in enumerate(_visits(ordered, truth.frame_indices)):
            split = "query" if (int(pid), camid, number) in queries else "gallery"
            relative = Path("tracklets", split, f"{pid:04d}", str(camid), f"t{number:02d}")
            indices = [int(i) for i in truth.frame_indices[rows]]
            write_frames([_crop(footage.frames[i], truth.boxes[r]) for i, r in zip(indices, rows)], into / relative)
            frames = tuple(str(root / relative / f"{t:06d}.jpg") for t in range(len(rows)))
            origin = FootageOrigin(
                source_video=str(root / video_path(camid, start)),
                first_frame=indices[0], last_frame=indices[-1], start_s=indices[0] / FOOTAGE_FPS,
                end_s=(indices[-1] + 1) / FOOTAGE_FPS,
                boxes=tuple(tuple(float(v) for v in truth.boxes[r]) for r in rows), frame_indices=tuple(indices),
                start_time=start + indices[0] / FOOTAGE_FPS, end_time=start + (indices[-1] + 1) / FOOTAGE_FPS,
            )
            written.append(Tracklet(str(relative), int(pid), camid, split, len(rows), frames=frames, origin=origin))
    return written


def video_path(camid: int, start: float) -> Path:
    """A camera's video below ROOT, named by the file-name time rule: ``footage/cam2/cam2_20261203T120002.mp4``."""
    stamp = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Path("footage", f"cam{camid}", f"cam{camid}_{stamp}.mp4")


def camera_video(root: Path, camid: int) -> Path:
    """The video of camera ``camid`` in a drawn tree (its name carries its start time).

    Raises:
        DataError: when ROOT holds no video for that camera.
    """
    found = sorted((Path(root) / "footage" / f"cam{camid}").glob(f"cam{camid}_*.mp4"))
    if not found:
        raise DataError(f"{root}/footage/cam{camid}/ holds no cam{camid}_<time>.mp4: not a synthetic footage tree")
    return found[0]


def write_camera_graph(network: Network, path: Path) -> None:
    """``cameras.yaml``: each camera's video and start, and every link with its transit range in seconds."""
    graph = {
        "cameras": [{"id": camid, "video": video_path(camid, start).relative_to("footage").as_posix(),
                     "start_time": datetime.fromtimestamp(start, tz=timezone.utc).isoformat().replace("+00:00", "Z")}
                    for camid, start in enumerate(network.starts)],
        "links": [{"cameras": list(link.cameras), "overlap": link.overlap, "min_s": link.min_s,
                   "max_s": round(link.max_s + EDGE_MARGIN_S, 1)} for link in network.links],
    }
    header = "# camera graph of a synthetic network (tfclip prepare synthetic --footage); tfclip link --cameras\n"
    with atomic_output(path) as temp:
        temp.write_text(header + yaml.safe_dump(graph, sort_keys=False))


def write_mtmc_gt(truths: dict[int, GroundTruth], path: Path) -> None:
    """The network's ground truth in the AI City Challenge layout (module docstring), by camera, frame, id."""
    lines = []
    for camid, truth in sorted(truths.items()):
        for row in np.lexsort((truth.pids, truth.frame_indices)):
            x1, y1, x2, y2 = (float(v) for v in truth.boxes[row])
            lines.append(f"{camid} {int(truth.pids[row])} {int(truth.frame_indices[row]) + 1} "
                         f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f} -1 -1\n")
    with atomic_output(path) as temp:
        temp.write_text("".join(lines))


def check_options(options: FootageOptions) -> None:
    """Raises DataError naming the first option that cannot give usable footage."""
    height, width = options.image_size
    problems = [
        (not 3 <= options.walkers <= 20, f"walkers={options.walkers}: expected 3 to 20 walkers per network"),
        (options.cameras < 1, f"cameras={options.cameras}: expected at least 1"),
        (options.frames < 8, f"frames={options.frames}: expected at least 8 frames per video"),
        (height % 2 or width % 2 or height < 64 or width < 64,
         f"image_size={options.image_size}: expected even (height, width), each ≥ 64"),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"synthetic footage option {message}")


def generate_footage(root: Path, options: FootageOptions = FootageOptions()) -> list[Tracklet]:
    """Draw the camera network, its ground truth, camera graph and ground-truth tracklets into ``root`` (see the
    module docstring).

    Returns:
        The ground-truth tracklets, with absolute paths under ``root``.
    Raises:
        DataError: when ``root`` exists and is not an empty folder, or an option is impossible.
    """
    root = Path(root).resolve()
    check_options(options)
    check_empty(root)
    looks = sample_appearances(options.walkers, options.seed)
    network = plan_network(options)
    queries = query_visits(network)
    written: list[Tracklet] = []
    truths: dict[int, GroundTruth] = {}
    with drawing_into(root) as temp:
        for camid in display.progress(range(options.cameras), "Drawing synthetic footage", unit="cameras"):
            footage = render_camera(camid, [w for w in network.walks if w.camid == camid], looks, options=options)
            video = video_path(camid, network.starts[camid])
            write_video(footage.frames, temp / video, fps=FOOTAGE_FPS)
            write_gt(footage.truth, temp / video.parent / "gt.txt")
            truths[camid] = footage.truth
            written += _write_tracklets(footage, camid, into=temp, root=root, start=network.starts[camid],
                                        queries=queries)
        write_mtmc_gt(truths, temp / "footage" / MTMC_GT)
        write_camera_graph(network, temp / "footage" / CAMERA_GRAPH)
    logger.info("drew %d cameras and %d ground-truth tracklets into %s", options.cameras, len(written), root)
    return written
