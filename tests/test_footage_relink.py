"""Relinking by appearance, proved with synthetic embeddings: cut at identity switches, merge fragments."""

import numpy as np

from tfclip_cli.footage.relink import Piece, RelinkConfig, cut_points, relink, unlinked, window_bounds
from tfclip_cli.footage.track import Track

PEOPLE = {name: vector for name, vector in zip("ABC", np.eye(3))}


def track(track_id: int, first: int, last: int, camid: int = 0) -> Track:
    frames = tuple(range(first, last + 1))
    boxes = np.array([[i, 0, i + 10, 30] for i in frames], dtype=np.float32)
    return Track(track_id, camid, frames, boxes, np.full(len(frames), 0.9, np.float32))


class FakeEmbedder:
    """Embeds a window as the person who fills most of it, per a hand-written (track id, frame) → person table."""

    def __init__(self, who: dict[int, callable]) -> None:
        self.who = who

    def __call__(self, track: Track, windows: list[tuple[int, int]]) -> np.ndarray:
        rows = []
        for start, stop in windows:
            names = [self.who[track.track_id](i) for i in track.frame_indices[start:stop]]
            rows.append(PEOPLE[max(set(names), key=names.count)] + 0.05)
        return np.array(rows)


def test_windows_cover_the_track_and_a_short_tail_joins_the_last() -> None:
    assert window_bounds(20, 8) == [(0, 8), (8, 20)]
    assert window_bounds(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert window_bounds(5, 8) == [(0, 5)]


def test_cut_where_consecutive_windows_differ() -> None:
    vectors = np.array([PEOPLE["A"], PEOPLE["A"], PEOPLE["B"], PEOPLE["B"], PEOPLE["A"]])
    assert cut_points(vectors, 0.5) == [2, 4]


def test_identity_switch_is_cut_and_each_half_joins_its_person() -> None:
    # the motion tracker swapped A and B where they crossed at frame 16: track 1 is A then B, track 2 B then A
    tracks = [track(1, 0, 31), track(2, 0, 31)]
    who = {1: lambda f: "A" if f < 16 else "B", 2: lambda f: "B" if f < 16 else "A"}
    linked = relink(tracks, FakeEmbedder(who), RelinkConfig(window=8))
    assert len(linked) == 2
    pieces = {link.pieces for link in linked}
    assert pieces == {(Piece(1, 0, 16), Piece(2, 16, 32)), (Piece(2, 0, 16), Piece(1, 16, 32))}
    for link in linked:
        assert link.track.frame_indices == tuple(range(32))  # one person, whole time span, no frame twice


def test_fragments_of_one_person_merge_and_overlapping_ones_do_not() -> None:
    # A lost behind a pillar: tracks 1 (frames 0-15) and 3 (30-45); B (track 2) walks at the same time as track 1
    tracks = [track(1, 0, 15), track(2, 5, 20), track(3, 30, 45)]
    who = {1: lambda f: "A", 2: lambda f: "B", 3: lambda f: "A"}
    linked = relink(tracks, FakeEmbedder(who), RelinkConfig(window=8))
    assert [link.pieces for link in linked] == [(Piece(1, 0, 16), Piece(3, 0, 16)), (Piece(2, 0, 16),)]
    assert linked[0].track.frame_indices == tuple(range(16)) + tuple(range(30, 46))
    np.testing.assert_array_equal(linked[0].track.boxes[16], tracks[2].boxes[0])


def test_two_tracks_of_one_look_at_the_same_time_stay_apart() -> None:
    tracks = [track(1, 0, 15), track(2, 10, 25)]  # identical twins, overlapping in time
    linked = relink(tracks, FakeEmbedder({1: lambda f: "C", 2: lambda f: "C"}), RelinkConfig(window=8))
    assert len(linked) == 2


def test_other_cameras_are_never_merged() -> None:
    tracks = [track(1, 0, 15, camid=0), track(2, 30, 45, camid=1)]
    linked = relink(tracks, FakeEmbedder({1: lambda f: "A", 2: lambda f: "A"}), RelinkConfig(window=8))
    assert len(linked) == 2


def test_motion_only_keeps_tracks_as_they_are() -> None:
    tracks = [track(1, 0, 15), track(2, 30, 45)]
    assert [(link.track, link.pieces) for link in unlinked(tracks)] == [
        (tracks[0], (Piece(1, 0, 16),)),
        (tracks[1], (Piece(2, 0, 16),)),
    ]
