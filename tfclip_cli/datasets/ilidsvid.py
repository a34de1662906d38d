"""iLIDS-VID, the release layout.

Reference: Wang et al., "Person Re-Identification by Video Ranking", ECCV 2014.
URL: https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_dataset.html

Statistics: 300 identities, 2 cameras, 600 tracklets of 23 to 192 frames (73 on average).

Layout (ROOT is the folder holding ``i-LIDS-VID/``)::

    ROOT/i-LIDS-VID/sequences/cam1/person001/cam1_person001.png ... (persons numbered up to 319, with gaps)
    ROOT/i-LIDS-VID/sequences/cam2/person001/...
    ROOT/train-test people splits/train_test_splits_ilidsvid.mat   key ls_set: [10, 300], 1-based positions
                                                                  in the sorted list of person folders

Protocol: split ``split_id`` (0..9) is row ``ls_set[split_id]``; its first half are the training persons (both
cameras) and its second half the test persons, whose cam1 tracklet is the query (camid 0) and cam2 tracklet the
gallery (camid 1). The halves follow the official TF-CLIP code (``datasets/set/ilidsvidsequence.py``, end of
``imgextract``; docs/fidelity.md#datasets-and-sampler); torchreid takes the opposite halves. Both are random halves of
the same 300 persons, so either gives the usual 10-trial protocol.

Windows (the official protocol, on by default): every sequence of every split is cut into windows of ``window``
frames (8, the recipe's seq_len) starting every ``window_stride`` frames (4), with starts ``0, 4, ...`` below
``n - window`` (so a 20-frame sequence gives frames 0-7, 4-11 and 8-15, and its last 4 frames are in no window), and
a sequence of at most ``window`` frames is one window (reference: ``datasequence.py`` L6-20 for training and
``ilidsvidsequence.py`` ``_pluckseq_cam`` for query and gallery). Each window is a row of its own: a training item,
a CLIP-Memory item, and a query or gallery item. The reference ranks every query window against the query and
gallery windows together (``utils/metrics.py``, ``gf = feats[0:]``), so the gallery rule is ``includes_query``.
``window=0`` keeps one tracklet per person and camera, ranked against the gallery split alone (torchreid).
Pids are the person numbers (``person001`` is 1); frames are sorted by name
(torchreid's glob does not sort) and checked for presence by listing, not decoded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import scipy.io

from tfclip_cli.datasets.common import Layout, Listing, Parsed, Problems, build_all, numbered_folders, require
from tfclip_cli.errors import DataError
from tfclip_cli.tables import Split, Tracklet

LAYOUT = Layout(
    description="the iLIDS-VID layout (i-LIDS-VID/sequences/cam1/, cam2/ and "
    "'train-test people splits/train_test_splits_ilidsvid.mat')",
    hint="point ROOT at the folder holding i-LIDS-VID/ and 'train-test people splits/'",
)
SPLITS_FILE = "train-test people splits/train_test_splits_ilidsvid.mat"
WINDOW, WINDOW_STRIDE = 8, 4  # the reference's SEQ_LEN and SEQ_SRD (configs/vit_clipreid.yml)
CAMERAS = ("cam1", "cam2")  # camid 0, 1


def _persons(root: Path) -> list[str]:
    """The person folders seen by both cameras, sorted (the order ls_set indexes).

    Raises:
        DataError: when a person is missing from one camera.
    """
    sequences = root / "i-LIDS-VID" / "sequences"
    found = [numbered_folders(sequences / camera, "person") for camera in CAMERAS]
    if found[0].keys() != found[1].keys():
        lonely = sorted(found[0].keys() ^ found[1].keys())
        raise DataError(
            f"{sequences}: person{lonely[0]:03d} (and {len(lonely) - 1} more) is not in both cam1/ and cam2/; "
            "expected every person in both cameras"
        )
    return [found[0][number] for number in sorted(found[0])]


def _split(path: Path, split_id: int, persons: list[str]) -> tuple[list[str], list[str]]:
    """(train persons, test persons) of one split, each sorted."""
    try:
        content = scipy.io.loadmat(str(path))
    except (ValueError, NotImplementedError, OSError) as exc:  # scipy raises NotImplementedError on MATLAB v7.3
        raise DataError(f"{path} is not a readable MATLAB .mat file ({exc})", hint=LAYOUT.hint) from exc
    if "ls_set" not in content or np.ndim(content["ls_set"]) != 2:
        raise DataError(f"{path} has no 2-D key 'ls_set': expected the iLIDS-VID split file")
    splits = np.asarray(content["ls_set"]).astype(np.int64)
    if not 0 <= split_id < len(splits):
        raise DataError(f"--split-id {split_id}: {path} holds {len(splits)} splits; expected 0..{len(splits) - 1}")
    positions = splits[split_id] - 1
    bad = positions[(positions < 0) | (positions >= len(persons))]
    if bad.size:
        raise DataError(
            f"{path}: split {split_id} names person position {bad[0] + 1}, but {len(persons)} person folders "
            "were found; expected 1-based positions in the sorted person folders"
        )
    half = len(positions) // 2
    return sorted(persons[i] for i in positions[:half]), sorted(persons[i] for i in positions[half:])


def window_bounds(num_frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of the windows of a sequence: starts every ``stride`` frames below ``num_frames - window``, or the
    whole sequence when that leaves none (20 frames, 8, 4: (0, 8), (4, 12), (8, 16)); reference: datasequence.py
    L6-20."""
    return [(start, start + window) for start in range(0, num_frames - window, stride)] or [(0, num_frames)]


