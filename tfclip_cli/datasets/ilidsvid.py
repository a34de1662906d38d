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
``imgextract``; REFERENCE.md §4.11); torchreid takes the opposite halves. Both are random halves of the same 300
persons, so either gives the usual 10-trial protocol. TF-CLIP also cuts every sequence into windows and scores each
window as its own query or gallery item; tfclip keeps one tracklet per person and camera, as torchreid does.
Pids are the person numbers (``person001`` is 1); frames are sorted by name
(torchreid's glob does not sort) and checked for presence by listing, not decoded. Gallery rule: ``gallery_only``.
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


def _build(root: Path, item: tuple[str, int, Split], *, listing: Listing, problems: Problems) -> list[Tracklet]:
    person, camid, split = item
    folder = root / "i-LIDS-VID" / "sequences" / CAMERAS[camid] / person
    frames = listing.images(folder)
    if not frames:
        problems.add(folder, "no frame images in this tracklet folder")
        return []
    pid = int(person.removeprefix("person"))
    return [Tracklet(f"{CAMERAS[camid]}/{person}", pid, camid, split, len(frames), frames=tuple(frames))]


def parse(root: Path, *, problems: Problems, split_id: int = 0) -> Parsed:
    """Parse iLIDS-VID with split ``split_id`` into train, query and gallery tracklets (see the module docstring).

    Raises:
        DataError: a required file is missing, the split file is malformed, or ``split_id`` is out of range.
    """
    require(root, ("i-LIDS-VID/sequences/cam1", "i-LIDS-VID/sequences/cam2", SPLITS_FILE), LAYOUT)
    train, test = _split(root / SPLITS_FILE, split_id, _persons(root))
    items = [(person, camid, "train") for person in train for camid in (0, 1)]
    items += [(person, 0, "query") for person in test] + [(person, 1, "gallery") for person in test]
    listing = Listing()
    build = functools.partial(_build, root, listing=listing, problems=problems)
    tracklets = build_all(items, build, description="iLIDS-VID tracklets")
    return Parsed(tracklets=tracklets, extra={"split_id": split_id})
