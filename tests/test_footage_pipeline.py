"""The footage pipeline fed frame by frame: detection every k-th frame, crops in memory, relinking of several people
who cross by an appearance embedder, static tracklets left out and counted, times."""

from pathlib import Path

import numpy as np
import pytest
from fake_footage import write_video

from tfclip_cli.footage.detection import Detection
from tfclip_cli.footage.pipeline import FootagePipeline, PipelineOptions, is_static, run_video
from tfclip_cli.footage.relink import RelinkConfig
from tfclip_cli.footage.track import Track, TrackerConfig

WIDTH, HEIGHT = 200, 120
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class ScriptedDetector:
    """Returns the boxes written for each frame index and remembers which frames it was asked about."""

    name = "scripted"

    def __init__(self, boxes: dict[int, list[tuple[float, float, float, float]]]) -> None:
        self.boxes = boxes
        self.calls: list[int] = []

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
        self.calls.append(frame_index)
        return [Detection(box, 0.9) for box in self.boxes.get(frame_index, [])]


def colour_embedder(clips) -> np.ndarray:
    """Embeds a clip of crops as its mean colour (unit length): people of different colours are orthogonal-ish."""
    means = np.array([np.mean([crop.reshape(-1, 3).mean(axis=0) for crop in clip], axis=0) for clip in clips])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def draw(people: dict[str, tuple[float, float, float, float]]) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    for name, (x1, y1, x2, y2) in people.items():
        frame[int(y1):int(y2), int(x1):int(x2)] = COLOURS[name]
    return frame


def crossing_scene(frames: int = 40, hidden: range = range(16, 24)) -> list[dict[str, tuple]]:
    """Red walks right and green walks left along one row, crossing at frame 20 while a pillar hides both (frames
    16-23: nobody is detected); blue walks right along another row, never hidden."""
    scene = []
    for f in range(frames):
        people = {"red": (10.0 + 4 * f, 20.0, 30.0 + 4 * f, 80.0), "green": (170.0 - 4 * f, 20.0, 190.0 - 4 * f, 80.0),
                  "blue": (10.0 + 2 * f, 50.0, 30.0 + 2 * f, 110.0)}
        scene.append(people)
    return scene


def _feed(scene, detected, options: PipelineOptions, embed=None):
    detector = ScriptedDetector({f: [people[name] for name in people if name in detected(f)]
                                 for f, people in enumerate(scene)})
    pipeline = FootagePipeline(detector, camid=4, fps=10.0, source="cam4.mp4", options=options, embed=embed)
    for frame_index, people in enumerate(scene):
        pipeline.feed(frame_index, draw(people))
    return pipeline.close(), detector


def _colour_of(crops) -> set[str]:
    """The colours of a tracklet's crops (the colour whose value a crop's mean is nearest)."""
    found = set()
    for crop in crops:
        mean = crop.reshape(-1, 3).mean(axis=0)
        found.add(min(COLOURS, key=lambda name: np.linalg.norm(mean - COLOURS[name])))
    return found


def test_people_who_cross_while_hidden_are_relinked_each_to_themselves():
    scene = crossing_scene()
    hidden = range(16, 24)
    options = PipelineOptions(tracker=TrackerConfig(lost_buffer=3))  # the pillar outlasts the lost buffer

    def detected(f):
        return {"blue"} | (set() if f in hidden else {"red", "green"})

    motion, _ = _feed(scene, detected, options)
    assert motion.tracks == 5 and len(motion.tracklets) == 5  # red and green each cut in two by the pillar
    linked, _ = _feed(scene, detected, options, embed=colour_embedder)
    assert len(linked.tracklets) == 3
    for tracklet in linked.tracklets:
        assert len(_colour_of(tracklet.crops)) == 1, tracklet.pieces  # one person each: no wrong merge
        assert len(tracklet.crops) == tracklet.track.num_frames
    by_colour = {_colour_of(t.crops).pop(): t for t in linked.tracklets}
    expected = tuple(range(16)) + tuple(range(24, 40))
    assert by_colour["red"].track.frame_indices == expected and by_colour["green"].track.frame_indices == expected
    assert by_colour["blue"].track.frame_indices == tuple(range(40))
    # numbered by first appearance; each box of a relinked tracklet is the person's box at its own frame
    assert [t.track.track_id for t in linked.tracklets] == [1, 2, 3]
    red = by_colour["red"]
    np.testing.assert_allclose(red.track.boxes[16], scene[24]["red"], atol=2.0)


