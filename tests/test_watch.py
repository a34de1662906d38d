"""tfclip watch: files, folders and loopback streams (MJPEG and MPEG-TS over HTTP) become gallery rows with their
camera, times and key frames; reconnection, drops, a silent host, SIGTERM and restarts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fake_footage import tiny_checkpoint
from fake_streams import (
    ColourDetector,
    Walker,
    file_handler,
    folder_handler,
    mjpeg_handler,
    serving,
    silent_host,
    walkers,
    write_video,
)
from tfclip_cli.cli import app
from tfclip_cli.index import load_index, search, set_person_ids, tracklet_key_frames
from tfclip_cli.watch.ingest import Ingest, WatchOptions, watch
from tfclip_cli.watch.sources import ReaderOptions, make_source, read_sources

START = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc).timestamp()
PEOPLE = walkers(3)  # in view at frames 0-23, 30-53, 60-83
FRAMES = 90
# every frame due, and a queue long enough that a stream sent faster than real time loses none on a busy machine
FAST = ReaderOptions(fps=1e6, retries=0, open_timeout_s=5.0, read_timeout_s=5.0, queue_frames=1000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    return [write_video(folder / f"cam{c}_20261203T12000{c}.mp4", FRAMES, PEOPLE) for c in range(2)]


def _options(**changes: object) -> WatchOptions:
    return WatchOptions(**{"detector": ColourDetector(), "reader": FAST, "status_every_s": 0.2, **changes})


def test_files_become_rows_with_camera_times_key_frames_and_are_searchable(videos, checkpoint, tmp_path) -> None:
    gallery = tmp_path / "g.faiss"
    specs = [make_source(str(video), camera=camera) for camera, video in enumerate(videos)]
    status = watch(specs, gallery, checkpoint, _options())
    loaded = load_index(gallery)
    rows = loaded.rows.sort_values(["camid", "first_frame"]).reset_index(drop=True)
    assert list(rows["camid"]) == [0, 0, 0, 1, 1, 1]
    # each walker is one tracklet, filmed from (its entering frame) / 10 fps after the file's stamped start
    expected = [START + camera + walker.enter / 10 for camera in range(2) for walker in PEOPLE]
    assert np.allclose(rows["start_time"], expected, atol=0.15)
    assert np.allclose(rows["end_time"] - rows["start_time"], [2.4] * 6, atol=0.25)
    assert [s.tracklets_appended for s in status.sources] == [3, 3]
    assert [s.state for s in status.sources] == ["ended", "ended"]
    for tracklet_id in rows["tracklet_id"]:
        assert tracklet_key_frames(loaded, tracklet_id).shape[0] == 1  # the full frame of its file
        assert all(Path(frame).is_file() for frame in rows.set_index("tracklet_id").loc[tracklet_id, "frames"])
    vectors = loaded.index.reconstruct_n(0, loaded.info.count)
    found = search(loaded, vectors, top_k=1)
    assert all(hits[0].score > 0.999 for hits in found)  # each row finds itself (or its twin walker)


def test_a_file_done_is_not_read_again_on_restart(videos, checkpoint, tmp_path) -> None:
    gallery = tmp_path / "g.faiss"
    spec = make_source(str(videos[0]), camera=0)
    watch([spec], gallery, checkpoint, _options())
    again = watch([spec], gallery, checkpoint, _options())
    assert again.sources[0].tracklets_appended == 0
    assert load_index(gallery).info.count == 3


def test_cli_watch_writes_the_json_status_with_the_stats_shape(videos, checkpoint, tmp_path) -> None:
    gt = tmp_path / "gt.txt"
    _write_gt(gt)
    status = tmp_path / "status.json"
    result = CliRunner().invoke(app, ["watch", str(videos[0]), "--gallery", str(tmp_path / "g.faiss"), "-c",
                                      str(checkpoint), "--detector", f"gt:{gt}", "--fps", "10",
                                      "--json-status", str(status)])
    assert result.exit_code == 0, result.output
    figures = json.loads(status.read_text())["sources"]
    assert list(figures[0]) == ["name", "camera", "state", "frames_read", "frames_processed", "frames_dropped",
                                "reconnects", "open_tracks", "tracklets_appended", "lag_p50_s", "lag_p95_s"]
    assert figures[0]["camera"] == 0 and figures[0]["state"] == "ended"
    assert figures[0]["tracklets_appended"] == load_index(tmp_path / "g.faiss").info.count == 3
    assert "appended 3" in result.output


def _write_gt(path: Path) -> None:
    lines = []
    for pid, walker in enumerate(PEOPLE, 1):
        for index in range(walker.enter, walker.enter + walker.frames):
            x1, y1, x2, y2 = walker.box(index)
            lines.append(f"{index + 1},{pid},{x1},{y1},{x2 - x1},{y2 - y1},1,-1,-1,-1\n")
    path.write_text("".join(lines))


def _in_thread(ingest: Ingest) -> threading.Thread:
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    return thread


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_folder_takes_files_once_written_oldest_first_and_once_across_restarts(videos, checkpoint,
                                                                                 tmp_path) -> None:
    folder, gallery = tmp_path / "nvr", tmp_path / "g.faiss"
    folder.mkdir()
    shutil.copy(videos[0], folder / videos[0].name)
    options = _options(reader=ReaderOptions(fps=1e6, settle_s=0.5))
    spec = make_source(str(folder), camera=0)
    ingest = Ingest([spec], gallery, checkpoint, options)
    thread = _in_thread(ingest)
    _wait(lambda: ingest.status().sources[0].tracklets_appended == 3)
    data = videos[1].read_bytes()  # a file still being written: taken only once complete
    with open(folder / "cam0_20261203T120100.mp4", "wb") as growing:
        for start in range(0, len(data), len(data) // 4 + 1):
            growing.write(data[start:start + len(data) // 4 + 1])
            growing.flush()
            time.sleep(0.2)
    _wait(lambda: ingest.status().sources[0].tracklets_appended == 6)
    ingest.stop()
    thread.join(30)
    rows = load_index(gallery).rows
    assert len(rows) == 6 and rows["tracklet_id"].is_unique
    later = START + 60 + np.array([w.enter / 10 for w in PEOPLE])
    assert np.allclose(np.sort(rows["start_time"])[3:], later, atol=0.15)
    (folder / "cam0_20261203T120200.mp4").write_bytes(videos[0].read_bytes())
    restarted = Ingest([spec], gallery, checkpoint, options)
    thread = _in_thread(restarted)
    _wait(lambda: restarted.status().sources[0].tracklets_appended == 3)
    restarted.stop()
    thread.join(30)
    assert load_index(gallery).info.count == 9  # the two files done before were not read again


def test_an_mjpeg_stream_that_stops_and_comes_back_loses_no_tracklet(checkpoint, tmp_path) -> None:
    handler = mjpeg_handler([range(0, 40), range(40, FRAMES)], PEOPLE, fps=50)
    with serving(handler) as url:
        options = _options(reader=ReaderOptions(fps=1e6, retries=1, open_timeout_s=5, read_timeout_s=5,
                                                queue_frames=1000))
        status = watch([make_source(url + "/video", camera=3, name="door")], tmp_path / "g.faiss", checkpoint,
                       options)
    source = status.sources[0]
    assert source.reconnects >= 1 and source.state == "failed"  # the second piece ended, then 404: given up
    assert source.frames_read == FRAMES and source.frames_dropped == 0
    rows = load_index(tmp_path / "g.faiss").rows
    assert source.tracklets_appended == len(rows) >= len(PEOPLE)
    assert set(rows["camid"]) == {3} and rows["tracklet_id"].str.startswith("c3/door/").all()
    loaded = load_index(tmp_path / "g.faiss")
    for tracklet_id in rows["tracklet_id"]:  # a stream cannot be read again: its first, middle and last crop
        assert tracklet_key_frames(loaded, tracklet_id).shape[0] == 3
    # nobody is lost: the first walker, the second before the outage (frames 30-39), and after it (the frame numbers
    # go on past the time the stream was away) the second, followed across the outage or as a new tracklet, and
    # the third
    frames = [set(indices) for indices in rows["frame_indices"]]
    assert any(set(range(2, 22)) <= seen for seen in frames) and any(set(range(32, 39)) <= seen for seen in frames)
    assert (rows["last_frame"] > 40).sum() == 2 and len(rows) in (3, 4), (rows[["first_frame", "last_frame"]], source)
    assert source.open_tracks == 0


def test_a_stream_faster_than_the_pipeline_drops_frames_and_counts_them(checkpoint, tmp_path) -> None:
    class SlowDetector(ColourDetector):
        def detect(self, frame, *, frame_index):
            time.sleep(0.03)
            return super().detect(frame, frame_index=frame_index)

    with serving(mjpeg_handler([range(0, 300)], walkers(10), fps=None)) as url:
        options = _options(detector=SlowDetector(),
                           reader=ReaderOptions(fps=1e6, retries=0, queue_frames=4))  # every frame due
        status = watch([make_source(url, camera=0)], tmp_path / "g.faiss", checkpoint, options)
    source = status.sources[0]
    assert source.frames_dropped > 0
    assert source.frames_read == 300 == source.frames_processed + source.frames_dropped


def test_a_stream_slower_than_the_pipeline_drops_nothing(checkpoint, tmp_path) -> None:
    with serving(mjpeg_handler([range(0, 60)], PEOPLE, fps=30)) as url:
        status = watch([make_source(url, camera=0)], tmp_path / "g.faiss", checkpoint, _options())
    source = status.sources[0]
    assert source.frames_dropped == 0 and source.frames_processed == source.frames_read == 60
    assert source.lag_p95_s is not None and source.lag_p95_s < 60  # bounded: appended while the stream ran


def test_mpeg_ts_over_http_keeps_the_stream_clock(checkpoint, tmp_path) -> None:
    stream = write_video(tmp_path / "camera.ts", FRAMES, PEOPLE, fps=10)
    with serving(file_handler(stream)) as url:
        before = time.time()
        status = watch([make_source(url + "/live.ts", camera=1)], tmp_path / "g.faiss", checkpoint, _options())
    rows = load_index(tmp_path / "g.faiss").rows.sort_values("first_frame")
    assert status.sources[0].tracklets_appended == len(rows) == 3
    # the stream's timestamps, anchored at the first frame's arrival: walkers 3 s apart stay 3 s apart
    assert np.allclose(np.diff(rows["start_time"]), [3.0, 3.0], atol=0.15)
    assert before - 1 < rows["start_time"].iloc[0] < time.time()


def test_hls_over_http_is_read_segment_after_segment(checkpoint, tmp_path) -> None:
    (tmp_path / "hls").mkdir()
    write_video(tmp_path / "hls" / "camera.m3u8", FRAMES, PEOPLE, fps=10)
    with serving(folder_handler(tmp_path / "hls")) as url:
        status = watch([make_source(url + "/camera.m3u8", camera=2)], tmp_path / "g.faiss", checkpoint, _options())
    rows = load_index(tmp_path / "g.faiss").rows.sort_values("first_frame")
    assert status.sources[0].frames_read == FRAMES and len(rows) == 3
    assert np.allclose(np.diff(rows["start_time"]), [3.0, 3.0], atol=0.15)


def test_a_source_that_never_answers_is_named_and_the_others_go_on(videos, checkpoint, tmp_path, caplog) -> None:
    with silent_host() as url, caplog.at_level(logging.WARNING):
        options = _options(reader=ReaderOptions(fps=1e6, retries=1, open_timeout_s=1, read_timeout_s=1))
        status = watch([make_source(url, camera=0), make_source(str(videos[1]), camera=1)], tmp_path / "g.faiss",
                       checkpoint, options)
    silent, file = status.sources
    assert silent.state == "failed" and silent.frames_read == 0
    assert file.state == "ended" and file.tracklets_appended == 3
    assert any(url in record.getMessage() and "given up" in record.getMessage() for record in caplog.records)


def test_sources_yaml_names_cameras_and_clocks(videos, tmp_path) -> None:
    path = tmp_path / "streams.yaml"
    path.write_text(f"cameras:\n  - {{id: 4, name: lobby, url: 'rtsp://10.0.0.5/s1'}}\n"
                    f"  - {{id: 7, url: '{videos[0].parent}', clock: arrival}}\n  - {{id: 2, url: '0'}}\n")
    lobby, folder, webcam = read_sources(path)
    assert (lobby.camera, lobby.name, lobby.kind, lobby.clock) == (4, "lobby", "stream", "stream")
    assert (folder.camera, folder.kind, folder.clock) == (7, "folder", "arrival")
    assert (webcam.kind, webcam.clock) == ("webcam", "arrival")
    path.write_text("cameras:\n  - {id: 1, url: 'rtsp://a/1'}\n  - {id: 1, url: 'rtsp://a/2'}\n")
    with pytest.raises(Exception, match="camera ids \\[1\\] appear more than once"):
        read_sources(path)


def test_sigterm_appends_the_open_tracklets_and_exits_143(checkpoint, tmp_path) -> None:
    gt = tmp_path / "gt.txt"
    _write_gt(gt)
    status_file, gallery = tmp_path / "status.json", tmp_path / "g.faiss"
    with serving(mjpeg_handler([range(0, 100_000)], PEOPLE, fps=20)) as url:
        process = subprocess.Popen(
            [sys.executable, "-m", "tfclip_cli", "watch", url, "-g", str(gallery), "-c", str(checkpoint),
             "--detector", f"gt:{gt}", "--fps", "20", "--json-status", str(status_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        try:
            # the first walker has been appended and the second is in view: an open tracklet
            _wait(lambda: status_file.exists() and json.loads(status_file.read_text())["sources"][0][
                "frames_processed"] >= 40, timeout=120)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 143, stderr
    final = json.loads(status_file.read_text())["sources"][0]
    loaded = load_index(gallery)
    assert final["tracklets_appended"] == loaded.info.count >= 2
    assert final["open_tracks"] == 0


def test_tracklets_join_the_people_of_a_linked_gallery(videos, checkpoint, tmp_path) -> None:
    gallery = tmp_path / "g.faiss"
    watch([make_source(str(videos[0]), camera=0)], gallery, checkpoint, _options())
    first = load_index(gallery).rows.sort_values("first_frame")
    set_person_ids(gallery, {tracklet_id: number for number, tracklet_id in enumerate(first["tracklet_id"], 10)})
    watch([make_source(str(videos[1]), camera=1)], gallery, checkpoint, _options())
    rows = load_index(gallery).rows
    later = rows[rows["camid"] == 1].sort_values("first_frame")
    # camera 1 films the same three walkers (drawn alike): each joins the person of its twin in camera 0
    assert list(later["person_id"]) == [10, 11, 12]


def _watch_process(folder: Path, gallery: Path, checkpoint: Path, gt: Path, status: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tfclip_cli", "watch", str(folder), "-g", str(gallery), "-c", str(checkpoint),
         "--detector", f"gt:{gt}", "--fps", "10", "--json-status", str(status)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_kill_9_leaves_a_valid_gallery_and_a_restart_goes_on_without_repeating(videos, checkpoint, tmp_path) -> None:
    gt, status, gallery, folder = tmp_path / "gt.txt", tmp_path / "status.json", tmp_path / "g.faiss", tmp_path / "in"
    _write_gt(gt)
    folder.mkdir()
    for minute in range(3):
        shutil.copy(videos[0], folder / f"cam0_2026120312{minute:02d}00.mp4")
    process = _watch_process(folder, gallery, checkpoint, gt, status)
    try:
        _wait(lambda: status.exists() and json.loads(status.read_text())["sources"][0]["tracklets_appended"] >= 2,
              timeout=120)
        process.kill()  # SIGKILL: no chance to close anything
        process.wait()
        killed_at = load_index(gallery).info.count  # the gallery opens, whatever the moment
        assert killed_at >= 2
        status.unlink()
        process = _watch_process(folder, gallery, checkpoint, gt, status)
        _wait(lambda: status.exists() and load_index(gallery).info.count >= 9, timeout=120)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143
    rows = load_index(gallery).rows
    assert len(rows) == 9 and rows["tracklet_id"].is_unique  # three files, three walkers each, none twice
    assert json.loads((tmp_path / "g.faiss.watch.json").read_text())["files"].keys() == {
        str((folder / f"cam0_2026120312{minute:02d}00.mp4").resolve()) for minute in range(3)}


def test_a_missing_source_is_one_error_line_before_any_work(checkpoint, tmp_path) -> None:
    result = CliRunner().invoke(app, ["watch", str(tmp_path / "nowhere.mp4"), "-g", str(tmp_path / "g.faiss"), "-c",
                                      str(checkpoint)])
    assert result.exit_code == 2 and "nowhere.mp4 not found" in result.output
    result = CliRunner().invoke(app, ["watch", "ftp://10.0.0.5/x", "-g", str(tmp_path / "g.faiss"), "-c",
                                      str(checkpoint)])
    assert result.exit_code == 2 and "unknown scheme ftp://" in result.output
    assert not (tmp_path / "g.faiss").exists()


def test_a_file_that_does_not_decode_fails_alone(videos, checkpoint, tmp_path, caplog) -> None:
    broken = tmp_path / "cam5_broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    with caplog.at_level(logging.ERROR):
        status = watch([make_source(str(broken), camera=5), make_source(str(videos[0]), camera=0)],
                       tmp_path / "g.faiss", checkpoint, _options())
    assert [s.state for s in status.sources] == ["failed", "ended"]
    assert status.sources[1].tracklets_appended == 3
    assert any("cam5_broken.mp4" in record.getMessage() for record in caplog.records)


def test_two_people_entering_at_one_frame_and_leaving_apart_are_two_rows(checkpoint, tmp_path) -> None:
    people = [Walker((220, 40, 40), 0, 20, 10), Walker((40, 60, 220), 0, 120, 70)]  # both in view from frame 0
    video = write_video(tmp_path / "cam0_20261203T120000.mp4", 150, people)
    status = watch([make_source(str(video), camera=0)], tmp_path / "g.faiss", checkpoint, _options())
    rows = load_index(tmp_path / "g.faiss").rows.sort_values("last_frame")
    # handed over far apart (the first once gone for the relinking window, the second at the end of the file),
    # both start at frame 0: each keeps its own id
    assert status.sources[0].tracklets_appended == 2
    assert list(rows["first_frame"]) == [0, 0] and list(rows["last_frame"]) == [19, 119]
    assert rows["tracklet_id"].is_unique


WATCH_ONNX = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from fake_streams import ColourDetector
from tfclip_cli.watch.ingest import WatchOptions, watch
from tfclip_cli.watch.sources import ReaderOptions, make_source
video, gallery, model = map(Path, sys.argv[1:4])
reader = ReaderOptions(fps=1e6, retries=0, open_timeout_s=5.0, read_timeout_s=5.0, queue_frames=1000)
status = watch([make_source(str(video), camera=0)], gallery, model, WatchOptions(detector=ColourDetector(),
                                                                                 reader=reader))
loaded = sorted(name for name in ("torch", "open_clip", "torchvision") if name in sys.modules)
print(json.dumps({"appended": status.sources[0].tracklets_appended, "loaded": loaded}))
"""


def test_watch_with_an_exported_file_never_imports_torch_and_appends_the_torch_embeddings(videos, checkpoint,
                                                                                          tmp_path) -> None:
    from tfclip_cli.export import cached_export

    model = cached_export(checkpoint)
    run = subprocess.run([sys.executable, "-c", WATCH_ONNX, str(videos[0]), str(tmp_path / "onnx.faiss"), str(model),
                          str(Path(__file__).parent)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer == {"appended": 3, "loaded": []}
    watch([make_source(str(videos[0]), camera=0)], tmp_path / "torch.faiss", checkpoint, _options())
    on_onnx, on_torch = load_index(tmp_path / "onnx.faiss"), load_index(tmp_path / "torch.faiss")
    assert list(on_onnx.rows["tracklet_id"]) == list(on_torch.rows["tracklet_id"])
    np.testing.assert_allclose(on_onnx.index.reconstruct_n(0, 3), on_torch.index.reconstruct_n(0, 3), atol=1e-4)
