"""footage.clock: a video's absolute start (option, file-name stamp, container tag) and the times it gives tracklets;
`tfclip track` writes them into track.json and they travel through the manifest, embeddings table and gallery."""

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
from fake_footage import STANDING, write_video, yolo_model
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.datasets import prepare
from tfclip_cli.errors import UserError
from tfclip_cli.footage.clock import (
    container_time,
    format_time,
    parse_start_options,
    parse_time,
    stamp_name,
    time_from_name,
    tracklet_times,
    video_start_time,
)
from tfclip_cli.footage.pipeline import PipelineOptions
from tfclip_cli.footage.tracklets import TrackOptions, track_videos
from tfclip_cli.tables import Embeddings, read_embeddings, read_manifest, write_embeddings, write_manifest

NOON = 1796299200.0  # 2026-12-03T12:00:00Z
STILL = PipelineOptions(keep_static=True)  # the fake person stands still: kept, not dropped as a false positive


def test_times_are_read_as_iso_stamps_or_epoch_seconds_and_utc_without_a_zone():
    assert parse_time("2026-12-03T12:00:00") == NOON
    assert parse_time("2026-12-03T12:00:00Z") == NOON
    assert parse_time("2026-12-03T13:00:00+01:00") == NOON
    assert parse_time("20261203T120000") == NOON
    assert parse_time("1796299200.5") == NOON + 0.5
    assert format_time(NOON + 5) == "2026-12-03T12:00:05Z" and stamp_name(NOON) == "20261203T120000"
    with pytest.raises(UserError, match="'noon'.*ISO 8601"):
        parse_time("noon")


def test_the_file_name_rule_reads_a_stamp_anywhere_in_the_stem():
    assert time_from_name(Path("/v/cam2_20261203T120000.mp4")) == NOON
    assert time_from_name(Path("/v/20261203T120000-lobby.avi")) == NOON
    assert time_from_name(Path("/v/cam2_lobby.mp4")) is None
    assert time_from_name(Path("/v/cam2_20261303T120000.mp4")) is None  # month 13 is no date


def _tagged_video(path: Path, creation_time: str | None) -> Path:
    with av.open(str(path), "w") as container:
        if creation_time is not None:
            container.metadata["creation_time"] = creation_time
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_the_container_creation_time_is_used_when_the_name_has_none(tmp_path):
    tagged = _tagged_video(tmp_path / "cam1.mp4", "2026-12-03T12:00:00.000000Z")
    assert container_time(tagged) == NOON
    assert video_start_time(tagged).source == "container" and video_start_time(tagged).time == NOON
    assert container_time(_tagged_video(tmp_path / "cam2.mp4", None)) is None
    assert container_time(tmp_path / "missing.mp4") is None


def test_an_option_beats_the_name_which_beats_the_container(tmp_path):
    named = _tagged_video(tmp_path / "cam1_20261203T130000.mp4", "2026-12-03T12:00:00Z")
    assert video_start_time(named).time == NOON + 3600 and video_start_time(named).source == "name"
    assert video_start_time(named, 5.0).time == 5.0 and video_start_time(named, 5.0).source == "option"


def test_start_options_name_their_video_unless_there_is_one():
    videos = [Path("a.mp4"), Path("b.mp4")]
    assert parse_start_options(["a.mp4=2026-12-03T12:00:00", "b.mp4=10"], videos) == {"a.mp4": NOON, "b.mp4": 10.0}
    assert parse_start_options(["2026-12-03T12:00:00"], [Path("a.mp4")]) == {"a.mp4": NOON}
    with pytest.raises(UserError, match="name the video"):
        parse_start_options(["2026-12-03T12:00:00"], videos)
    with pytest.raises(UserError, match="c.mp4 is not one of the videos"):
        parse_start_options(["c.mp4=10"], videos)


def test_tracklet_times_run_from_the_first_frame_to_the_end_of_the_last():
    assert tracklet_times(NOON, [5, 6, 9], 10.0) == {"start_time": NOON + 0.5, "end_time": NOON + 1.0}
    assert tracklet_times(None, [5, 6], 10.0) == {}


def test_track_writes_absolute_times_that_travel_to_the_embeddings_table(tmp_path, caplog):
    detector = str(yolo_model(tmp_path / "standing.onnx", STANDING))
    named, plain = tmp_path / "cam2_20261203T120000.avi", tmp_path / "cam3_lobby.avi"
    write_video(named, 12)
    write_video(plain, 12)
    with caplog.at_level(logging.WARNING, logger="tfclip_cli.footage.clock"):
        track_videos([named, plain], tmp_path / "out", options=TrackOptions(detector=detector, pipeline=STILL))
    assert "cam3_lobby.avi: no start time" in caplog.text and "cam2_2026" not in caplog.text
    record = json.loads((tmp_path / "out" / "2" / named.stem / "0001" / "track.json").read_text())
    assert (record["start_time"], record["end_time"]) == (NOON, pytest.approx(NOON + 1.1))
    assert json.loads((tmp_path / "out" / "3" / "cam3_lobby" / "0001" / "track.json").read_text())["start_time"] is None
    manifest = prepare("footage", tmp_path / "out")
    by_camera = {t.camid: t.origin for t in manifest.tracklets()}
    assert by_camera[2].start_time == NOON and by_camera[2].end_time == pytest.approx(NOON + 1.1)
    assert by_camera[3].start_time is None and by_camera[3].end_time is None
    write_manifest(manifest, tmp_path / "m.parquet")
    again = read_manifest(tmp_path / "m.parquet")
    assert {t.camid: t.origin for t in again.tracklets()} == by_camera
    rows = again.table
    write_embeddings(Embeddings(rows, np.eye(2, 4, dtype=np.float32), {}), tmp_path / "e.parquet")
    read = read_embeddings(tmp_path / "e.parquet").rows.set_index("camid")
    assert read.loc[2, "start_time"] == NOON and np.isnan(read.loc[3, "start_time"])


def test_track_takes_a_start_time_option(tmp_path):
    detector = str(yolo_model(tmp_path / "standing.onnx", STANDING))
    video = tmp_path / "cam2_lobby.avi"
    write_video(video, 12)
    options = TrackOptions(detector=detector, pipeline=STILL,
                           start_times=parse_start_options(["2026-12-03T12:00:00"], [video]))
    track_videos([video], tmp_path / "out", options=options)
    record = json.loads((tmp_path / "out" / "2" / "cam2_lobby" / "0001" / "track.json").read_text())
    assert record["start_time"] == NOON


def test_cli_track_takes_start_times_and_refuses_an_unreadable_one(tmp_path):
    detector = str(yolo_model(tmp_path / "standing.onnx", STANDING))
    video = tmp_path / "cam2_lobby.avi"
    write_video(video, 12)
    base = ["track", str(video), "--out", str(tmp_path / "out"), "--detector", detector, "--keep-static"]
    bad = CliRunner().invoke(app, base + ["--start-time", "noon"])
    assert bad.exit_code == 2 and "time 'noon'" in bad.output and not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, base + ["--start-time", f"{video}=2026-12-03T13:00:00+01:00"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "2" / "cam2_lobby" / "0001" / "track.json").read_text())
    assert record["start_time"] == NOON
