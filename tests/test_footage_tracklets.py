"""tfclip track's API: videos → tracklet folders in the footage layout, read back by `prepare footage`."""

import io
import json
from pathlib import Path

import pytest
from fake_footage import STANDING, tiny_checkpoint, write_video, yolo_model
from PIL import Image
from rich.console import Console

from tfclip_cli import display
from tfclip_cli.datasets import prepare
from tfclip_cli.errors import UserError
from tfclip_cli.footage.tracklets import TrackOptions, camid_from_name, interleave, track_videos

BOX = [60.0, 10.0, 100.0, 110.0]  # STANDING's box in a 160×120 frame


@pytest.fixture
def detector(tmp_path: Path) -> str:
    return str(yolo_model(tmp_path / "standing.onnx", STANDING))


def test_tracklets_are_written_and_prepare_footage_reads_them(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "cam2_lobby.avi"
    write_video(video, 12)
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=detector))
    assert summary.detector == "standing.onnx" and not summary.relinked
    (done,) = summary.videos
    assert (done.camid, done.frames, done.tracks, done.tracklets, done.fps) == (2, 12, 1, 1, 10.0)
    folder = tmp_path / "out" / "2" / "cam2_lobby" / "0001"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.jpg" for i in range(12)] + ["track.json"]
    assert Image.open(folder / "000005.jpg").size == (40, 100)
    assert json.loads((folder / "track.json").read_text())["boxes"][0] == BOX
    (tracklet,) = prepare("footage", tmp_path / "out").tracklets()
    assert (tracklet.tracklet_id, tracklet.pid, tracklet.camid) == ("2/cam2_lobby/0001", -1, 2)
    assert tracklet.split == "gallery"
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


def test_a_checkpoint_relinks_the_tracks_by_model_embeddings(tmp_path: Path, detector: str) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    video = tmp_path / "cam0.avi"
    write_video(video, 16)
    options = TrackOptions(detector=detector, checkpoint=checkpoint)
    summary = track_videos([video], tmp_path / "out", options=options)
    assert summary.relinked and summary.videos[0].tracklets == 1
    (tracklet,) = prepare("footage", tmp_path / "out").tracklets()
    assert tracklet.origin.first_frame == 0 and tracklet.origin.last_frame == 15  # one person, never cut


def test_torchrun_shards_merge_back_in_video_order() -> None:
    videos = list("abcdefg")
    for world_size in (1, 2, 3, 7, 9):
        assert interleave([videos[rank::world_size] for rank in range(world_size)]) == videos


def test_progress_board_shows_a_bar_per_video(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(display, "stderr", terminal)
    with display.progress_board(["tracking a.mp4", "tracking b.mp4"], [10, 20], unit="frames") as advance:
        advance(1, 20)
        advance(0, 5)
    shown = terminal.file.getvalue()
    assert "tracking a.mp4" in shown and "5/10" in shown and "tracking b.mp4" in shown and "20/20" in shown
