"""tfclip serve --watch: the service ingests cameras into the gallery it serves, and /stats shows the figures."""

from __future__ import annotations

import time

import torch
from fastapi.testclient import TestClient

from fake_footage import tiny_checkpoint
from fake_streams import write_video
from test_watch import FRAMES, PEOPLE, _write_gt
from tfclip_cli.serve.app import create_app
from tfclip_cli.serve.guard import allowed_hosts
from tfclip_cli.serve.service import ServeConfig, Service
from tfclip_cli.serve.uploads import UploadLimits
from tfclip_cli.watch.ingest import WatchOptions, watch
from tfclip_cli.watch.sources import ReaderOptions, make_source


def test_serve_watch_appends_while_serving_and_stats_show_the_ingest(tmp_path) -> None:
    gt = tmp_path / "gt.txt"
    _write_gt(gt)
    # 5 frames/s, the rate serve --watch processes: every frame is tracked
    first, second = (write_video(tmp_path / f"cam{c}_20261203T12000{c}.mp4", FRAMES, PEOPLE, fps=5)
                     for c in range(2))
    gallery, checkpoint = tmp_path / "g.faiss", tiny_checkpoint(tmp_path / "tiny.ckpt")
    watch([make_source(str(first), camera=0)], gallery, checkpoint,
          WatchOptions(detector=f"gt:{gt}", reader=ReaderOptions(fps=10.0)))
    config = ServeConfig(gallery=gallery, checkpoint=checkpoint, device=torch.device("cpu"),
                         limits=UploadLimits(max_bytes=2**20, max_frames=100), allow_dirs=(), store=tmp_path / "s",
                         detector=f"gt:{gt}", watch=(make_source(str(second), camera=1, name="street"),))
    service = Service(config)
    client = TestClient(create_app(service, token=None, hosts=allowed_hosts("127.0.0.1", ())),
                        base_url="http://127.0.0.1:8000")
    assert client.get("/stats").json()["rows"] == 3 and "ingest" not in client.get("/stats").json()
    service.start_ingest()
    deadline = time.monotonic() + 60
    while client.get("/stats").json()["ingest"]["sources"][0]["state"] != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    service.stop_ingest()
    stats = client.get("/stats").json()
    (source,) = stats["ingest"]["sources"]
    assert source["name"] == "street" and source["camera"] == 1 and source["tracklets_appended"] == 3, source
    assert set(source) == {"name", "camera", "state", "frames_read", "frames_processed", "frames_dropped",
                           "reconnects", "open_tracks", "tracklets_appended", "lag_p50_s", "lag_p95_s"}
    assert stats["rows"] == 6  # the served gallery was reloaded with the appended rows
