"""tfclip track's API: videos → tracklet folders in the footage layout, read back by `prepare footage`."""

import json
from pathlib import Path

import numpy as np
import pytest
from fake_footage import write_video, yolo_model
from PIL import Image

from tfclip_cli.datasets import prepare
from tfclip_cli.errors import UserError
from tfclip_cli.footage.tracklets import TrackOptions, camid_from_name, track_videos

# one person standing still: (cx, cy, w, h, person score) in the 64×64 model input; a 160×120 frame is letterboxed
# at ratio 0.4 with 8 px on top, so the box (24, 12, 40, 52) in the input is (60, 10, 100, 110) in the frame
STANDING = np.array([[32, 32, 16, 40, 0.9]] + [[0, 0, 1, 1, 0.0]] * 8, dtype=np.float32).T[None]
BOX = [60.0, 10.0, 100.0, 110.0]


@pytest.fixture
def detector(tmp_path: Path) -> str:
    return str(yolo_model(tmp_path / "standing.onnx", STANDING))


def test_tracklets_are_written_and_prepare_footage_reads_them(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "cam2_lobby.avi"
    write_video(video, 12)
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=detector))
    (done,) = summary.videos
    assert (done.camid, done.frames, done.tracks, done.tracklets, done.fps) == (2, 12, 1, 1, 10.0)
    folder = tmp_path / "out" / "2" / "cam2_lobby" / "0001"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.jpg" for i in range(12)] + ["track.json"]
    assert Image.open(folder / "000005.jpg").size == (40, 100)
    assert json.loads((folder / "track.json").read_text())["boxes"][0] == BOX
    (tracklet,) = prepare("footage", tmp_path / "out").tracklets()
    assert (tracklet.tracklet_id, tracklet.pid, tracklet.camid, tracklet.split) == ("2/cam2_lobby/0001", -1, 2, "gallery")
    origin = tracklet.origin
    assert (origin.source_video, origin.first_frame, origin.last_frame) == (str(video.resolve()), 0, 11)
    assert (origin.start_s, origin.end_s) == (0.0, pytest.approx(1.1))
    assert len(origin.boxes) == 12 and list(origin.boxes[3]) == BOX
    assert [p.name for p in (tmp_path / "out" / "2").iterdir()] == ["cam2_lobby"]  # no work folder left behind


def test_short_tracks_are_not_written(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "c1.avi"
    write_video(video, 12)
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=detector, min_frames=13))
    assert summary.videos[0].tracks == 1 and summary.tracklets == 0
    assert list((tmp_path / "out" / "1" / "c1").iterdir()) == []


def test_existing_output_is_kept_without_force(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "lobby.avi"
    write_video(video, 10)
    options = TrackOptions(detector=detector)
    track_videos([video], tmp_path / "out", options=options, camid=0)
    marker = tmp_path / "out" / "0" / "lobby" / "0001" / "000000.jpg"
    marker.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists"):
        track_videos([video], tmp_path / "out", options=options, camid=0)
    assert marker.read_bytes() == b"precious"
    track_videos([video], tmp_path / "out", options=options, camid=0, force=True)
    assert marker.read_bytes() != b"precious"


def test_camera_numbers_come_from_the_file_or_folder_name(tmp_path: Path) -> None:
    assert camid_from_name(Path("/v/cam2_lobby.mp4")) == 2
    assert camid_from_name(Path("/v/C03.avi")) == 3
    assert camid_from_name(Path("/v/camera12/0800.mp4")) == 12
    assert camid_from_name(Path("/v/clip1.mp4")) is None
    video = tmp_path / "lobby.avi"
    write_video(video, 3)
    with pytest.raises(UserError, match="lobby.avi: no camera number"):
        track_videos([video], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_worker_processes_track_one_video_each(tmp_path: Path, detector: str) -> None:
    videos = [tmp_path / "cam0.avi", tmp_path / "cam1.avi"]
    for video in videos:
        write_video(video, 9)
    summary = track_videos(videos, tmp_path / "out", options=TrackOptions(detector=detector), workers=2)
    assert [(v.camid, v.tracklets) for v in summary.videos] == [(0, 1), (1, 1)]
    assert len(prepare("footage", tmp_path / "out").tracklets()) == 2
