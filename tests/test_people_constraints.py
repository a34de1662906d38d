"""people.constraints: each rule on hand-made tracklet times, the camera graph's travel times and its file."""

import numpy as np
import pandas as pd
import pytest

from tfclip_cli.datasets.synthetic_footage import FootageOptions, plan_network, write_camera_graph
from tfclip_cli.errors import DataError
from tfclip_cli.people.constraints import (
    CameraGraph,
    CameraLink,
    TrackletTimes,
    cannot_link,
    plausible_moves,
    read_camera_graph,
)

NAN = float("nan")
# cameras 0 - 1 - 2 on a line; 0 and 1 at least 5 s apart, 1 and 2 overlapping views; 3 unconnected
GRAPH = CameraGraph((0, 1, 2, 3), (CameraLink((0, 1), False, 5.0, 20.0), CameraLink((1, 2), True, -3.0, 4.0)))


def _times(*tracklets: tuple) -> TrackletTimes:
    """(camid, start_time, end_time[, video, start_s, end_s]) per tracklet."""
    rows = [t + ("", NAN, NAN)[len(t) - 3:] for t in tracklets]
    camids, starts, ends, videos, start_s, end_s = zip(*rows)
    return TrackletTimes(np.array(camids), np.array(starts, float), np.array(ends, float),
                         np.array(videos, dtype=object), np.array(start_s, float), np.array(end_s, float))


def test_rule_one_camera_never_shows_one_person_twice_at_once():
    times = _times((0, 100, 110), (0, 105, 120), (0, 111, 130))
    assert cannot_link(times).tolist() == [[False, True, False], [True, False, True], [False, True, False]]


def test_rule_one_without_absolute_times_compares_times_within_one_video():
    times = _times((0, NAN, NAN, "a.mp4", 0, 5), (0, NAN, NAN, "a.mp4", 4, 9), (0, NAN, NAN, "b.mp4", 0, 5),
                   (1, NAN, NAN, "c.mp4", 0, 5))
    forbidden = cannot_link(times)
    assert forbidden[0, 1] and not forbidden[0, 2] and not forbidden[1, 2]  # other video: unknown, allowed
    assert not forbidden[0, 3]  # other camera, no absolute time: no rule applies


def test_rule_two_one_place_at_a_time_unless_the_views_overlap():
    times = _times((0, 100, 110), (1, 105, 120), (2, 118, 125), (3, 100.5, 101.5), (3, 104, 120))
    without = cannot_link(times)
    assert without[0, 1] and without[0, 4]  # 5 and 6 s at once: longer than a hand-over
    assert not without[1, 2] and not without[0, 3]  # 2 s and 1 s: a hand-over between views that may overlap
    with_graph = cannot_link(times, GRAPH)
    assert with_graph[0, 1]  # 0 and 1 do not overlap
    assert not with_graph[1, 2]  # 1 and 2 do, for as long as it takes
    assert with_graph[0, 3]  # 3 overlaps no view


def test_rule_three_travel_takes_the_graph_s_shortest_path():
    assert GRAPH.min_travel_s(0, 1) == 5.0 and GRAPH.min_travel_s(0, 2) == 5.0  # the overlap link costs 0
    assert GRAPH.min_travel_s(0, 3) == 0.0 and GRAPH.min_travel_s(2, 2) == 0.0
    times = _times((0, 100, 110), (1, 113, 120), (1, 115.5, 120), (2, 112, 118), (3, 111, 112))
    forbidden = cannot_link(times, GRAPH)
    assert forbidden[0, 1]  # 3 s from camera 0 to camera 1: too fast
    assert not forbidden[0, 2]  # 5.5 s: possible
    assert forbidden[0, 3]  # camera 2 lies behind camera 1: 5 s at least
    assert not forbidden[0, 4]  # camera 3 is not connected: no minimum
    assert not cannot_link(times)[0, 1]  # without a graph only rules 1 and 2


def test_a_long_gap_is_allowed_but_only_a_gap_in_the_window_is_a_plausible_move():
    times = _times((0, 100, 110), (1, 118, 120), (1, 300, 310), (2, 118, 125))
    assert not cannot_link(times, GRAPH)[0, 2]  # 190 s later: may have left and come back
    moves = plausible_moves(times, GRAPH)
    assert moves[0, 1] and moves[1, 0] and not moves[0, 2] and not moves[0, 3]
    assert moves[1, 3]  # overlapping views: in both at once is a plausible move


def test_times_come_from_table_rows_with_missing_columns_unknown():
    rows = pd.DataFrame({"camid": [0, 1], "start_time": [1.0, None], "end_time": [2.0, None]})
    times = TrackletTimes.from_rows(rows)
    assert times.start_time[0] == 1.0 and np.isnan(times.start_time[1]) and np.isnan(times.start_s).all()
    assert list(times.source_video) == ["", ""]


def test_the_graph_the_synthetic_network_writes_is_the_graph_link_reads(tmp_path):
    network = plan_network(FootageOptions(seed=3))
    write_camera_graph(network, tmp_path / "cameras.yaml")
    graph = read_camera_graph(tmp_path / "cameras.yaml")
    assert graph.cameras == (0, 1, 2, 3)
    assert [(link.cameras, link.overlap, link.min_s) for link in graph.links] == [
        (link.cameras, link.overlap, link.min_s) for link in network.links]
    assert all(read.max_s == pytest.approx(drawn.max_s + 2.0) for read, drawn in zip(graph.links, network.links))


@pytest.mark.parametrize("text, message", [
    ("links: [{cameras: [0], min_s: 1, max_s: 2}]", "is not"),
    ("links: [{cameras: [0, 1], min_s: 3, max_s: 2}]", "min_s ≤ max_s"),
    ("links: {a: 1}", "a list of links"),
    ("links: [", "is not YAML"),
])
def test_a_malformed_graph_is_one_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(DataError, match=message) as raised:
        read_camera_graph(tmp_path / "g.yaml")
    assert "g.yaml" in raised.value.message
    with pytest.raises(DataError, match="not found"):
        read_camera_graph(tmp_path / "none.yaml")


def test_a_track_cut_at_one_frame_and_continued_at_the_next_may_be_one_person():
    # a tracklet ends when its last frame does, (last + 1) / fps: frames 0-10 end at 1.1 s, frames 11-20 start there
    cut = _times((0, 100.0, 101.1, "a.mp4", 0.0, 1.1), (0, 101.1, 102.1, "a.mp4", 1.1, 2.1))
    assert not cut_forbidden(cut)
    unknown = _times((0, NAN, NAN, "a.mp4", 0.0, 1.1), (0, NAN, NAN, "a.mp4", 1.1, 2.1))
    assert not cut_forbidden(unknown)
    shared_frame = _times((0, 100.0, 101.1, "a.mp4", 0.0, 1.1), (0, 101.0, 102.1, "a.mp4", 1.0, 2.1))
    assert cut_forbidden(shared_frame)


def cut_forbidden(times: TrackletTimes) -> bool:
    return bool(cannot_link(times)[0, 1])