def test_relinking_embeds_each_track_touching_nobody_as_one_clip_all_tracks_in_one_call():
    scene = crossing_scene()
    options = PipelineOptions(tracker=TrackerConfig(lost_buffer=3))
    calls = []

    def counting(clips) -> np.ndarray:
        calls.append([len(clip) for clip in clips])
        return colour_embedder(clips)

    def detected(f):
        return {"blue"} | (set() if f in range(16, 24) else {"red", "green"})

    motion, _ = _feed(scene, detected, options)
    assert sorted(t.track.num_frames for t in motion.tracklets) == [16, 16, 16, 16, 40]
    linked, _ = _feed(scene, detected, options, embed=counting)
    # red and green before and after the pillar (16 frames: 2 windows, too short to cut) are one clip each;
    # blue (5 windows) overlaps green (IoU above 0.3) in window 3 (frames 24-31), which may start another person,
    # compared with the 2 windows from it on: windows 0-2 one clip, 3-4 another; 6 clips in one batched call
    assert len(calls) == 1 and sorted(calls[0]) == [16, 16, 16, 16, 16, 24]
    assert len(linked.tracklets) == 3


def test_detection_every_kth_frame_crops_every_frame_from_memory():
    scene = [{"red": (10.0 + 2 * f, 20.0, 30.0 + 2 * f, 80.0)} for f in range(12)]
    result, detector = _feed(scene, lambda f: {"red"}, PipelineOptions(every=3))
    assert detector.calls == [0, 3, 6, 9]
    (tracklet,) = result.tracklets
    assert tracklet.track.frame_indices == tuple(range(10))  # nothing predicted after the last match
    assert tracklet.track.camid == 4 and tracklet.track.source == "cam4.mp4" and result.frames == 12
    for index, box, crop in zip(tracklet.track.frame_indices, tracklet.track.boxes, tracklet.crops):
        x1, y1, x2, y2 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
        np.testing.assert_array_equal(crop, draw(scene[index])[y1:y2, x1:x2])  # the frame's pixels, no JPEG
    assert (tracklet.start_s, tracklet.end_s) == (0.0, pytest.approx(1.0))  # 10 frames at 10 fps end at 1.0 s


def test_tracklets_that_never_move_are_left_out_and_counted_unless_kept():
    scene = [{"red": (10.0 + 3 * f, 20.0, 30.0 + 3 * f, 80.0), "blue": (150.0, 40.0, 170.0, 100.0)} for f in range(20)]
    dropped, _ = _feed(scene, lambda f: {"red", "blue"}, PipelineOptions())
    assert (dropped.tracks, dropped.static) == (2, 1)
    assert [_colour_of(t.crops) for t in dropped.tracklets] == [{"red"}]
    kept, _ = _feed(scene, lambda f: {"red", "blue"}, PipelineOptions(keep_static=True))
    assert kept.static == 0 and sorted(_colour_of(t.crops).pop() for t in kept.tracklets) == ["blue", "red"]


def _track(boxes: list[tuple[float, float, float, float]]) -> Track:
    return Track(1, 0, tuple(range(len(boxes))), np.array(boxes, np.float32), np.ones(len(boxes), np.float32))


