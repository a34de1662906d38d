"""Fakes for live-ingest tests: drawn scenes of coloured walkers, a detector that finds them by colour, and stream
servers on loopback (MJPEG over HTTP, MPEG-TS over HTTP, a host that never answers)."""

from __future__ import annotations

import contextlib
import http.server
import io
import socket
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image
from scipy import ndimage

from tfclip_cli.footage.detection import Detection

SIZE = (120, 160)  # height, width
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 30))


@dataclass(frozen=True)
class Walker:
    """A coloured box walking left to right: in view from ``enter`` for ``frames`` frames."""

    colour: tuple[int, int, int]
    enter: int
    frames: int
    y: int

    def box(self, index: int) -> tuple[int, int, int, int] | None:
        step = index - self.enter
        if not 0 <= step < self.frames:
            return None
        x = 8 + step * (SIZE[1] - 40) // max(1, self.frames - 1)
        return x, self.y, x + 14, self.y + 40


def walkers(count: int, *, every: int = 30, frames: int = 24) -> list[Walker]:
    """``count`` walkers entering one after the other, ``every`` frames apart, each in view for ``frames`` frames."""
    return [Walker(COLOURS[n % len(COLOURS)], n * every, frames, 20 + 30 * (n % 2)) for n in range(count)]


def draw(index: int, people: list[Walker]) -> np.ndarray:
    """Frame ``index``: a grey scene with a little texture and the walkers in view, RGB ``[H, W, 3]`` uint8."""
    frame = np.full((*SIZE, 3), 120, dtype=np.uint8)
    frame[::8] = 110
    for walker in people:
        box = walker.box(index)
        if box is not None:
            x1, y1, x2, y2 = box
            frame[y1:y2, x1:x2] = walker.colour
            frame[y1:y1 + 8, x1 + 3:x2 - 3] = (230, 190, 160)  # a head
    return frame


class ColourDetector:
    """Finds the walkers of :func:`draw`: connected regions of strongly coloured pixels."""

    name = "colour"

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        colourful = (frame.max(axis=2).astype(int) - frame.min(axis=2)) > 80
        labels, count = ndimage.label(colourful)
        found = []
        for region in ndimage.find_objects(labels):
            ys, xs = region
            if (ys.stop - ys.start) >= 20 and (xs.stop - xs.start) >= 8:
                found.append(Detection((float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)), 0.9))
        return found


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_video(path: Path, frames: int, people: list[Walker], *, fps: int = 10) -> Path:
    """An H.264 .mp4 (or MPEG-2 in MPEG-TS .ts, or an HLS .m3u8 playlist of 2 s H.264 segments) of the scene,
    written with PyAV."""
    hls = {"hls_time": "2", "hls_playlist_type": "vod"} if path.suffix == ".m3u8" else {}
    with av.open(str(path), "w", options=hls) as container:
        stream = container.add_stream("mpeg2video" if path.suffix == ".ts" else "libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(draw(index, people), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on 127.0.0.1 (a free port); yields the base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def mjpeg_handler(pieces: list[range], people: list[Walker], *, fps: float | None
                  ) -> type[http.server.BaseHTTPRequestHandler]:
    """An MJPEG camera: the n-th connection gets the frames of ``pieces[n]`` (paced at ``fps``, or as fast as it
    can), then the connection ends; after the last piece, connections are refused with 404."""
    served = {"connections": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            number = served["connections"]
            served["connections"] += 1
            if number >= len(pieces):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for index in pieces[number]:
                    data = jpeg(draw(index, people))
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                     % len(data) + data + b"\r\n")
                    if fps:
                        time.sleep(1.0 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args: object) -> None:
            return

    return Handler


def folder_handler(folder: Path) -> type[http.server.BaseHTTPRequestHandler]:
    """Serves the files of ``folder`` (an HLS playlist and its segments)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: object) -> None:
            return

    return Handler


def file_handler(path: Path, *, rate_bytes: int | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    """Serves the file at ``path`` as a live MPEG-TS stream (no length), once per connection."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            data = path.read_bytes()
            chunk = rate_bytes or len(data)
            try:
                for start in range(0, len(data), chunk):
                    self.wfile.write(data[start:start + chunk])
                    if rate_bytes:
                        time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args: object) -> None:
            return

    return Handler


@contextlib.contextmanager
def silent_host() -> Iterator[str]:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word; yields an http:// URL to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/camera"
    finally:
        listener.close()


def lossless_ts(video: Path, out: Path) -> Path:
    """``video``'s frames in an MPEG-TS container (what a camera streams over HTTP or UDP), H.264 lossless: each
    frame decodes to the pixels of the original."""
    with av.open(str(video)) as source, av.open(str(out), "w", format="mpegts") as target:
        incoming = source.streams.video[0]
        stream = target.add_stream("libx264", rate=incoming.average_rate, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = incoming.width, incoming.height, "yuv420p"
        for index, frame in enumerate(source.decode(incoming)):
            frame.pts, frame.time_base = index, Fraction(1, int(incoming.average_rate))
            for packet in stream.encode(frame):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    return out
