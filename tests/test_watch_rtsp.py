"""tfclip watch reads RTSP, what NVRs and IP cameras speak, from a real RTSP server on loopback (GStreamer's)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from fake_footage import tiny_checkpoint
from fake_streams import ColourDetector, walkers, write_video
from tfclip_cli.index import load_index
from tfclip_cli.watch.ingest import WatchOptions, watch
from tfclip_cli.watch.sources import ReaderOptions, make_source

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER = Path(__file__).with_name("rtsp_server.py")
PACKAGES = ("gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-rtsp gstreamer1.0-libav gstreamer1.0-plugins-base "
            "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")


def _has_rtsp_server() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return subprocess.run([str(SYSTEM_PYTHON), "-c", probe], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _has_rtsp_server(), reason=(
    f"no GStreamer RTSP server for {SYSTEM_PYTHON}: on Debian, apt-get install -y {PACKAGES}"))


def test_an_rtsp_camera_becomes_gallery_rows_on_the_stream_clock(tmp_path) -> None:
    people = walkers(3)
    video = write_video(tmp_path / "camera.mp4", 90, people)
    server = subprocess.Popen([str(SYSTEM_PYTHON), str(SERVER), str(video), "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("rtsp://127.0.0.1:")
        options = WatchOptions(detector=ColourDetector(), status_every_s=0.2,
                               reader=ReaderOptions(fps=1e6, retries=0, open_timeout_s=10, read_timeout_s=10,
                                                   queue_frames=1000))
        status = watch([make_source(url, camera=5, name="gate")], tmp_path / "g.faiss",
                       tiny_checkpoint(tmp_path / "tiny.ckpt"), options)
    finally:
        server.kill()
        server.wait()
    source = status.sources[0]
    assert source.frames_read == 90 and source.frames_dropped == 0
    rows = load_index(tmp_path / "g.faiss").rows.sort_values("first_frame")
    assert source.tracklets_appended == len(rows) == 3
    assert set(rows["camid"]) == {5}
    assert np.allclose(np.diff(rows["start_time"]), [3.0, 3.0], atol=0.15)  # walkers enter 3 s apart
