"""Footage a person can watch: the source video with each track's box, id and a short trail drawn in a colour per
id (``tfclip track --annotate``), or ground truth and tracker output side by side with identity switches marked.

Videos are written as H.264 in MP4 (``libx264``, yuv420p, the moov atom first so a browser starts playing at once)
or VP9 in WebM (``libvpx-vp9``), both of which every current browser plays; MPEG-4 part 2 (``mp4v``) is not one of
them. Both encoders ship in PyAV's wheels. yuv420p needs even sides, so an odd-sized source gets one black pixel
row or column added at the bottom or right.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tfclip_cli.datasets.footage import TRACK_FILE
from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.display import OKABE_ITO
from tfclip_cli.errors import DataError, UserError
from tfclip_cli.footage.detect import read_video, video_info
from tfclip_cli.footage.metrics import IdentitySwitch, TrackedVideo, identity_switches
from tfclip_cli.footage.track import Track
from tfclip_cli.footage.tracking_files import camera_number, read_tracks, read_truth
from tfclip_cli.tables import atomic_output, check_writable

log = logging.getLogger(__name__)

CODECS = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}
ID_COLOURS = tuple(OKABE_ITO[name] for name in ("orange", "sky blue", "bluish green", "yellow", "blue",
                                                "vermillion", "reddish purple"))
TRAIL_FRAMES = 15  # frames of a track's past drawn as its trail
SWITCH_FRAMES = 10  # frames an identity switch stays marked
SWITCH_COLOUR = "#D55E00"
BOX_WIDTH = 3


@dataclass(frozen=True)
class AnnotatedVideo:
    """What :func:`annotate_video` or :func:`annotate_comparison` wrote."""

    path: Path
    frames: int
    width: int
    height: int
    codec: str


def colour_of(track_id: int) -> str:
    """The colour of an id (Okabe-Ito, cycling)."""
    return ID_COLOURS[track_id % len(ID_COLOURS)]


def _font(height: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(11, height // 28))


def _codec(out: Path) -> tuple[str, str]:
    """The container and encoder for ``out``'s suffix.

    Raises:
        UserError: a suffix other than .mp4 or .webm.
    """
    try:
        return CODECS[out.suffix.lower()]
    except KeyError:
        raise UserError(f"{out}: write the annotated video as .mp4 (H.264) or .webm (VP9), which browsers play",
                        hint=f"e.g. --annotate {out.with_suffix('.mp4').name}") from None


def check_output(out: Path, *, force: bool = False) -> None:
    """Refuse, before any work, an annotated video that could not be written: a suffix browsers do not play, or an
    existing file without ``force``.

    Raises:
        UserError: as described.
    """
    _codec(Path(out))
    check_writable(Path(out), force=force)


def _even(frame: np.ndarray) -> np.ndarray:
    """``frame`` padded with black to even height and width (yuv420p)."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))


