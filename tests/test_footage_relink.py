"""Relinking by appearance, proved with synthetic embeddings: cut at identity switches, merge fragments."""

import dataclasses
import functools

import numpy as np

from tfclip_cli.footage.relink import (
    SPAN_SAMPLING,
    Piece,
    RelinkConfig,
    TrackSpans,
    _fragments,
    can_follow,
    contact_windows,
    contacts,
    crop_span_embedder,
    cut_points,
    least_similarity,
    link_fragments,
    plan_spans,
    relink,
    span_edges,
    unlinked,
    window_bounds,
)
from tfclip_cli.footage.track import Track
from tfclip_cli.frames import FrameTransform
from tfclip_cli.runtime import embed_crop_tracklets

PEOPLE = {name: vector for name, vector in zip("ABC", np.eye(3))}


def track(track_id: int, first: int, last: int, camid: int = 0, x: int = 0) -> Track:
    """A person 30 px tall walking right 1 px a frame, from ``x`` at frame 0."""
    frames = tuple(range(first, last + 1))
    boxes = np.array([[x + i, 0, x + i + 10, 30] for i in frames], dtype=np.float32)
    return Track(track_id, camid, frames, boxes, np.full(len(frames), 0.9, np.float32))


class FakeEmbedder:
    """Embeds a span as the person who fills most of it, per a hand-written (track id, frame) → person table, and
    remembers the spans it was asked for, one list per call."""

    def __init__(self, who: dict[int, callable]) -> None:
        self.who = who
        self.calls: list[list[list[tuple[int, int]]]] = []

    def __call__(self, tracks: list[Track], spans: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        self.calls.append([list(track_spans) for track_spans in spans])
        return [self.embed(track, track_spans) for track, track_spans in zip(tracks, spans)]

    def embed(self, track: Track, spans: list[tuple[int, int]]) -> np.ndarray:
        rows = []
        for start, stop in spans:
            names = [self.who[track.track_id](i) for i in track.frame_indices[start:stop]]
            rows.append(PEOPLE[max(set(names), key=names.count)] + 0.05)
        return np.array(rows)


def test_windows_cover_the_track_and_a_short_tail_joins_the_last() -> None:
    assert window_bounds(20, 8) == [(0, 8), (8, 20)]
    assert window_bounds(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert window_bounds(5, 8) == [(0, 5)]


def windows_alone(count: int, candidates: list[int]) -> TrackSpans:
    """``count`` windows of 8 frames, each embedded on its own."""
    return TrackSpans(tuple(window_bounds(8 * count, 8)), tuple(candidates), tuple(range(count + 1)))


def test_cut_where_the_windows_after_stay_unlike_the_ones_before() -> None:
    a, b = PEOPLE["A"], PEOPLE["B"]
    config = RelinkConfig(cut_windows=2)
    # too few windows on the sides of 1 and 3
    assert cut_points(np.array([a, a, b, b]), windows_alone(4, [1, 2, 3]), config) == [2]
    assert cut_points(np.array([a, a, b, b]), windows_alone(4, []), config) == []  # no contact, no cut
    # one odd window (a bad crop) is no switch: B then A again averages to 0.71 with A
    assert cut_points(np.array([a, a, b, a, a]), windows_alone(5, [1, 2, 3]), config) == []
    # the prototype is every window since the last cut: A, A, B, B, A, A cut twice
    assert cut_points(np.array([a, a, b, b, a, a]), windows_alone(6, [1, 2, 3, 4, 5]), config) == [2, 4]


def test_a_stretch_embedded_as_one_clip_weighs_as_the_windows_it_covers() -> None:
    a, b = PEOPLE["A"], PEOPLE["B"]
    config = RelinkConfig(cut_windows=2, cut_similarity=0.5)
    # 9 windows of 8 frames: a stretch of windows 0-3 (one clip: A), then windows 4-8 alone around candidate 6
    spans = TrackSpans(tuple(window_bounds(72, 8)), (6,), (0, 4, 5, 6, 7, 8, 9))
    assert spans.spans == [(0, 32), (32, 40), (40, 48), (48, 56), (56, 64), (64, 72)]
    vectors = np.array([a, b, b, b, b, b])
    # the mean before window 6 counts the stretch as 4 windows of A: (4A + 2B) / |4A + 2B|
    np.testing.assert_allclose(spans.mean(vectors, 0, 6), (4 * a + 2 * b) / np.sqrt(20))
    # so the Bs after it (cosine 2 / sqrt(20) = 0.45) are cut, as when every window is embedded alone; counted as
    # one clip, the stretch would give A + 2B, cosine 0.89 with B: no cut
    assert cut_points(vectors, spans, config) == [6]
    assert cut_points(np.array([a] * 4 + [b] * 5), windows_alone(9, [6]), config) == [6]


def test_contacts_are_the_frames_a_track_touches_another() -> None:
    walker = track(1, 0, 31)
    # track 2 stands still at x 8..18 from frame 0 to 31: walker's box (i..i+10) overlaps it from frame 0 to 17
    standing = Track(2, 0, tuple(range(32)), np.tile(np.float32([[8, 0, 18, 30]]), (32, 1)), np.ones(32, np.float32))
    far = track(3, 0, 31, x=500)
    assert contacts(walker, [walker, standing, far], 0.0) == set(range(18))
    assert contacts(walker, [walker, far], 0.0) == set()
    bounds = window_bounds(32, 8)
    # contacts in windows 0-2 (frames 0-17): windows 1, 2 and the one after, 3, may start another person
    assert contact_windows(bounds, walker.frame_indices, set(range(18))) == [1, 2, 3]
    assert contact_windows(bounds, walker.frame_indices, {2}) == [1]  # the first window never starts a fragment


def _fragment(track_id: int, first: int, last: int, x: int = 0):
    one = track(track_id, first, last, x=x)
    spans = plan_spans(one, set(), RelinkConfig())
    return _fragments(one, track_id - 1, spans, vectors=np.tile(PEOPLE["A"], (len(spans.spans), 1)),
                      config=RelinkConfig())[0]


def test_a_fragment_follows_another_soon_after_and_near_where_it_ended() -> None:
    config = RelinkConfig(max_gap=60, max_speed=0.05)
    ended = _fragment(1, 0, 15)  # last box x 15..25, 30 px tall
    assert can_follow(ended, _fragment(2, 20, 35), config)  # 5 frames later, 5 px on
    assert not can_follow(ended, _fragment(2, 10, 35), config)  # overlaps in time
    assert not can_follow(ended, _fragment(2, 100, 115), config)  # 85 frames later: past max_gap
    # 5 frames later but 100 px away: farther than 30 * (0.5 + 0.05 * 5) = 22.5 px
    assert not can_follow(ended, _fragment(2, 20, 35, x=100), config)
    assert not can_follow(_fragment(2, 20, 35), ended, config)  # never backwards in time


def test_a_fragment_starting_right_where_another_ended_needs_less_similarity() -> None:
    config = RelinkConfig(merge_similarity=0.85, near_gap=10, near_distance=0.25, near_similarity=0.7)
    ended = _fragment(1, 0, 15)  # last box centre x 20, 30 px tall
    assert least_similarity(ended, _fragment(2, 20, 35), config) == 0.7  # 5 frames, 5 px (0.17 heights) on
    assert least_similarity(ended, _fragment(2, 30, 45), config) == 0.85  # 15 frames later
    assert least_similarity(ended, _fragment(2, 20, 35, x=10), config) == 0.85  # 15 px (0.5 heights) away
    # cosine 0.8 between the two looks: linked when near, not when the same look shows up 15 frames later
    looks = np.array([0.8, 0.6, 0.0])
    near, late = (dataclasses.replace(_fragment(2, first, first + 15), vector=looks) for first in (20, 30))
    assert link_fragments([ended, near], config) == {0: 1}
    assert link_fragments([ended, late], config) == {}


def test_an_ambiguous_link_is_left_out() -> None:
    # A ends at frame 15; two A-looking fragments start at frame 20 next to each other: which one is A is a guess
    fragments = [_fragment(1, 0, 15), _fragment(2, 20, 35), _fragment(3, 20, 35, x=2)]
    assert link_fragments(fragments, RelinkConfig()) == {}
    assert link_fragments(fragments[:2], RelinkConfig()) == {0: 1}


def _crops_of(track_: Track, who: dict[int, callable]) -> list[np.ndarray]:
    """One 2x2 crop per frame whose pixels are the person's row of PEOPLE (as 0-255 values)."""
    return [np.tile(np.uint8(200 * PEOPLE[who[track_.track_id](i)] + 20), (2, 2, 1)) for i in track_.frame_indices]


def test_the_spans_of_every_track_are_embedded_in_one_call_with_the_result_of_one_track_at_a_time() -> None:
    tracks = [track(1, 0, 31), track(2, 0, 31), track(3, 40, 52)]
    who = {1: lambda f: "A" if f < 16 else "B", 2: lambda f: "B" if f < 16 else "A", 3: lambda f: "C"}
    crops = [_crops_of(t, who) for t in tracks]
    calls = []

    def mean_colour(clips) -> np.ndarray:  # a CropEmbedder: clips of crops -> [N, 3]
        calls.append([len(clip) for clip in clips])
        return np.array([np.mean([crop.reshape(-1, 3).mean(axis=0) for crop in clip], axis=0) for clip in clips])

    batched = relink(tracks, crop_span_embedder(crops, mean_colour), RelinkConfig(window=8))
    # one call: tracks 1 and 2 touch all along (a cut may fall at window 2: the 2 windows before it and the 2
    # after it are a span each), track 3 touches nobody (one 13-frame clip)
    assert calls == [[16, 16, 16, 16, 13]]
    crops_of = {t.track_id: c for t, c in zip(tracks, crops)}

    def one_track(tracks_: list[Track], spans) -> list[np.ndarray]:
        return [mean_colour([crops_of[t.track_id][start:stop] for start, stop in track_spans])
                for t, track_spans in zip(tracks_, spans)]

    alone = relink(tracks, one_track, RelinkConfig(window=8))
    assert len(calls) == 1 + len(tracks)
    assert [link.pieces for link in batched] == [link.pieces for link in alone]
    assert {link.pieces for link in batched} == {(Piece(0, 0, 16), Piece(1, 16, 32)),
                                                 (Piece(1, 0, 16), Piece(0, 16, 32)), (Piece(2, 0, 13),)}


def test_spans_start_only_where_a_cut_may_fall_and_where_its_comparison_ends() -> None:
    # 16 windows, candidates 7 and 8 compared with the 2 windows after each: 0-6, 7, 8, 9, 10-15
    assert span_edges(16, [7, 8], 2) == [0, 7, 8, 9, 10, 16]
    assert span_edges(12, [], 2) == [0, 12]  # no candidate: the whole track
    assert span_edges(4, [2], 2) == [0, 2, 4]
    assert span_edges(20, [3, 15], 1) == [0, 3, 4, 15, 16, 20]
    assert span_edges(10, [8], 2) == [0, 8, 10]  # the windows compared reach the track's end


def test_a_track_touching_nobody_is_embedded_as_one_clip_of_the_models_seq_len_crops() -> None:
    lone = track(1, 0, 99)  # 100 frames: 12 windows, nobody near
    given, run = [], []

    def batch(clips: np.ndarray) -> np.ndarray:  # the model: [B, T, 3, H, W] -> [B, 3]
        run.append(clips.shape)
        return clips.mean(axis=(1, 3, 4))

    model = functools.partial(embed_crop_tracklets, batch, sampling=SPAN_SAMPLING, seq_len=4,
                              transform=FrameTransform((16, 8)), dim=3)

    def crop_embedder(clips) -> np.ndarray:
        given.append([len(clip) for clip in clips])
        return model(clips)

    linked = relink([lone], crop_span_embedder([_crops_of(lone, {1: lambda f: "A"})], crop_embedder))
    assert given == [[100]]  # one clip of all its crops ...
    assert run == [(1, 4, 3, 16, 8)]  # ... of which the model runs seq_len = 4
    assert [link.pieces for link in linked] == [(Piece(0, 0, 100),)]


def _meeting(swap: bool) -> list[Track]:
    """Tracks 1 and 2 walk right 1 px a frame (30 px tall) for 128 frames, 100 px apart but on the same boxes at
    frames 60-67 (they meet); with ``swap`` the tracker swapped them at frame 64 (in the middle of the meeting).
    Track 3 walks alone far to the right, frames 0-99."""
    def y_of(person: str, frame: int) -> int:
        return 50 if 60 <= frame < 68 else {"A": 0, "B": 100}[person]

    def followed(track_id: int, first: str, second: str) -> Track:
        people = [second if swap and f >= 64 else first for f in range(128)]
        boxes = np.array([[f, y_of(p, f), f + 10, y_of(p, f) + 30] for f, p in enumerate(people)], dtype=np.float32)
        return Track(track_id, 0, tuple(range(128)), boxes, np.full(128, 0.9, np.float32))

    return [followed(1, "A", "B"), followed(2, "B", "A"), track(3, 0, 99, x=500)]


def test_the_clips_embedded_are_one_per_lone_track_and_the_windows_around_each_meeting() -> None:
    tracks = _meeting(swap=False)
    embed = FakeEmbedder({1: lambda f: "A", 2: lambda f: "B", 3: lambda f: "C"})
    linked = relink(tracks, embed, RelinkConfig(window=8, cut_windows=2))
    # tracks 1 and 2 touch in windows 7 and 8 (frames 56-71): a person may change at windows 7, 8, 9, each
    # compared with the 2 windows from it on, so windows 7, 8, 9, 10 are clips of their own, 0-6 and 11-15 one
    # clip each; track 3 touches nobody: one clip
    meeting = [(0, 56), (56, 64), (64, 72), (72, 80), (80, 88), (88, 128)]
    assert embed.calls == [[meeting, meeting, [(0, 100)]]]  # 13 clips (44 windows), one call
    assert len(linked) == 3


def test_a_switch_where_two_tracks_met_is_still_cut_between_clips_of_whole_stretches() -> None:
    tracks = _meeting(swap=True)  # track 1 is A then B, track 2 B then A, from frame 64
    who = {1: lambda f: "A" if f < 64 else "B", 2: lambda f: "B" if f < 64 else "A", 3: lambda f: "C"}
    embed = FakeEmbedder(who)
    linked = relink(tracks, embed, RelinkConfig(window=8, cut_windows=2))
    assert [len(spans) for spans in embed.calls[0]] == [6, 6, 1]
    assert {link.pieces for link in linked} == {(Piece(0, 0, 64), Piece(1, 64, 128)),
                                                (Piece(1, 0, 64), Piece(0, 64, 128)), (Piece(2, 0, 100),)}


def test_identity_switch_is_cut_and_each_half_joins_its_person() -> None:
    # the motion tracker swapped A and B where they crossed at frame 16: track 1 is A then B, track 2 B then A
    tracks = [track(1, 0, 31), track(2, 0, 31)]
    who = {1: lambda f: "A" if f < 16 else "B", 2: lambda f: "B" if f < 16 else "A"}
    linked = relink(tracks, FakeEmbedder(who), RelinkConfig(window=8))
    assert len(linked) == 2
    pieces = {link.pieces for link in linked}  # pieces name tracks by their place in the list: 0 is track 1
    assert pieces == {(Piece(0, 0, 16), Piece(1, 16, 32)), (Piece(1, 0, 16), Piece(0, 16, 32))}
    for link in linked:
        assert link.track.frame_indices == tuple(range(32))  # one person, whole time span, no frame twice


def test_fragments_of_one_person_merge_and_overlapping_ones_do_not() -> None:
    # A lost behind a pillar: tracks 1 (frames 0-15) and 3 (30-45); B (track 2) walks at the same time as track 1
    tracks = [track(1, 0, 15), track(2, 5, 20), track(3, 30, 45)]
    who = {1: lambda f: "A", 2: lambda f: "B", 3: lambda f: "A"}
    linked = relink(tracks, FakeEmbedder(who), RelinkConfig(window=8))
    assert [link.pieces for link in linked] == [(Piece(0, 0, 16), Piece(2, 0, 16)), (Piece(1, 0, 16),)]
    assert linked[0].track.frame_indices == tuple(range(16)) + tuple(range(30, 46))
    np.testing.assert_array_equal(linked[0].track.boxes[16], tracks[2].boxes[0])


def test_a_cut_that_finds_no_continuation_is_undone() -> None:
    # track 1 looks like A then B after crossing track 2 (C), but B is seen nowhere else: cutting would only add a
    # switch, so both tracks stay as the motion tracker made them
    tracks = [track(1, 0, 31), track(2, 0, 31)]
    who = {1: lambda f: "A" if f < 16 else "B", 2: lambda f: "C"}
    linked = relink(tracks, FakeEmbedder(who), RelinkConfig(window=8))
    assert [link.pieces for link in linked] == [(Piece(0, 0, 32),), (Piece(1, 0, 32),)]


def test_fragments_too_far_apart_in_time_or_place_stay_apart() -> None:
    tracks = [track(1, 0, 15), track(2, 100, 115), track(3, 20, 35, x=200)]
    linked = relink(tracks, FakeEmbedder({i: lambda f: "A" for i in (1, 2, 3)}), RelinkConfig(max_gap=60))
    assert len(linked) == 3


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
        (tracks[0], (Piece(0, 0, 16),)),
        (tracks[1], (Piece(1, 0, 16),)),
    ]


def _crossing(camid: int) -> list[Track]:
    """A (track 1) and B (track 2) swap where they cross at frame 16; C (track 3) walks apart, lost at frame 15
    and found again as track 4 at frame 20, near where it was. Camera 1's boxes lie 1000 px to the right."""
    x = 1000 * camid
    return [track(1, 0, 31, camid, x), track(2, 0, 31, camid, x), track(3, 0, 15, camid, x + 300),
            track(4, 20, 35, camid, x + 300)]


def _people(camid: int) -> dict:
    """Who fills each frame of each track of :func:`_crossing`, per camera: camera 0 sees A, B, C; camera 1 sees
    B, A, C (the tracks' ids are the same in both videos, the people behind them are not)."""
    first, second = ("A", "B") if camid == 0 else ("B", "A")
    return {1: lambda f: first if f < 16 else second, 2: lambda f: second if f < 16 else first,
            3: lambda f: "C", 4: lambda f: "C"}


class TwoVideoEmbedder:
    """:class:`FakeEmbedder` per camera: the track ids repeat across the two videos."""

    def __init__(self) -> None:
        self.by_camera = {camid: FakeEmbedder(_people(camid)) for camid in (0, 1)}

    def __call__(self, tracks: list[Track], spans: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        return [self.by_camera[track.camid].embed(track, track_spans) for track, track_spans in zip(tracks, spans)]


def _who(link, tracks: list[Track]) -> list[str]:
    """The person in each frame of a relinked tracklet, read from the tracks its pieces come from."""
    people = _people(link.track.camid)
    return [people[tracks[p.track].track_id](i) for p in link.pieces
            for i in tracks[p.track].frame_indices[p.start:p.stop]]


def test_two_videos_relinked_at_once_are_each_relinked_as_alone() -> None:
    # several people crossing in each of two cameras whose tracks are numbered 1, 2, ... alike
    tracks = _crossing(0) + _crossing(1)
    together = relink(tracks, TwoVideoEmbedder(), RelinkConfig(window=8))
    alone = [relink(_crossing(camid), TwoVideoEmbedder(), RelinkConfig(window=8)) for camid in (0, 1)]
    assert len(together) == sum(len(links) for links in alone) == 6
    for link in together:
        assert len(set(_who(link, tracks))) == 1, link.pieces  # every tracklet follows one person
        assert len({tracks[p.track].camid for p in link.pieces}) == 1
    c_tracks = [link for link in together if _who(link, tracks)[0] == "C"]
    assert [link.track.frame_indices for link in c_tracks] == [tuple(range(16)) + tuple(range(20, 36))] * 2
    for link, (lost, found) in zip(c_tracks, ((2, 3), (6, 7))):  # each camera's own boxes, not the other's
        np.testing.assert_array_equal(link.track.boxes, np.concatenate([tracks[lost].boxes, tracks[found].boxes]))


def test_videos_of_one_camera_are_never_linked_to_each_other() -> None:
    # the same camera filmed twice (morning.mp4, evening.mp4): C leaves the morning video at frame 15 and someone
    # alike enters the evening one at frame 20 right there; frame numbers repeat, but the videos are not one
    morning = [dataclasses.replace(track(1, 0, 15, x=300), source="morning.mp4")]
    evening = [dataclasses.replace(track(1, 20, 35, x=300), source="evening.mp4")]
    linked = relink(morning + evening, FakeEmbedder({1: lambda f: "C"}), RelinkConfig(window=8))
    assert [link.track.source for link in linked] == ["morning.mp4", "evening.mp4"]
