"""tfclip track's API: videos → tracklet folders in the footage layout, read back by `prepare footage`."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fake_footage import STANDING, tiny_checkpoint, write_video, yolo_model
from PIL import Image
from rich.console import Console

from tfclip_cli import display
from tfclip_cli.datasets import prepare
from tfclip_cli.errors import UserError
from tfclip_cli.footage.detection import Detection
from tfclip_cli.footage.pipeline import PipelineOptions
from tfclip_cli.footage import tracklets
from tfclip_cli.footage.tracklets import TrackOptions, camid_from_name, interleave, track_one_video, track_videos

BOX = [60.0, 10.0, 100.0, 110.0]  # STANDING's box in a 160×120 frame
STILL = PipelineOptions(keep_static=True)  # STANDING never moves: kept only when asked


@pytest.fixture
def detector(tmp_path: Path) -> str:
    return str(yolo_model(tmp_path / "standing.onnx", STANDING))


class ScriptedDetector:
    """Returns the boxes written for each frame index, as they are (not clipped to the frame)."""

    name = "scripted"

    def __init__(self, boxes: dict[int, tuple[float, float, float, float]]) -> None:
        self.boxes = boxes

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        return [Detection(self.boxes[frame_index], 0.9)] if frame_index in self.boxes else []


def _written(folder: Path) -> tuple[dict, list[tuple[int, int]]]:
    """The track.json of a tracklet folder and the (width, height) of its crops."""
    return json.loads((folder / "track.json").read_text()), [Image.open(p).size for p in sorted(folder.glob("*.jpg"))]


def test_tracklets_are_written_and_prepare_footage_reads_them(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "cam2_lobby.avi"
    write_video(video, 12)
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=detector, pipeline=STILL))
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
    assert (origin.start_s, origin.end_s) == (0.0, pytest.approx(1.2))  # 12 frames at 10 fps: the last ends at 1.2 s
    assert origin.frame_indices == tuple(range(12))
    assert len(origin.boxes) == 12 and list(origin.boxes[3]) == BOX
    assert [p.name for p in (tmp_path / "out" / "2").iterdir()] == ["cam2_lobby"]  # no work folder left behind


def test_short_tracks_are_not_written(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "c1.avi"
    write_video(video, 12)
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(
        detector=detector, pipeline=PipelineOptions(min_frames=13, keep_static=True)))
    assert summary.videos[0].tracks == 1 and summary.tracklets == 0
    assert list((tmp_path / "out" / "1" / "c1").iterdir()) == []


def test_existing_output_is_kept_without_force(tmp_path: Path, detector: str) -> None:
    video = tmp_path / "lobby.avi"
    write_video(video, 10)
    options = TrackOptions(detector=detector, pipeline=STILL)
    track_videos([video], tmp_path / "out", options=options, camid=0)
    marker = tmp_path / "out" / "0" / "lobby" / "0001" / "000000.jpg"
    marker.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists"):
        track_videos([video], tmp_path / "out", options=options, camid=0)
    assert marker.read_bytes() == b"precious"
    track_videos([video], tmp_path / "out", options=options, camid=0, force=True)
    assert marker.read_bytes() != b"precious"


def test_boxes_overhanging_the_frame_are_clipped_whatever_the_detector(tmp_path: Path) -> None:
    video = tmp_path / "cam0.avi"
    write_video(video, 12)  # 160×120
    walking = ScriptedDetector({f: (-20.0 + 3 * f, -10.0, 20.0 + 3 * f, 90.0) for f in range(12)})  # past the corner
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=walking))
    assert summary.tracklets == 1
    record, sizes = _written(tmp_path / "out" / "0" / "cam0" / "0001")
    boxes = np.array(record["boxes"])
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 160 and boxes[:, 3].max() <= 120
    assert boxes[0, :2].tolist() == [0.0, 0.0] and sizes[0] == (20, 90)  # the part inside the frame, no more


def test_a_person_walking_out_of_the_frame_leaves_no_sliver_crops(tmp_path: Path) -> None:
    video = tmp_path / "cam0.avi"
    write_video(video, 24)  # 160×120
    # 40 px wide, standing at x 100 for 10 frames, then walking right 8 px a frame until it is out of the picture
    boxes = {f: (100.0 + 8 * max(f - 9, 0), 10.0, 140.0 + 8 * max(f - 9, 0), 110.0) for f in range(24)}
    summary = track_videos([video], tmp_path / "out", options=TrackOptions(detector=ScriptedDetector(boxes)))
    assert summary.tracklets == 1
    record, sizes = _written(tmp_path / "out" / "0" / "cam0" / "0001")
    assert min(width for width, _ in sizes) >= PipelineOptions.min_side  # no 2-pixel crops of the frame's edge
    # the detection at frame 16 (x 148..160) is the last with 8 px or more inside the frame; the tracked box lags it
    count = len(record["frame_indices"])
    assert 14 <= count <= 17 and record["frame_indices"] == list(range(count))
    assert np.array(record["boxes"])[:, 2].max() <= 160


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
    summary = track_videos(videos, tmp_path / "out", options=TrackOptions(detector=detector, pipeline=STILL),
                           workers=2)
    assert [(v.camid, v.tracklets) for v in summary.videos] == [(0, 1), (1, 1)]
    assert len(prepare("footage", tmp_path / "out").tracklets()) == 2


def test_the_appearance_model_gets_the_thread_count_torch_has_one_in_a_worker(
    tmp_path: Path, detector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    given = []

    def recording(checkpoint: Path, **options):
        given.append(options.get("threads"))
        return lambda clips: np.ones((len(clips), 4), np.float32)

    monkeypatch.setattr(tracklets, "model_crop_embedder", recording)
    video = tmp_path / "cam0.avi"
    write_video(video, 9)
    options = TrackOptions(detector=detector, checkpoint=tmp_path / "model.onnx", pipeline=STILL)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker process starts (`_start_worker`)
    try:
        track_one_video(video, tmp_path / "out" / "cam0", camid=0, options=options, progress=None)
    finally:
        torch.set_num_threads(previous)
    assert given == [1]


def test_a_checkpoint_relinks_the_tracks_by_model_embeddings(tmp_path: Path, detector: str) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    video = tmp_path / "cam0.avi"
    write_video(video, 16)
    options = TrackOptions(detector=detector, checkpoint=checkpoint, pipeline=STILL)
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