def test_static_means_no_edge_moves_more_than_a_quarter_of_the_height():
    jitter = [(100 + dx, 10 + dy, 140 + dx, 110 + dy) for dx, dy in [(0, 0), (5, -5), (-5, 5), (10, 10)]]
    assert is_static(_track(jitter), 0.25)  # edges stay within 15 px of a 100 px tall box
    assert not is_static(_track([(100 + 2 * f, 10, 140 + 2 * f, 110) for f in range(14)]), 0.25)  # 26 px across
    # coming towards the camera: the box hardly shifts sideways, but its bottom edge comes down 45 px
    assert not is_static(_track([(100 - f, 10, 140 + f, 110 + 3 * f) for f in range(16)]), 0.25)


def test_run_video_reads_a_file_through_the_same_pipeline(tmp_path: Path):
    video = tmp_path / "cam0.avi"
    write_video(video, 12, size=(WIDTH, HEIGHT))
    detector = ScriptedDetector({f: [(10.0 + 3 * f, 20.0, 30.0 + 3 * f, 80.0)] for f in range(12)})
    result = run_video(video, detector, camid=0, progress=lambda frames: frames)
    assert detector.calls == list(range(12)) and result.frames == 12
    (tracklet,) = result.tracklets
    assert tracklet.track.source == str(video) and tracklet.fps == 10.0 and len(tracklet.crops) == 12


def _two_walkers(frames: int = 60, red_until: int = 20) -> list[dict[str, tuple]]:
    """Red walks right until ``red_until`` and leaves; blue walks right the whole time on another row."""
    return [{**({"red": (10.0 + 3 * f, 10.0, 30.0 + 3 * f, 60.0)} if f < red_until else {}),
             "blue": (10.0 + 2 * f, 60.0, 30.0 + 2 * f, 115.0)} for f in range(frames)]


def _live(scene, options: PipelineOptions, *, max_frames: int):
    """The scene fed as a live stream: :meth:`finished` after every frame, then :meth:`close`; both results."""
    detector = ScriptedDetector({f: list(people.values()) for f, people in enumerate(scene)})
    pipeline = FootagePipeline(detector, camid=1, fps=10.0, source="live", options=options)
    handed = []
    for frame_index, people in enumerate(scene):
        pipeline.feed(frame_index, draw(people))
        handed.append((frame_index, pipeline.finished(frame_index, max_frames=max_frames).tracklets))
    return handed, pipeline.close().tracklets


LIVE = PipelineOptions(tracker=TrackerConfig(lost_buffer=3), relink=RelinkConfig(max_gap=5))


def test_finished_hands_over_a_person_once_lost_and_close_returns_the_others_numbered_after():
    scene = _two_walkers()
    handed, rest = _live(scene, LIVE, max_frames=1000)
    early = [(frame, t) for frame, tracklets in handed for t in tracklets]
    assert len(early) == 1
    frame, red = early[0]
    # red, last seen at frame 19, dies once lost for more than the lost buffer (1 frame at 10 fps, so at frame 21)
    # and is handed over once last seen more than max_gap (5) frames ago: nothing can still continue it
    assert red.track.frame_indices == tuple(range(20)) and frame == 19 + 5 + 1
    assert red.track.track_id == 1 and _colour_of(red.crops) == {"red"}
    (blue,) = rest
    assert blue.track.track_id == 2 and blue.track.frame_indices == tuple(range(60))
    offline, _ = _feed(scene, lambda f: {"red", "blue"}, LIVE)  # a file: the same tracklets, all at close()
    assert [t.track.frame_indices for t in offline.tracklets] == [red.track.frame_indices, blue.track.frame_indices]


def test_finished_cuts_a_long_track_at_max_frames_and_loses_no_frame():
    scene = _two_walkers(frames=50, red_until=0)
    handed, rest = _live(scene, LIVE, max_frames=20)
    pieces = [t for _, tracklets in handed for t in tracklets] + list(rest)
    assert [t.track.frame_indices for t in pieces] == [tuple(range(0, 20)), tuple(range(20, 40)),
                                                       tuple(range(40, 50))]
    assert [t.track.track_id for t in pieces] == [1, 2, 3]
    assert all(len(t.crops) == t.track.num_frames for t in pieces)
