"""The ``footage`` layout: person tracklets cut from raw camera video by ``tfclip track``, identities unknown.

Layout::

    ROOT/<camid>/<video>/<track>/          one tracklet: the person's cropped frames and where they came from
        000123.jpg ...                      one crop per source frame, named by the 0-based frame index
        track.json                          {"source_video", "camid", "fps", "frame_indices", "boxes", "scores",
                                             "start_time", "end_time"}

``boxes`` holds one ``[x1, y1, x2, y2]`` pixel box per frame index; ``scores`` the detector's confidence, 0 where
the tracker predicted the box. Every tracklet gets pid -1 (unknown identity) and the ``gallery`` split: it can be
extracted, indexed and queried, not trained on or evaluated. Its :class:`FootageOrigin` keeps the source video,
first/last frame, start/end time (start = first frame index / fps; end = (last frame index + 1) / fps, when the
last frame ends), the boxes and the frame index of each, so every search result leads back to the moment and place
it was filmed. ``start_time``/``end_time`` (optional: null or absent when the video's start was unknown to
``tfclip track``) are when its first and last frame were filmed, in seconds since the epoch; linking
people across cameras needs them. The tracklet id is the path below ROOT (``2/lobby/0007``).
Gallery rule: ``gallery_only``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tfclip_cli.datasets.common import Layout, Parsed, Problems
from tfclip_cli.tables import UNKNOWN_PID, FootageOrigin, Tracklet, optional_time

TRACK_FILE = "track.json"
CROP_SUFFIX = ".jpg"
TRACK_KEYS = ("source_video", "camid", "fps", "frame_indices", "boxes", "scores")

LAYOUT = Layout(
    description=f"the footage layout ROOT/<camid>/<video>/<track>/ with cropped frames and a {TRACK_FILE}, "
    "as written by `tfclip track VIDEO... --out ROOT`",
    hint="point ROOT at the --out folder of tfclip track",
)


def crop_name(frame_index: int) -> str:
    """The file name of a track's crop of source frame ``frame_index``."""
    return f"{frame_index:06d}{CROP_SUFFIX}"


def start_end_seconds(frame_indices: list[int], fps: float) -> tuple[float, float]:
    """When a track starts and ends in its source video: the start of its first frame and the end of its last
    (which lasts ``1 / fps``)."""
    return frame_indices[0] / fps, (frame_indices[-1] + 1) / fps


def _tracklet(folder: Path, root: Path, problems: Problems) -> list[Tracklet]:
    """The tracklet of one track folder, or none (a problem recorded) when its files disagree."""
    try:
        record = json.loads((folder / TRACK_FILE).read_text())
        missing = [key for key in TRACK_KEYS if key not in record]
    except (OSError, ValueError) as error:
        problems.add(folder / TRACK_FILE, f"not readable JSON ({error})")
        return []
    if missing:
        problems.add(folder / TRACK_FILE, f"lacks {', '.join(missing)}")
        return []
    indices = [int(i) for i in record["frame_indices"]]
    frames = tuple(str(folder / crop_name(i)) for i in indices)
    absent = [f for f in frames if not Path(f).is_file()]
    if absent or len(record["boxes"]) != len(indices) or not indices:
        problems.add(folder, f"{len(absent)} of {len(indices)} crops missing, or boxes and frames disagree")
        return []
    start_s, end_s = start_end_seconds(indices, float(record["fps"]))
    origin = FootageOrigin(
        source_video=str(record["source_video"]),
        first_frame=indices[0],
        last_frame=indices[-1],
        start_s=start_s,
        end_s=end_s,
        boxes=tuple(tuple(float(v) for v in box) for box in record["boxes"]),
        frame_indices=tuple(indices),
        start_time=optional_time(record.get("start_time")),
        end_time=optional_time(record.get("end_time")),
    )
    tracklet_id = folder.relative_to(root).as_posix()
    camid = int(record["camid"])
    return [Tracklet(tracklet_id, UNKNOWN_PID, camid, "gallery", len(frames), frames=frames, origin=origin)]


def parse(root: Path, *, problems: Problems) -> Parsed:
    """Every track folder below ROOT (see the module docstring), in path order.

    Raises:
        DataError: ROOT is missing or holds no track folder; under strict, an unusable track.
    """
    if not root.is_dir():
        raise LAYOUT.missing(root)
    found = root.rglob(TRACK_FILE)  # hidden folders hold tfclip track's unfinished work: skip them
    folders = sorted(p.parent for p in found if not any(s.startswith(".") for s in p.relative_to(root).parts))
    if not folders:
        raise LAYOUT.missing(root / "<camid>" / "<video>" / "<track>" / TRACK_FILE)
    tracklets = [t for folder in folders for t in _tracklet(folder, root, problems)]
    return Parsed(tracklets=tracklets, extra={})
