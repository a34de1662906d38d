"""MARS, the official release layout.

Reference: Zheng et al., "MARS: A Video Benchmark for Large-Scale Person Re-identification", ECCV 2016.
URL: http://zheng-lab.cecs.anu.edu.au/Project/project_mars.html

Statistics: 1,261 identities, 6 cameras; 8,298 train tracklets (625 ids), 1,980 query and 9,330 gallery tracklets
(junk removed; the gallery keeps the pid-0 distractors), 20,478 tracklets in all.

Layout (ROOT is the folder holding ``info/``)::

    ROOT/bbox_train/<pid4>/<pid4>C<cam>T<track4>F<frame3>.jpg
    ROOT/bbox_test/<pid4>/...                 (distractors in 0000/, junk in 00-1/)
    ROOT/info/train_name.txt, test_name.txt   one frame file name per line
    ROOT/info/tracks_train_info.mat           key track_train_info: rows (start, end, pid, camera), 1-based
    ROOT/info/tracks_test_info.mat            key track_test_info: same, start/end index test_name.txt
    ROOT/info/query_IDX.mat                   key query_IDX: 1-based rows of track_test_info

Protocol (torchreid ``video/mars.py``; TF-CLIP ``datasets/set/mars.py`` L58-63, L165;
docs/fidelity.md#datasets-and-sampler): junk tracklets (pid -1) are dropped from every split, distractors (pid 0) stay
in the gallery, the query is the rows listed in query_IDX and the gallery every other test row. The official evaluation
ranks each query against all test tracklets, queries included, hence the gallery rule ``includes_query``. Pids are kept
as published (no relabelling); cameras become 0-based. Frames are checked for presence by listing their folders, not
decoded.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from tfclip_cli.datasets.common import Layout, Listing, Parsed, Problems, build_all, require
from tfclip_cli.errors import DataError
from tfclip_cli.tables import Split, Tracklet

LAYOUT = Layout(
    description="the official MARS layout (bbox_train/, bbox_test/, info/)",
    hint="point ROOT at the folder holding info/",
)
REQUIRED = (
    "info/train_name.txt",
    "info/test_name.txt",
    "info/tracks_train_info.mat",
    "info/tracks_test_info.mat",
    "info/query_IDX.mat",
    "bbox_train",
    "bbox_test",
)
JUNK_PID = -1
NUM_CAMERAS = 6


@dataclass(frozen=True)
class _Subset:
    """One half of the release: its frame folder, frame names and track table."""

    name: str  # "train" or "test"
    frames_dir: Path
    names: list[str]
    tracks: np.ndarray  # [N, 4] int64: start, end (1-based, inclusive), pid, camera (1-based)
    tracks_path: Path


@dataclass(frozen=True)
class _Row:
    """One row of a track table and the split it goes to."""

    subset: _Subset
    index: int  # 0-based row
    split: Split


def _load_mat(path: Path, key: str) -> np.ndarray:
    try:
        content = scipy.io.loadmat(str(path))
    except (ValueError, NotImplementedError, OSError) as exc:  # scipy raises NotImplementedError on MATLAB v7.3
        raise DataError(f"{path} is not a readable MATLAB .mat file ({exc})", hint=LAYOUT.hint) from exc
    if key not in content:
        found = ", ".join(k for k in content if not k.startswith("__"))
        raise DataError(f"{path} has no key {key!r} (found: {found}): expected the MARS release file")
    return np.asarray(content[key])


def _load_tracks(path: Path, key: str, num_names: int) -> np.ndarray:
    """A track table as int64 [N, 4], with every frame range inside the names list."""
    tracks = _load_mat(path, key)
    if tracks.ndim != 2 or tracks.shape[1] != 4:
        raise DataError(f"{path}: {key} has shape {tracks.shape}; expected [tracklets, 4] (start, end, pid, camera)")
    tracks = tracks.astype(np.int64)
    bad = np.flatnonzero((tracks[:, 0] < 1) | (tracks[:, 1] < tracks[:, 0]) | (tracks[:, 1] > num_names))
    if bad.size:
        start, end = tracks[bad[0], :2]
        raise DataError(
            f"{path}: row {bad[0] + 1} spans frames {start}..{end}; expected 1-based indices 1..{num_names}"
        )
    return tracks


def _load_query_rows(path: Path, num_tracks: int) -> np.ndarray:
    """0-based test rows of the queries (query_IDX is 1-based)."""
    rows = _load_mat(path, "query_IDX").reshape(-1).astype(np.int64) - 1
    bad = rows[(rows < 0) | (rows >= num_tracks)]
    if bad.size:
        raise DataError(f"{path}: query index {bad[0] + 1} is outside 1..{num_tracks}, the rows of track_test_info")
    return rows


def _load_subset(root: Path, name: str) -> _Subset:
    names_path = root / "info" / f"{name}_name.txt"
    names = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
    tracks_path = root / "info" / f"tracks_{name}_info.mat"
    tracks = _load_tracks(tracks_path, f"track_{name}_info", len(names))
    return _Subset(name=name, frames_dir=root / f"bbox_{name}", names=names, tracks=tracks, tracks_path=tracks_path)


def _check_names(subset: _Subset, row: int, names: list[str]) -> None:
    """Every frame of a track is named after the track's pid and camera (``0001C1T0001F001.jpg``).

    Raises:
        DataError: naming the row and the first frame that disagrees.
    """
    start, end, pid, camera = subset.tracks[row]
    expected = (f"{pid:04d}", str(camera))
    for name in names:
        if (name[:4], name[5:6]) != expected:
            raise DataError(
                f"{subset.tracks_path}: row {row + 1} (pid {pid}, camera {camera}, frames {start}..{end} of "
                f"info/{subset.name}_name.txt) includes {name}; expected one pid and one camera per tracklet"
            )


def _build(row: _Row, *, listing: Listing, problems: Problems) -> list[Tracklet]:
    """The tracklet of one track row: none for junk or missing frames."""
    subset = row.subset
    start, end, pid, camera = (int(v) for v in subset.tracks[row.index])
    if pid == JUNK_PID:
        return []
    if not 1 <= camera <= NUM_CAMERAS:
        raise DataError(f"{subset.tracks_path}: row {row.index + 1} has camera {camera}; expected 1..{NUM_CAMERAS}")
    names = sorted(subset.names[start - 1 : end])
    _check_names(subset, row.index, names)
    folder = subset.frames_dir / names[0][:4]
    on_disk = listing.names(folder)
    missing = [name for name in names if name not in on_disk]
    if missing:
        problems.add(folder / missing[0], f"{len(missing)} of the {len(names)} frames of this tracklet are missing")
        return []
    tracklet_id = f"{names[0][:11]}_{subset.name}{row.index + 1:05d}"
    frames = tuple(os.path.join(folder, name) for name in names)  # pathlib is 5x slower on MARS's 1.2M frames
    return [Tracklet(tracklet_id, pid, camera - 1, row.split, len(frames), frames=frames)]


def parse(root: Path, *, problems: Problems) -> Parsed:
    """Parse a MARS release into train, query and gallery tracklets (see the module docstring).

    Raises:
        DataError: a required file is missing, a .mat file is malformed, or a track mixes pids or cameras.
    """
    require(root, REQUIRED, LAYOUT)
    train, test = _load_subset(root, "train"), _load_subset(root, "test")
    query_rows = _load_query_rows(root / "info" / "query_IDX.mat", len(test.tracks))
    queries = set(query_rows.tolist())
    rows = [_Row(train, i, "train") for i in range(len(train.tracks))]
    rows += [_Row(test, int(i), "query") for i in query_rows]
    rows += [_Row(test, i, "gallery") for i in range(len(test.tracks)) if i not in queries]
    build = functools.partial(_build, listing=Listing(), problems=problems)
    tracklets = build_all(rows, build, description="MARS tracklets")
    junk = int((train.tracks[:, 2] == JUNK_PID).sum() + (test.tracks[:, 2] == JUNK_PID).sum())
    return Parsed(tracklets=tracklets, extra={"junk_tracklets_dropped": junk})
