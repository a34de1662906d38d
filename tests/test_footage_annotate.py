"""Annotated footage: the source video with boxes, ids and trails drawn, encoded for browsers; ground truth and
tracker output side by side with identity switches marked."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from fake_footage import STANDING, write_video, yolo_model
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.errors import UserError
from tfclip_cli.footage.annotate import annotate_comparison, annotate_video, colour_of
from tfclip_cli.footage.track import Track

BOX = np.array([40, 20, 80, 100], np.float32)


def _decoded(path: Path) -> tuple[str, np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return stream.codec_context.name, frames


def _source(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _track(track_id: int, frames: range, box: np.ndarray = BOX) -> Track:
    return Track(track_id, 0, tuple(frames), np.tile(box, (len(frames), 1)), np.ones(len(frames), np.float32))


@pytest.mark.parametrize("suffix, codec", [(".mp4", "h264"), (".webm", "vp9")])
def test_annotated_video_keeps_frames_and_size_and_draws_inside_the_box(tmp_path, suffix, codec):
    source = tmp_path / "cam0.avi"
    write_video(source, 10)
    out = tmp_path / f"annotated{suffix}"
    result = annotate_video(source, [_track(3, range(2, 8))], out)
    found, frames = _decoded(out)
    original = _source(source)
    assert found == codec and (result.frames, result.width, result.height) == (10, 160, 120)
    assert frames.shape == original.shape == (10, 120, 160, 3)
    outline = np.s_[20:100, 40:43]  # the box's left edge, 3 px wide
    changed = np.abs(frames.astype(int) - original.astype(int)).max(axis=3)
    assert changed[5][outline].mean() > 60  # drawn in frame 5
    assert changed[0][outline].mean() < 20 and changed[5][110:, :30].mean() < 20  # not drawn: codec noise only
    colour = np.array([int(colour_of(3)[i:i + 2], 16) for i in (1, 3, 5)])
    assert np.abs(frames[5][60, 41].astype(int) - colour).max() < 40


def test_an_odd_sized_video_is_padded_to_even_sides_and_other_suffixes_are_refused(tmp_path):
    source = tmp_path / "odd.mkv"
    with av.open(str(source), "w") as container:  # lossless FFV1 keeps the odd size (MJPG rounds it down)
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 161, 121, "yuv444p"
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((121, 161, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    result = annotate_video(source, [], tmp_path / "odd.mp4")
    assert (result.width, result.height, result.frames) == (162, 122, 3)
    with pytest.raises(UserError, match="as .mp4 \\(H.264\\) or .webm"):
        annotate_video(source, [], tmp_path / "odd.avi.out")
    with pytest.raises(UserError, match="already exists"):
        annotate_video(source, [], tmp_path / "odd.mp4")


def test_comparison_puts_truth_and_output_side_by_side_and_marks_the_switch(tmp_path):
    source = tmp_path / "cam0.avi"
    write_video(source, 10)
    truth = GroundTruth(np.arange(10), np.ones(10, np.int64), np.tile(BOX, (10, 1)))
    tracks = [_track(5, range(0, 5)), _track(6, range(5, 10))]  # track 6 takes person 1 over at frame 5
    result = annotate_comparison(source, truth, tracks, tmp_path / "side.mp4")
    _, frames = _decoded(tmp_path / "side.mp4")
    assert frames.shape == (10, 120, 2 * 160 + 4, 3) and result.frames == 10
    right = frames[:, :, 164:]
    outer = np.s_[16:104, 36:39]  # the switch mark: an outline 4 px outside the box
    vermillion = np.array([0xD5, 0x5E, 0x00])
    is_marked = lambda frame: (np.abs(frame[outer].astype(int) - vermillion).max(axis=-1) < 50).mean() > 0.5
    assert is_marked(right[5]) and is_marked(right[9]) and not is_marked(right[4])
    left_changed = np.abs(frames[:, :, :160].astype(int) - _source(source).astype(int)).max(axis=3)
    assert left_changed[0][20:100, 40:43].mean() > 60  # the ground-truth box on the left from frame 0


def test_track_annotate_writes_a_playable_video_of_the_written_tracklets(tmp_path):
    detector = yolo_model(tmp_path / "standing.onnx", STANDING)
    video = tmp_path / "cam0_door.avi"
    write_video(video, 10)
    out = tmp_path / "tracked.mp4"
    runner = CliRunner()
    arguments = ["track", str(video), "--out", str(tmp_path / "footage"), "--detector", str(detector),
                 "--annotate", str(out), "--keep-static"]  # the fake detector never moves
    result = runner.invoke(app, arguments, terminal_width=300)
    assert result.exit_code == 0, result.output
    codec, frames = _decoded(out)
    assert codec == "h264" and frames.shape == (10, 120, 160, 3)
    changed = np.abs(frames.astype(int) - _source(video).astype(int)).max(axis=3)
    assert changed[:, 10:110, 60:63].mean() > 60  # the standing person's box (60, 10, 100, 110), left edge
    two = runner.invoke(app, ["track", str(video), str(video), "--out", str(tmp_path / "f2"), "--annotate",
                              str(tmp_path / "two.mp4")], terminal_width=300)
    assert two.exit_code == 2 and "--annotate draws one video" in two.output
    bad = runner.invoke(app, [*arguments[:5], "--force", "--annotate", str(tmp_path / "x.avi")], terminal_width=300)
    assert bad.exit_code == 2 and ".webm (VP9)" in bad.output


VP9_AFTER_DECORD = """
import sys
from pathlib import Path
import numpy as np
import tfclip_cli.frames  # decodes with decord: loads decord's own FFmpeg and libvpx
from tfclip_cli.footage.annotate import write_video
print(write_video([np.zeros((64, 48, 3), np.uint8)] * 5, Path(sys.argv[1]), fps=10.0).frames)
"""


def test_a_process_that_loaded_decord_still_encodes_vp9(tmp_path):
    # decord's older libvpx, loaded before PyAV's, made opening the VP9 encoder fail with EINVAL
    run = subprocess.run([sys.executable, "-c", VP9_AFTER_DECORD, str(tmp_path / "out.webm")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "5" and (tmp_path / "out.webm").stat().st_size > 0
