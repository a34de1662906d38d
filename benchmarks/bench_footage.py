"""Detection + tracking speed of ``tfclip track`` on ONE CPU core, as a multiple of real time for a 10 frames/s camera.

The default video is the public street-scene sample Debian's ``opencv-doc`` package ships (``vtest.avi``, 768×576,
10 frames/s, 795 frames, up to ~8 walkers at once); without it a synthetic 768×576 video of moving figures stands in
(speed only: the detectors are not expected to find drawn figures). The process is pinned to one core once
onnxruntime has loaded, and OpenCV, onnxruntime and numpy's BLAS are given one thread. (onnxruntime 1.32 picks its
int8 matrix kernels as it loads: in a process already held to fewer CPUs than the machine has, it leaves out the AMX
kernels of the Xeons that have them, as ``perf`` shows. So ``taskset -c 0 python benchmarks/bench_footage.py ...``
measures what a CPU without AMX, with AVX-512 VNNI, would do.) For each detector and frame step ``--every`` the
script times :func:`tfclip_cli.footage.pipeline.run_video` (decode + detect + track + crop) over the first
``--frames`` frames and prints frames/s, the ratio to real time at 10 frames/s, detections per detected frame and
tracks found, beside decoding alone as the baseline measured in the same run. Speeds are frames per second of the
process's CPU time (what one core can sustain; on a busy shared machine the wall clock also counts other programs'
turns), with the wall-clock figure beside it.

``--mosaic PATH`` also runs ``tfclip track``'s API with the default detector on the whole video and saves a PNG of
one crop (the middle frame) per written tracklet, to look at what the tracklets hold.

``--appearance M.onnx`` measures ``tfclip track -c M.onnx`` end to end instead (decode, detect, track and crop,
embed, relink, write the tracklets) on the same frames, every frame processed (10 frames/s: vtest.avi's rate), one
core and one thread: the CPU time of each stage, its share, and the whole as a multiple of real time. Appearance is
relinking's span embedding (one clip of the model's ``seq_len`` crops per span: a whole track that touched nobody,
or the stretch up to a window where a cut may fall after a contact, the windows compared after it, and the rest;
all tracks' spans in shared batches); the script prints how many clips and crops the model ran.
``--build-appearance`` first writes a random-init ViT-B/16 checkpoint and exports it with ``tfclip export --int8``
to that path (speed does not depend on the weights; minutes, once).

    python benchmarks/bench_footage.py                         # vtest.avi, 200 frames, ssdlite and hog, every 1 and 2
    python benchmarks/bench_footage.py --detectors ssdlite yolo11n.onnx --every 1 3
    python benchmarks/bench_footage.py --mosaic /tmp/vtest_mosaic.png
    python benchmarks/bench_footage.py --appearance /tmp/vit-b16-int8.onnx --build-appearance --detectors ssdlite
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from PIL import Image

from tfclip_cli.footage.detect import build_detector, read_video, set_threads, video_info
from tfclip_cli.footage.pipeline import FootagePipeline, PipelineOptions, run_video
from tfclip_cli.footage.relink import CropEmbedder, model_crop_embedder
from tfclip_cli.footage.tracklets import TrackOptions, _write_tracklet, track_videos
from tfclip_cli.runtime import read_metadata  # loads onnxruntime before main() pins the process (see above)

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


class StageClock:
    """CPU time (this process) spent in each named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, stage: str, function, *args, **kwargs):
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[stage] += time.process_time() - started

    def frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``frames``, the time spent producing each counted as decoding."""
        iterator = iter(frames)
        while True:
            started = time.process_time()
            frame = next(iterator, None)
            self.seconds["decode"] += time.process_time() - started
            if frame is None:
                return
            yield frame


class TimedDetector:
    """A detector whose calls count as the ``detect`` stage."""

    def __init__(self, detector, clock: StageClock) -> None:
        self.detector, self.clock, self.name = detector, clock, detector.name

    def detect(self, frame: np.ndarray, *, frame_index: int):
        return self.clock.timed("detect", self.detector.detect, frame, frame_index=frame_index)


class TimedEmbedder:
    """A crop embedder whose calls count as the ``embed`` stage, counting the clips and crops it is given."""

    def __init__(self, embed: CropEmbedder, clock: StageClock) -> None:
        self.embed, self.clock = embed, clock
        self.calls = self.clips = self.crops = 0

    def __call__(self, clips):
        self.calls, self.clips = self.calls + 1, self.clips + len(clips)
        self.crops += sum(len(clip) for clip in clips)
        return self.clock.timed("embed", self.embed, clips)


def build_appearance(path: Path, folder: Path) -> None:
    """A random-init ViT-B/16 TF-CLIP checkpoint exported as ``tfclip export --int8`` exports (verified fp32 export,
    dynamic int8 quantisation, cosine to fp32 recorded) to ``path``."""
    import torch

    from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
    from tfclip_cli.model import ModelConfig, backbone_spec, build_model
    from tfclip_cli.quantize import export_int8

    config = ModelConfig(backbone="ViT-B-16", image_size=backbone_spec("ViT-B-16").image_size, seq_len=8,
                         num_classes=625, num_cameras=0)
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(model_config=config.to_dict(), model_state=build_model(config).state_dict(),
                               pid_to_label={}, recipe={"data": {"normalization": "clip"}}), folder / "vit.ckpt")
    started = time.perf_counter()
    result = export_int8(folder / "vit.ckpt", path, force=True)
    print(f"built {path}: random-init ViT-B/16 through `tfclip export --int8` in {time.perf_counter() - started:.0f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB; int8 vs fp32 min cosine {result.agreement.min_cosine:.5f})")


def end_to_end(clip: Path, spec: str, appearance: Path, *, frames: int, folder: Path) -> None:
    """Decode, detect, track and crop, embed, relink, write: the CPU time of each stage of ``tfclip track -c``."""
    clock = StageClock()
    detector = TimedDetector(build_detector(spec, **({"threads": 1} if spec.endswith(".onnx") else {})), clock)
    detector.detect(np.zeros((576, 768, 3), np.uint8), frame_index=0)  # load and warm up outside the timing
    embed = TimedEmbedder(model_crop_embedder(appearance, threads=1), clock)
    embed([[np.zeros((128, 64, 3), np.uint8)] * 8])  # onnxruntime's first run allocates: outside the timing
    clock.seconds.clear()
    embed.calls = embed.clips = embed.crops = 0
    fps = video_info(clip).fps
    pipeline = FootagePipeline(detector, camid=0, fps=fps, source=str(clip), embed=embed)
    for index, frame in enumerate(clock.frames(read_video(clip))):
        started = time.process_time()
        pipeline.feed(index, frame)
        clock.seconds["track + crop"] += time.process_time() - started
    clock.seconds["track + crop"] -= clock.seconds["detect"]
    done = clock.timed("relink", pipeline.close)
    clock.seconds["relink"] -= clock.seconds["embed"]
    record = {"source_video": str(clip), "fps": fps, "start_time": None}
    for tracklet in done.tracklets:  # the writer of `tfclip track`: JPEG crops and track.json
        clock.timed("write", _write_tracklet, tracklet, folder / "out" / f"{tracklet.track.track_id:04d}",
                    record=record)
    total = sum(clock.seconds.values())
    video_seconds = frames / CAMERA_FPS
    print(f"end to end, {spec} + {appearance.name} (one core, one thread): {frames} frames = {video_seconds:.0f} s "
          f"of video in {total:.1f} s of CPU time = {video_seconds / total:.2f}x real time per core")
    for stage in ("decode", "detect", "track + crop", "embed", "relink", "write"):
        print(f"  {stage:12s} {clock.seconds[stage]:7.1f} s  {100 * clock.seconds[stage] / total:5.1f} %")
    seq_len = read_metadata(appearance).seq_len
    print(f"  {done.tracks} tracks, {len(done.tracklets)} tracklets written; {embed.clips} clips embedded "
          f"({embed.clips * seq_len} crops: the model's {seq_len} sampled over each span, from {embed.crops} crops "
          f"in the spans) in {embed.calls} call(s), {embed.clips / max(clock.seconds['embed'], 1e-9):.2f} clips/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VTEST if VTEST.is_file() else None)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--detectors", nargs="+", default=["ssdlite", "hog"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mosaic", type=Path, default=None)
    parser.add_argument("--appearance", type=Path, default=None, help="an exported .onnx: time tfclip track -c it")
    parser.add_argument("--build-appearance", action="store_true", help="export a random ViT-B/16 int8 there first")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    set_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        video = args.video or synthetic_video(Path(folder) / "synthetic.avi", args.frames)
        clip = first_frames(video, args.frames, Path(folder))
        print(f"{video} (first {args.frames} frames), one core; decoding alone: {time_decoding(clip):.0f} frames/s")
        if args.appearance is not None:
            if args.build_appearance:
                build_appearance(args.appearance, Path(folder))
            for spec in args.detectors:
                end_to_end(clip, spec, args.appearance, frames=args.frames, folder=Path(folder) / spec)
            return
        for spec in args.detectors:
            for every in args.every:
                print(time_tracking(clip, spec, every=every, frames=args.frames))
        if args.mosaic:
            save_mosaic(video, args.mosaic, Path(folder))


if __name__ == "__main__":
    main()
