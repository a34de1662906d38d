"""`tfclip evaluate-tracks`: the JSON other tools read, both input layouts, the table, and bad input as exit 2."""

from __future__ import annotations

import json

import pytest
from fake_tracking_files import ROWS, write_aicity, write_mot_folder
from typer.testing import CliRunner

from tfclip_cli.cli import app

# person 1 followed by track 7 in both cameras; person 2 (camera 1) by track 8 for its one frame
RESULT = [(1, 7, 1, 10, 20, 30, 60), (1, 8, 1, 100, 20, 30, 60), (1, 7, 2, 12, 20, 30, 60), (2, 7, 4, 50, 5, 20, 40)]


def _run(*args: str):
    return CliRunner().invoke(app, ["evaluate-tracks", *args], terminal_width=200)


def test_json_has_exactly_the_published_names_and_the_same_scores_from_both_layouts(tmp_path):
    aicity_truth = write_aicity(ROWS, tmp_path / "mtmc_gt.txt")
    mot_result = write_mot_folder(RESULT, tmp_path / "result", "cam{}.txt")
    mot_truth = write_mot_folder(ROWS, tmp_path / "footage", "cam{}/gt.txt")
    aicity_result = write_aicity(RESULT, tmp_path / "result.txt")
    first = _run(str(mot_result), "--gt", str(aicity_truth), "--json")
    second = _run(str(aicity_result), "--gt", str(mot_truth), "--json")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    report = json.loads(first.stdout)
    assert json.loads(second.stdout) == report
    assert list(report) == ["cameras", "network"]
    assert list(report["cameras"]) == ["1", "2"]
    for scores in report["cameras"].values():
        assert list(scores) == ["mota", "idf1", "hota", "deta", "assa", "id_switches"]
    assert list(report["network"]) == ["idf1", "hota", "deta", "assa"]
    assert report["cameras"]["2"] == {"mota": 1.0, "idf1": 1.0, "hota": 1.0, "deta": 1.0, "assa": 1.0,
                                      "id_switches": 0}
    assert report["network"] == {"idf1": 1.0, "hota": 1.0, "deta": 1.0, "assa": 1.0}


def test_the_table_shows_each_camera_and_the_network_in_percent(tmp_path):
    truth = write_aicity(ROWS, tmp_path / "gt.txt")
    result = write_aicity([r for r in RESULT if r[0] == 1], tmp_path / "result.txt")  # camera 2: no one found
    ran = _run(str(result), "--gt", str(truth))
    assert ran.exit_code == 0, ran.output
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in ran.stdout.splitlines() if line.count("│") == 8}
    assert rows["1"] == ["100.0%"] * 5 + ["0"]
    assert rows["2"] == ["0.0%"] * 5 + ["0"]
    # 3 of 4 boxes found: IDF1 2·3 / (4 + 3), DetA 3/4; person 1's 3 boxes hold 2 TPs of track 7 (2 boxes):
    # AssA (2 · 2/3 + 1 · 1) / 3 = 7/9; HOTA √(3/4 · 7/9)
    assert rows["network"] == ["", "85.7%", "76.4%", "75.0%", "77.8%", ""]


@pytest.mark.parametrize("which", ["result", "truth"])
def test_a_missing_input_is_one_line_and_exit_two(tmp_path, which):
    present = write_aicity(ROWS, tmp_path / "present.txt")
    missing = tmp_path / "absent.txt"
    args = [str(missing), "--gt", str(present)] if which == "result" else [str(present), "--gt", str(missing)]
    ran = _run(*args)
    assert ran.exit_code == 2
    assert "absent.txt" in ran.output and "Traceback" not in ran.output


def test_a_malformed_line_is_exit_two_naming_the_file_and_line(tmp_path):
    truth = write_aicity(ROWS, tmp_path / "gt.txt")
    result = write_mot_folder(RESULT, tmp_path / "result", "cam{}.txt")
    (result / "cam2.txt").write_text("4,7,50,5,20,40,1,-1,-1,-1\n4,8,50,5,x,40,1,-1,-1,-1\n")
    ran = _run(str(result), "--gt", str(truth))
    assert ran.exit_code == 2
    assert "cam2.txt, line 2" in " ".join(ran.output.split()) and "Traceback" not in ran.output


def test_annotate_draws_the_camera_the_video_films_side_by_side(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    truth = write_mot_folder(ROWS, tmp_path / "footage", "cam{}/gt.txt")
    result = write_mot_folder(RESULT, tmp_path / "result", "cam{}.txt")
    video = tmp_path / "cam1.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), 90, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "side.mp4"
    ran = _run(str(result), "--gt", str(truth), "--annotate", str(out), "--video", str(video))
    assert ran.exit_code == 0, ran.output
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape[1] > 2 * 160  # truth and tracks side by side
    assert "wrote" in ran.stderr
    alone = _run(str(result), "--gt", str(truth), "--annotate", str(tmp_path / "x.mp4"))
    assert alone.exit_code == 2 and "--video" in alone.output
    unnamed = tmp_path / "lobby.mp4"
    unnamed.write_bytes(video.read_bytes())
    ran = _run(str(result), "--gt", str(truth), "--annotate", str(tmp_path / "y.mp4"), "--video", str(unnamed))
    assert ran.exit_code == 2 and "camera number" in ran.output
