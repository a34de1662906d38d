"""A synthetic camera network streamed live into tfclip watch finds the walkers offline tfclip track finds: the same
cameras, the same frames, the same times (up to where the live clock is anchored)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fake_footage import tiny_checkpoint
from fake_streams import file_handler, lossless_ts, serving
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video, generate_footage
from tfclip_cli.footage.clock import video_start_time
from tfclip_cli.footage.detect import detector_for_video
from tfclip_cli.footage.pipeline import run_video
from tfclip_cli.footage.relink import model_crop_embedder
from tfclip_cli.index import load_index
from tfclip_cli.watch.ingest import Ingest, WatchOptions
from tfclip_cli.watch.sources import ReaderOptions, make_source

SCENE = FootageOptions(walkers=4, cameras=2, image_size=(144, 192), frames=64, seed=5)


def test_a_camera_network_streamed_live_gives_the_tracklets_of_offline_track(tmp_path) -> None:
    generate_footage(tmp_path / "scene", SCENE)
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    videos = [camera_video(tmp_path / "scene", camera) for camera in range(SCENE.cameras)]
    offline = {camera: run_video(video, detector_for_video("gt", video), camid=camera,
                                 embed=model_crop_embedder(checkpoint), progress=iter).tracklets
               for camera, video in enumerate(videos)}
    gallery = tmp_path / "live.faiss"
    ingests = []
    with serving(file_handler(lossless_ts(videos[0], tmp_path / "c0.ts"))) as first, \
            serving(file_handler(lossless_ts(videos[1], tmp_path / "c1.ts"))) as second:
        for camera, url in enumerate((first, second)):  # one watch per camera (each replays its own gt.txt)
            options = WatchOptions(detector=detector_for_video("gt", videos[camera]),
                                   reader=ReaderOptions(fps=10.0, retries=0, queue_frames=1000))
            ingests.append(Ingest([make_source(f"{url}/live.ts", camera=camera)], gallery, checkpoint, options))
        threads = [threading.Thread(target=ingest.run) for ingest in ingests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    rows = load_index(gallery).rows
    for camera, video in enumerate(videos):
        live = rows[rows["camid"] == camera].sort_values(["first_frame", "last_frame"])
        expected = sorted(offline[camera], key=lambda t: (t.first_frame, t.last_frame))
        assert len(expected) >= 2
        assert [(t.first_frame, t.last_frame) for t in expected] == list(zip(live["first_frame"], live["last_frame"]))
        start = video_start_time(video).time
        offline_times = np.array([start + t.start_s for t in expected])
        # the live clock is the stream's timestamps anchored at the first frame's arrival: one shift per camera
        shift = live["start_time"].to_numpy() - offline_times
        assert np.ptp(shift) < 0.05
        assert np.allclose(live["end_time"] - live["start_time"], [t.end_s - t.start_s for t in expected], atol=0.05)
