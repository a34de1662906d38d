"""Streams per CPU core that ``tfclip watch`` keeps up with at 5 processed frames/s each, and the lag at that load.

N loopback MJPEG cameras (HTTP, 25 frames/s in real time, 384×288: camera 0 of the synthetic camera network, looped)
are watched by one :class:`tfclip_cli.watch.ingest.Ingest` pinned to one core (torch and OpenCV given one thread),
at ``--fps 5``, for ``--seconds``; the servers run on the other cores. A load is kept up with when fewer than 5% of
the frames due were dropped or left unread, and the lag p95 (a person leaving the view → their tracklet
searchable) is under 10 s.
N doubles from 1 until a load is not kept up with, then the largest load kept up with is refined between. People
are found by replaying the ground truth (the ``gt`` detector, looped with the video): the figure is the cost of
decoding, tracking, relinking, embedding and appending; ``benchmarks/bench_footage.py`` measures detectors.
Models: the tiny test model (torch) and ViT-B/16 exported to ONNX and run with onnxruntime (random weights: speed
does not depend on them). First it times decoding alone, PyAV against OpenCV's FFmpeg backend, on the same file.

    python benchmarks/bench_watch.py                            # tiny and ViT-B-16, 40 s per load
    python benchmarks/bench_watch.py --models tiny --seconds 20 --core 1
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image

from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.datasets.mot import gt_path, read_gt
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video, generate_footage
from tfclip_cli.export import export_checkpoint
from tfclip_cli.footage.detect import set_threads
from tfclip_cli.footage.replay import ReplayDetector
from tfclip_cli.model import ModelConfig, backbone_spec, build_model
from tfclip_cli.watch.ingest import Ingest, WatchOptions
from tfclip_cli.watch.sources import ReaderOptions, make_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_training import TINY_CONFIG, save_tiny_checkpoint  # noqa: E402

CAMERA_FPS = 25.0  # an IP camera's usual rate (MJPEG states none: FFmpeg assumes 25)
PROCESSED_FPS = 5.0
MAX_DROPS = 0.05
MAX_LAG_P95_S = 10.0


class LoopedReplay(ReplayDetector):
    """The ground-truth replay of a video served in a loop: frame ``i`` of the stream is frame ``i mod period``."""

    def __init__(self, truth, period: int) -> None:
        super().__init__(truth)
        self.period = period

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list:
        return super().detect(frame, frame_index=frame_index % self.period)


def jpeg_frames(video: Path) -> list[bytes]:
    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            buffer = io.BytesIO()
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(buffer, format="JPEG", quality=90)
            frames.append(buffer.getvalue())
    return frames


def start_cameras(frames: list[bytes]) -> str:
    """An MJPEG server looping ``frames`` at the camera's rate for each connection; returns its base URL."""

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            started, index = time.monotonic(), 0
            try:
                while True:
                    data = frames[index % len(frames)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                     % len(data) + data + b"\r\n")
                    index += 1
                    time.sleep(max(0.0, started + index / CAMERA_FPS - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def decode_rates(video: Path) -> None:
    """Frames/s decoding ``video`` to RGB with PyAV and with OpenCV's FFmpeg backend."""
    start = time.process_time()
    with av.open(str(video)) as container:
        count = sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)
    pyav = count / (time.process_time() - start)
    start, capture, count = time.process_time(), cv2.VideoCapture(str(video)), 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        count += 1
    opencv = count / (time.process_time() - start)
    print(f"decoding {video.name} ({count} frames) to RGB, CPU time: PyAV {pyav:.0f} frames/s, "
          f"OpenCV {opencv:.0f} frames/s")


def vit_onnx(folder: Path) -> Path:
    """A random-weight ViT-B/16 TF-CLIP checkpoint exported to ONNX."""
    size = backbone_spec("ViT-B-16").image_size
    config = ModelConfig(backbone="ViT-B-16", image_size=size, seq_len=8, num_classes=625, num_cameras=6)
    torch.manual_seed(0)
    model = build_model(config).eval()
    checkpoint = folder / "vit.ckpt"
    save_checkpoint(Checkpoint(model_config=config.to_dict(), model_state=model.state_dict(), pid_to_label={}),
                    checkpoint)
    return export_checkpoint(checkpoint, folder / "vit.onnx").path


def run_load(count: int, url: str, model: Path, detector: LoopedReplay, folder: Path, seconds: float) -> dict:
    """Watch ``count`` streams for ``seconds``; the drop share and the lag percentiles over all of them."""
    gallery = folder / f"g{count}-{time.monotonic_ns()}.faiss"
    specs = [make_source(f"{url}/camera{n}", camera=n, name=f"camera{n}") for n in range(count)]
    options = WatchOptions(detector=detector, reader=ReaderOptions(fps=PROCESSED_FPS), batch_wait_s=1.0,
                           status_every_s=1.0)
    ingest = Ingest(specs, gallery, model, options)
    thread = threading.Thread(target=ingest.run)
    thread.start()
    time.sleep(seconds)
    status = ingest.status()
    ingest.stop()
    thread.join()
    processed = sum(s.frames_processed for s in status.sources)
    dropped = sum(s.frames_dropped for s in status.sources)
    lags = [lag for position in range(count) for lag in ingest._lags[position]]
    return {"drops": dropped / max(1, processed + dropped), "processed_fps": processed / seconds,
            "lag_p50": float(np.percentile(lags, 50)) if lags else float("nan"),
            "lag_p95": float(np.percentile(lags, 95)) if lags else float("nan"),
            "tracklets": sum(s.tracklets_appended for s in status.sources)}


def is_kept_up(figures: dict, count: int) -> bool:
    """Under 5% of the frames due dropped or never read (a reader behind real time leaves them in the socket), and
    the lag p95 under 10 s."""
    missed = 1.0 - figures["processed_fps"] / (count * PROCESSED_FPS)
    return figures["drops"] < MAX_DROPS and missed < MAX_DROPS and figures["lag_p95"] < MAX_LAG_P95_S


def _try(name: str, count: int, url: str, model: Path, detector: LoopedReplay, folder: Path, args) -> bool:
    figures = run_load(count, url, model, detector, folder, args.seconds)
    print(f"{name:9s} {count:3d} streams: processed {figures['processed_fps']:6.1f} frames/s "
          f"(due {count * PROCESSED_FPS:.0f}), dropped {100 * figures['drops']:5.1f}%, lag p50 "
          f"{figures['lag_p50']:5.1f} s p95 {figures['lag_p95']:5.1f} s, {figures['tracklets']} tracklets",
          flush=True)
    return is_kept_up(figures, count)


def streams_per_core(name: str, url: str, model: Path, detector: LoopedReplay, folder: Path, args) -> None:
    kept, count, failed = 0, 1, None
    while count <= args.max_streams and failed is None:
        if _try(name, count, url, model, detector, folder, args):
            kept, count = count, count * 2
        else:
            failed = count
    while failed is not None and failed - kept > 1:  # bisect between the last load kept up with and the first not
        middle = (kept + failed) // 2
        if _try(name, middle, url, model, detector, folder, args):
            kept = middle
        else:
            failed = middle
    print(f"{name}: {kept} stream(s) per core kept up with at {PROCESSED_FPS:.0f} processed frames/s each"
          + (f" ({failed} were not)" if failed else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "ViT-B-16"], choices=["tiny", "ViT-B-16"])
    parser.add_argument("--seconds", type=float, default=40.0, help="how long each load runs")
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--core", type=int, default=0, help="the CPU core the ingest is pinned to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as work:
        folder = Path(work)
        generate_footage(folder / "scene", FootageOptions(cameras=1, frames=160))
        video = camera_video(folder / "scene", 0)
        decode_rates(video)
        frames = jpeg_frames(video)
        made = {"tiny": lambda: save_tiny_checkpoint(build_model(TINY_CONFIG), folder / "tiny.ckpt"),
                "ViT-B-16": lambda: vit_onnx(folder)}
        models = {name: made[name]() for name in args.models}
        url = start_cameras(frames)  # before pinning: the servers' threads keep every core
        os.sched_setaffinity(0, {args.core})  # this thread, and the threads it starts from now on
        torch.set_num_threads(1)
        set_threads(1)
        detector = LoopedReplay(read_gt(gt_path(video)), len(frames))
        for name, model in models.items():
            streams_per_core(name, url, model, detector, folder, args)


if __name__ == "__main__":
    main()