def write_video(frames: Iterable[np.ndarray], out: Path, *, fps: float, force: bool = False) -> AnnotatedVideo:
    """Encode RGB ``[H, W, 3]`` uint8 frames into ``out`` (.mp4: H.264, .webm: VP9), atomically.

    Raises:
        UserError: an unsupported suffix, or ``out`` exists and ``force`` is False.
    """
    container_format, codec = _codec(out)
    count, size = 0, (0, 0)
    with atomic_output(out, force=force) as temp:
        options = {"movflags": "+faststart"} if container_format == "mp4" else {}
        with av.open(str(temp), "w", format=container_format, options=options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast"} if codec == "libx264" else {"crf": "32", "b:v": "0"}
            for frame in frames:
                frame = _even(frame)
                if count == 0:
                    stream.height, stream.width = size = frame.shape[:2]
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                count += 1
            container.mux(stream.encode())
    return AnnotatedVideo(path=out, frames=count, width=size[1], height=size[0], codec=codec)


def _label(draw: ImageDraw.ImageDraw, box: Sequence[float], text: str, colour: str, font: ImageFont.FreeTypeFont) -> None:
    """``text`` on a filled tag at the box's top-left corner (inside the frame)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 4
    x = max(0, box[0])
    y = box[1] - height if box[1] - height >= 0 else box[1]
    draw.rectangle((x, y, x + width, y + height), fill=colour)
    draw.text((x + 3, y + 2 - top), text, fill="black", font=font)


def _trail(history: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """The bottom-centre points of the last boxes (where the person stood)."""
    return [((box[0] + box[2]) / 2, box[3]) for box in history]


def draw_tracks(frame: np.ndarray, boxes: Sequence[tuple[int, np.ndarray, Sequence[np.ndarray]]]) -> np.ndarray:
    """A copy of ``frame`` with each (id, box, past boxes) drawn: trail, box outline, id tag."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(frame.shape[0])
    for track_id, box, history in boxes:
        colour = colour_of(track_id)
        points = _trail([*history, box])
        if len(points) > 1:  # a dark edge under every line keeps it visible on any background
            draw.line(points, fill="black", width=4)
            draw.line(points, fill=colour, width=2)
        outline = tuple(float(v) for v in box)
        draw.rectangle((outline[0] - 1, outline[1] - 1, outline[2] + 1, outline[3] + 1), outline="black",
                       width=BOX_WIDTH + 2)
        draw.rectangle(outline, outline=colour, width=BOX_WIDTH)
        _label(draw, box, str(track_id), colour, font)
    return np.asarray(image)


def _boxes_by_frame(tracks: Sequence[Track]) -> dict[int, list[tuple[int, int, Track]]]:
    """frame index -> (track id, position in the track, track) of every box in it."""
    by_frame: dict[int, list[tuple[int, int, Track]]] = {}
    for track in tracks:
        for position, frame_index in enumerate(track.frame_indices):
            by_frame.setdefault(frame_index, []).append((track.track_id, position, track))
    return by_frame


def _drawn_frames(video: Path, tracks: Sequence[Track]) -> Iterator[np.ndarray]:
    by_frame = _boxes_by_frame(tracks)
    for frame_index, frame in enumerate(read_video(video)):
        boxes = [(track_id, track.boxes[position], track.boxes[max(0, position - TRAIL_FRAMES):position])
                 for track_id, position, track in by_frame.get(frame_index, [])]
        yield draw_tracks(frame, boxes)


def annotate_video(video: Path, tracks: Sequence[Track], out: Path, *, force: bool = False) -> AnnotatedVideo:
    """Write ``video`` with every track's box, id and trail drawn to ``out`` (.mp4 or .webm), frame for frame.

    Args:
        tracks: boxes in the video's pixels, per 0-based frame index; a track's ``track_id`` is the id drawn.

    Raises:
        DataError: the video does not open. UserError: an unsupported suffix; ``out`` exists without ``force``.
    """
    _codec(Path(out))
    result = write_video(_drawn_frames(video, tracks), Path(out), fps=video_info(video).fps, force=force)
    log.debug("wrote %s: %d frames, %d tracks drawn", out, result.frames, len(tracks))
    return result


def read_written_tracks(folder: Path) -> list[Track]:
    """The tracklets ``tfclip track`` wrote for one video (``ROOT/<camid>/<video>/``) as tracks, numbered as their
    folders (``0003`` -> 3)."""
    tracks = []
    for record_path in sorted(Path(folder).glob(f"*/{TRACK_FILE}")):
        record = json.loads(record_path.read_text())
        tracks.append(Track(
            track_id=int(record_path.parent.name), camid=int(record["camid"]),
            frame_indices=tuple(int(i) for i in record["frame_indices"]),
            boxes=np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(record["scores"], dtype=np.float32),
        ))
    return tracks


def _truth_tracks(truth: GroundTruth) -> list[Track]:
    """Ground truth as one track per person (id = pid), boxes in frame order."""
    tracks = []
    for pid in np.unique(truth.pids):
        rows = np.flatnonzero(truth.pids == pid)
        rows = rows[np.argsort(truth.frame_indices[rows], kind="stable")]
        tracks.append(Track(int(pid), -1, tuple(int(i) for i in truth.frame_indices[rows]), truth.boxes[rows],
                            np.ones(len(rows), np.float32)))
    return tracks


def _mark_switches(frame: np.ndarray, switches: Sequence[IdentitySwitch], boxes: dict[int, np.ndarray]) -> np.ndarray:
    """A thick dashed-looking double outline and a "switch" tag on each track that just took over a person."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(frame.shape[0])
    for switch in switches:
        box = boxes.get(switch.track_id)
        if box is None:
            continue
        outer = (box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4)
        draw.rectangle(tuple(float(v) for v in outer), outline=SWITCH_COLOUR, width=3)
        _label(draw, (box[0], box[3] + 4 + 18, box[2], box[3]), f"switch: person {switch.pid}", SWITCH_COLOUR, font)
    return np.asarray(image)


def _comparison_frames(video: Path, truth: GroundTruth, tracks: Sequence[Track],
                       switches: Sequence[IdentitySwitch]) -> Iterator[np.ndarray]:
    truth_frames = _drawn_frames(video, _truth_tracks(truth))
    output_boxes = _boxes_by_frame(tracks)
    for frame_index, (left, right) in enumerate(zip(truth_frames, _drawn_frames(video, tracks))):
        recent = [s for s in switches if 0 <= frame_index - s.frame_index < SWITCH_FRAMES]
        boxes = {track_id: track.boxes[position] for track_id, position, track in output_boxes.get(frame_index, [])}
        if recent:
            right = _mark_switches(right, recent, boxes)
        divider = np.full((left.shape[0], 4, 3), 255, np.uint8)
        yield np.concatenate([_titled(left, "ground truth"), divider, _titled(right, "tracker output")], axis=1)


def _titled(frame: np.ndarray, title: str) -> np.ndarray:
    """``frame`` with ``title`` in its top-left corner."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    _label(draw, (4, 4, 4, 4), title, "#FFFFFF", _font(frame.shape[0]))
    return np.asarray(image)


def annotate_comparison(video: Path, truth: GroundTruth, tracks: Sequence[Track], out: Path, *,
                        min_iou: float = 0.5, force: bool = False) -> AnnotatedVideo:
    """Write ground truth (left, ids = pids) and tracker output (right, ids = track ids) side by side to ``out``,
    each identity switch (as :func:`~tfclip_cli.footage.metrics.identity_switches` counts them at ``min_iou``)
    marked on the track that took the person over for ``SWITCH_FRAMES`` frames.

    Raises:
        DataError: the video does not open. UserError: an unsupported suffix; ``out`` exists without ``force``.
    """
    _codec(Path(out))
    switches = identity_switches(TrackedVideo(tracks=tracks, truth=truth), min_iou=min_iou)
    frames = _comparison_frames(video, truth, tracks, switches)
    result = write_video(frames, Path(out), fps=video_info(video).fps, force=force)
    log.info("wrote %s: %d frames, %d identity switches marked", out, result.frames, len(switches))
    return result


def annotate_camera(result: Path, truth: Path, video: Path, out: Path, *, force: bool = False) -> AnnotatedVideo:
    """``tfclip evaluate-tracks --annotate``: :func:`annotate_comparison` of the camera that ``video`` films, named
    by its number as the tracking layouts name cameras (``cam2.mp4``, ``cam2_20261203T120000.mp4`` → camera 2).

    Raises:
        UserError: the video's name holds no camera number. DataError: ``truth`` has no such camera, or as
            :func:`~tfclip_cli.footage.tracking_files.read_tracks`.
    """
    camid = camera_number(Path(video).stem)
    if camid is None:
        raise UserError(f"{video}: expected a video named by its camera number (cam2.mp4, c002.avi, 2.mp4)",
                        hint="rename the video, or link it under such a name")
    check_output(out, force=force)
    tracks, truths = read_tracks(result), read_truth(truth)
    if camid not in truths:
        raise DataError(f"{truth} has no ground truth of camera {camid}, which {video} films "
                        f"(its cameras: {', '.join(map(str, sorted(truths))) or 'none'})")
    return annotate_comparison(video, truths[camid], tracks.get(camid, []), out, force=force)
