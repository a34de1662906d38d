"""The synthetic dataset generator: folder layout, storage kinds, splits, determinism and refusals."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tfclip_cli.datasets.synthetic import (
    CLOTHING,
    SyntheticOptions,
    generate_synthetic,
    plan_tracklets,
    sample_appearances,
)
from tfclip_cli.errors import DataError

# 6 ids (0-2 train, 3-5 test) + 1 distractor (pid 6), 2 cameras: 14 tracklets, round(14 / 3) = 5 of them videos.
TINY = SyntheticOptions(
    identities=6, cameras=2, distractors=1, image_size=(64, 32), min_frames=3, max_frames=6, seed=7
)
TRACKLET = re.compile(r"^(train|query|gallery)/(\d{4})/(\d+)/(t\d{2})(\.mp4)?$")


def _tracklets(root: Path) -> dict[str, Path]:
    """Relative tracklet path → absolute path (a .mp4 file or a frame folder)."""
    return {
        str(path.relative_to(root)): path
        for path in sorted(root.glob("*/*/*/*"))
    }


def _read(path: Path) -> list[np.ndarray]:
    """Decoded frames [H, W, 3] of a video (PyAV) or a JPEG folder."""
    if path.suffix == ".mp4":
        with av.open(str(path)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [np.asarray(Image.open(frame)) for frame in sorted(path.iterdir())]


def _places(root: Path) -> list[tuple[str, int, int]]:
    """(split, pid, camid) of every tracklet."""
    found = []
    for relative in _tracklets(root):
        split, pid, camid, _, _ = TRACKLET.match(relative).groups()
        found.append((split, int(pid), int(camid)))
    return found


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "root"
    generate_synthetic(root, TINY)
    return root


def test_writes_the_folder_layout_and_nothing_else(tiny_root):
    assert sorted(p.name for p in tiny_root.parent.iterdir()) == ["root"]  # the temporary folder is gone
    names = list(_tracklets(tiny_root))
    assert len(names) == 14
    assert all(TRACKLET.match(name) for name in names), names
    assert sorted(p.name for p in tiny_root.iterdir()) == ["gallery", "query", "train"]
    for path in _tracklets(tiny_root).values():
        if path.is_dir():
            frames = sorted(f.name for f in path.iterdir())
            assert frames == [f"{t:06d}.jpg" for t in range(len(frames))]


def test_about_a_third_of_the_tracklets_are_videos(tiny_root):
    kinds = Counter("video" if p.suffix == ".mp4" else "frames" for p in _tracklets(tiny_root).values())
    assert kinds == {"video": 5, "frames": 9}


def test_frame_counts_stay_within_bounds_and_match_the_plan(tiny_root):
    counts = {name: len(_read(path)) for name, path in _tracklets(tiny_root).items()}
    assert all(3 <= n <= 6 for n in counts.values()), counts
    planned = {str(plan.relative_path()): plan.num_frames for plan in plan_tracklets(TINY)}
    assert counts == planned


def test_frames_have_the_requested_size(tiny_root):
    for path in _tracklets(tiny_root).values():
        assert {frame.shape for frame in _read(path)} == {(64, 32, 3)}, path


def test_splits_follow_the_benchmark_protocol(tiny_root):
    places = _places(tiny_root)
    assert {pid for split, pid, _ in places if split == "train"} == {0, 1, 2}
    assert {split for split, pid, _ in places if pid in (0, 1, 2)} == {"train"}
    for pid in (3, 4, 5):
        query = {camid for split, p, camid in places if p == pid and split == "query"}
        gallery = {camid for split, p, camid in places if p == pid and split == "gallery"}
        assert len(query) == 1 and len(gallery) == 1 and query.isdisjoint(gallery), (pid, query, gallery)
    distractor = [(split, camid) for split, pid, camid in places if pid == 6]
    assert sorted(distractor) == [("gallery", 0), ("gallery", 1)]


def test_one_camera_puts_each_test_ids_first_tracklet_in_query():
    options = SyntheticOptions(identities=4, cameras=1, tracklets_per_camera=2, distractors=0)
    splits = {(plan.pid, plan.index): plan.split for plan in plan_tracklets(options)}
    assert splits == {
        (0, 0): "train", (0, 1): "train", (1, 0): "train", (1, 1): "train",
        (2, 0): "query", (2, 1): "gallery", (3, 0): "query", (3, 1): "gallery",
    }


def test_same_seed_gives_the_same_bytes_and_pixels(tiny_root, tmp_path):
    again = tmp_path / "again"
    generate_synthetic(again, TINY)
    first, second = _tracklets(tiny_root), _tracklets(again)
    assert list(first) == list(second)
    for name, path in first.items():
        if path.is_dir():
            for frame in sorted(path.iterdir()):
                assert frame.read_bytes() == (second[name] / frame.name).read_bytes(), frame
        else:
            assert path.read_bytes() == second[name].read_bytes(), name


def test_another_seed_gives_other_pictures(tiny_root, tmp_path):
    other = tmp_path / "other"
    generate_synthetic(other, replace(TINY, seed=8))
    first, second = _tracklets(tiny_root), _tracklets(other)
    pairs = [(first[name], second[name]) for name in first if name in second]
    assert pairs
    assert not any(
        np.array_equal(_read(a)[0], _read(b)[0]) for a, b in pairs
    ), "some tracklet starts with the same frame under another seed"


def test_refuses_a_non_empty_root_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        generate_synthetic(root, TINY)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_accepts_an_existing_empty_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    generate_synthetic(root, replace(TINY, identities=2, distractors=0))
    assert sorted(p.name for p in root.iterdir()) == ["gallery", "query", "train"]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"image_size": (63, 32)}, "image_size"), ({"min_frames": 9, "max_frames": 4}, "min_frames"),
     ({"train_fraction": 1.0}, "train_fraction"), ({"cameras": 1}, "cameras × tracklets_per_camera")],
)
def test_rejects_impossible_options_naming_them(tmp_path, change, named):
    with pytest.raises(DataError, match=re.escape(named)):
        generate_synthetic(tmp_path / "root", replace(TINY, **change))
    assert not (tmp_path / "root").exists()


def test_identities_share_colours_but_never_all_their_cues():
    looks = sample_appearances(65, seed=0)
    tops = Counter(look.top for look in looks)
    assert set(tops) <= set(CLOTHING)
    assert min(tops.values()) >= 3  # every top colour is worn by several identities
    cues = {
        (look.top, look.pattern, look.pattern_colour, look.logo if look.pattern == "logo" else "", look.bottom,
         look.bottom_kind, look.hair_style, look.accessory)
        for look in looks
    }
    assert len(cues) == 65


def test_the_drawn_tree_follows_the_umask_like_any_new_folder(tmp_path):
    import os
    import stat

    options = SyntheticOptions(identities=2, cameras=1, tracklets_per_camera=2, distractors=0, image_size=(32, 16),
                               min_frames=1, max_frames=2, video_fraction=0.0)
    previous = os.umask(0o022)
    try:
        generate_synthetic(tmp_path / "root", options)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o755
