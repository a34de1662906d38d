"""Detection + tracking speed of ``tfclip track`` on ONE CPU core, as a multiple of real time for a 10 frames/s camera.

The default video is the public street-scene sample Debian's ``opencv-doc`` package ships (``vtest.avi``, 768×576,
10 frames/s, 795 frames, up to ~8 walkers at once); without it a synthetic 768×576 video of moving figures stands
in (speed only: the detectors are not expected to find drawn figures). The process is pinned to one core and
OpenCV and onnxruntime are given one thread. For each detector and frame step ``--every`` the script times
:func:`tfclip_cli.footage.pipeline.run_video` (decode + detect + track + crop) over the first ``--frames`` frames and
prints frames/s, the ratio to real time at 10 frames/s, detections per detected frame and tracks found, beside
decoding alone as the baseline measured in the same run. Speeds are frames per second of the process's CPU time
(what one core can sustain; on a busy shared machine the wall clock also counts other programs' turns), with the
wall-clock figure beside it.

``--mosaic PATH`` also runs ``tfclip track``'s API with the default detector on the whole video and saves a PNG of
one crop (the middle frame) per written tracklet, to look at what the tracklets hold.

    python benchmarks/bench_footage.py                         # vtest.avi, 200 frames, ssdlite and hog, every 1 and 2
    python benchmarks/bench_footage.py --detectors ssdlite yolo11n.onnx --every 1 3
    python benchmarks/bench_footage.py --mosaic /tmp/vtest_mosaic.png
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tfclip_cli.footage.detect import build_detector, read_video, set_threads
from tfclip_cli.footage.pipeline import PipelineOptions, run_video
from tfclip_cli.footage.tracklets import TrackOptions, track_videos

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CAMERA_FPS = 10.0
TILE = (48, 112)  # mosaic tile: width, height


def synthetic_video(path: Path, frames: int) -> Path:
    """A 768×576, 10 frames/s video of dark upright figures walking across a grey street."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CAMERA_FPS, (768, 576))
    rng = np.random.default_rng(0)
    starts, speeds = rng.uniform(0, 700, size=(6, 2)), rng.uniform(-6, 6, size=(6, 2))
    for index in range(frames):
        frame = np.full((576, 768, 3), 150, np.uint8)
        for (x, y), (dx, dy) in zip(starts, speeds):
            left, top = int((x + dx * index) % 720), int((y * 0.6 + dy * index) % 460)
            cv2.ellipse(frame, (left + 20, top + 14), (10, 13), 0, 0, 360, (60, 50, 40), -1)
            cv2.rectangle(frame, (left + 8, top + 27), (left + 32, top + 80), (40, 40, 90), -1)
            cv2.rectangle(frame, (left + 10, top + 80), (left + 30, top + 110), (30, 30, 30), -1)
        writer.write(frame)
    writer.release()
    return path


class Counting:
    """Wraps a detector to count its calls and detections."""

    def __init__(self, detector) -> None:
        self.detector, self.name = detector, detector.name
        self.calls = self.detections = 0

    def detect(self, frame: np.ndarray, *, frame_index: int):
        found = self.detector.detect(frame, frame_index=frame_index)
        self.calls, self.detections = self.calls + 1, self.detections + len(found)
        return found


def first_frames(video: Path, count: int, folder: Path) -> Path:
    """The first ``count`` frames of ``video`` as a lossless-enough MJPG clip (so every run times the same frames)."""
    clip = folder / "clip.avi"
    writer = None
    for index, frame in enumerate(read_video(video)):
        if index == count:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), CAMERA_FPS, frame.shape[1::-1])
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return clip


def time_decoding(clip: Path) -> float:
    """Frames/s of decoding alone, in CPU time."""
    started = time.process_time()
    count = sum(1 for _ in read_video(clip))
    return count / (time.process_time() - started)


def time_tracking(clip: Path, spec: str, *, every: int, frames: int) -> str:
    options = {"threads": 1} if spec.endswith(".onnx") else {}
    detector = Counting(build_detector(spec, **options))
    detector.detect(np.zeros((576, 768, 3), np.uint8), frame_index=0)  # load and warm up outside the timing
    detector.calls = detector.detections = 0
    wall, cpu = time.perf_counter(), time.process_time()
    done = run_video(clip, detector, camid=0, options=PipelineOptions(every=every), progress=lambda frames: frames)
    speed = frames / (time.process_time() - cpu)
    wall_speed = frames / (time.perf_counter() - wall)
    per_frame = detector.detections / max(detector.calls, 1)
    return (
        f"{spec:>14}  every {every}: {speed:6.1f} frames/s of CPU time = {speed / CAMERA_FPS:5.2f}x real time at "
        f"10 fps (wall clock {wall_speed:5.1f}); {per_frame:4.1f} detections/frame, {done.tracks} tracks"
    )


def save_mosaic(video: Path, out: Path, folder: Path) -> None:
    """Track the whole video with the default detector and tile the middle crop of each tracklet."""
    summary = track_videos([video], folder / "tracklets", options=TrackOptions(), camid=0)
    tracklets = sorted(Path(summary.videos[0].folder).iterdir())
    tiles = []
    for tracklet in tracklets:
        crops = sorted(tracklet.glob("*.jpg"))
        tiles.append(Image.open(crops[len(crops) // 2]).convert("RGB").resize(TILE))
    columns = 13
    rows = max(1, -(-len(tiles) // columns))
    mosaic = Image.new("RGB", (columns * (TILE[0] + 2), rows * (TILE[1] + 2)), "white")
    for number, tile in enumerate(tiles):
        mosaic.paste(tile, ((number % columns) * (TILE[0] + 2), (number // columns) * (TILE[1] + 2)))
    mosaic.save(out)
    print(f"mosaic of {len(tiles)} tracklets ({summary.videos[0].tracks} tracks) from {video.name}: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VTEST if VTEST.is_file() else None)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--detectors", nargs="+", default=["ssdlite", "hog"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mosaic", type=Path, default=None)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    set_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        video = args.video or synthetic_video(Path(folder) / "synthetic.avi", args.frames)
        clip = first_frames(video, args.frames, Path(folder))
        print(f"{video} (first {args.frames} frames), one core; decoding alone: {time_decoding(clip):.0f} frames/s")
        for spec in args.detectors:
            for every in args.every:
                print(time_tracking(clip, spec, every=every, frames=args.frames))
        if args.mosaic:
            save_mosaic(video, args.mosaic, Path(folder))


if __name__ == "__main__":
    main()