def _build(root: Path, item: tuple[str, int, Split], *, listing: Listing, problems: Problems,
           window: int, stride: int) -> list[Tracklet]:
    person, camid, split = item
    folder = root / "i-LIDS-VID" / "sequences" / CAMERAS[camid] / person
    frames = listing.images(folder)
    if not frames:
        problems.add(folder, "no frame images in this tracklet folder")
        return []
    pid = int(person.removeprefix("person"))
    name = f"{CAMERAS[camid]}/{person}"
    if window == 0:
        return [Tracklet(name, pid, camid, split, len(frames), frames=tuple(frames))]
    return [
        Tracklet(f"{name}:w{k}", pid, camid, split, end - start, frames=tuple(frames[start:end]))
        for k, (start, end) in enumerate(window_bounds(len(frames), window, stride))
    ]


def parse(root: Path, *, problems: Problems, split_id: int = 0, window: int = WINDOW,
          window_stride: int = WINDOW_STRIDE) -> Parsed:
    """Parse iLIDS-VID with split ``split_id`` into train, query and gallery windows (see the module docstring).

    Args:
        window: frames per window (the reference's 8); 0 keeps whole sequences.
        window_stride: frames between window starts (the reference's 4).
    Raises:
        DataError: a required file is missing, the split file is malformed, or an option is out of range.
    """
    if window < 0 or window_stride < 1:
        raise DataError(f"--window {window} --window-stride {window_stride}: expected a window >= 0 (0 = whole "
                        "sequences) and a stride >= 1; the reference uses 8 and 4")
    require(root, ("i-LIDS-VID/sequences/cam1", "i-LIDS-VID/sequences/cam2", SPLITS_FILE), LAYOUT)
    train, test = _split(root / SPLITS_FILE, split_id, _persons(root))
    items = [(person, camid, "train") for person in train for camid in (0, 1)]
    items += [(person, 0, "query") for person in test] + [(person, 1, "gallery") for person in test]
    build = functools.partial(_build, root, listing=Listing(), problems=problems, window=window, stride=window_stride)
    tracklets = build_all(items, build, description="iLIDS-VID tracklets")
    extra = {"split_id": split_id, "window": window, "window_stride": window_stride if window else 0}
    return Parsed(tracklets=tracklets, extra=extra, gallery_rule="includes_query" if window else "gallery_only")
