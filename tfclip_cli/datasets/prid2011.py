"""PRID2011, the multi-shot release layout.

Reference: Hirzer et al., "Person Re-Identification by Descriptive and Discriminative Classification", SCIA 2011.
URL: https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/PRID11/

Statistics: 385 persons in camera A and 749 in camera B, the first 200 seen by both; tracklets of 5 to 675 frames.
The usual protocol keeps the 178 persons with at least 21 frames in each camera.

Layout (ROOT is the folder holding ``prid_2011/``)::

    ROOT/prid_2011/multi_shot/cam_a/person_0001/0001.png ...
    ROOT/prid_2011/multi_shot/cam_b/person_0001/...
    ROOT/splits_prid2011.json   optional: [{"train": ["person_0001", ...], "test": [...]}, ...] (torchreid's file)

Protocol: split ``split_id`` comes from ``splits_prid2011.json`` when ROOT holds it (the file most codebases share,
read as torchreid ``video/prid2011.py`` does), otherwise from 10 random 50/50 splits of the persons seen by both
cameras with at least 21 frames in each, drawn with a fixed seed (:data:`SPLIT_SEED`). Training uses both cameras of
the train persons; the query is the cam_a tracklet (camid 0) and the gallery the cam_b tracklet (camid 1) of each test
person. Pids are the person numbers (``person_0001`` is 1); frames are sorted by name (torchreid's glob does not
sort) and checked for presence by listing, not decoded. Gallery rule: ``gallery_only``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from tfclip_cli.datasets.common import Layout, Listing, Parsed, Problems, build_all, numbered_folders, require
from tfclip_cli.errors import DataError
from tfclip_cli.tables import Split, Tracklet

LAYOUT = Layout(
    description="the PRID2011 layout (prid_2011/multi_shot/cam_a/, cam_b/, optional splits_prid2011.json)",
    hint="point ROOT at the folder holding prid_2011/",
)
CAMERAS = ("cam_a", "cam_b")  # camid 0, 1
SPLITS_FILE = "splits_prid2011.json"
NUM_SPLITS = 10
MIN_FRAMES = 21  # per camera, for a person to enter the generated splits
SPLIT_SEED = 0


def _camera_dir(root: Path, camid: int) -> Path:
    return root / "prid_2011" / "multi_shot" / CAMERAS[camid]


def generate_splits(frame_counts: dict[str, tuple[int, int]]) -> list[dict[str, list[str]]]:
    """10 random 50/50 splits of the persons with at least MIN_FRAMES frames in both cameras, fixed seed.

    Args:
        frame_counts: person folder → (frames in cam_a, frames in cam_b).
    Returns:
        splits as in splits_prid2011.json; with an odd count the test half gets the extra person.
    """
    eligible = sorted(person for person, counts in frame_counts.items() if min(counts) >= MIN_FRAMES)
    rng = np.random.default_rng(SPLIT_SEED)
    splits = []
    for _ in range(NUM_SPLITS):
        order = rng.permutation(len(eligible))
        half = len(eligible) // 2
        splits.append(
            {"train": sorted(eligible[i] for i in order[:half]), "test": sorted(eligible[i] for i in order[half:])}
        )
    return splits


def _read_splits(path: Path) -> list[dict[str, list[str]]]:
    try:
        splits = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): expected torchreid's split file") from exc
    is_valid = isinstance(splits, list) and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("test"), list) for s in splits
    )
    if not is_valid or not splits:
        raise DataError(f'{path}: expected a list of {{"train": [person folders], "test": [...]}} splits')
    return splits


def _frame_counts(root: Path, listing: Listing) -> dict[str, tuple[int, int]]:
    """Person folder → frames per camera, for the persons both cameras have."""
    folders = [numbered_folders(_camera_dir(root, camid), "person_") for camid in (0, 1)]
    shared = sorted(folders[0].keys() & folders[1].keys())
    return {
        folders[0][n]: tuple(len(listing.images(_camera_dir(root, c) / folders[0][n])) for c in (0, 1)) for n in shared
    }


def _select(splits: list[dict], split_id: int, *, source: str, counts: dict[str, tuple[int, int]]) -> dict:
    if not 0 <= split_id < len(splits):
        raise DataError(f"--split-id {split_id}: {source} holds {len(splits)} splits; expected 0..{len(splits) - 1}")
    split = splits[split_id]
    unknown = [p for p in split["train"] + split["test"] if p not in counts]
    if unknown:
        raise DataError(
            f"{source}: split {split_id} names {unknown[0]}, which is not a folder in both prid_2011/multi_shot/cam_a/ "
            "and cam_b/"
        )
    return split


def _build(root: Path, item: tuple[str, int, Split], *, listing: Listing, problems: Problems) -> list[Tracklet]:
    person, camid, split = item
    folder = _camera_dir(root, camid) / person
    frames = listing.images(folder)
    if not frames:
        problems.add(folder, "no frame images in this tracklet folder")
        return []
    pid = int(person.removeprefix("person_"))
    return [Tracklet(f"{CAMERAS[camid]}/{person}", pid, camid, split, len(frames), frames=tuple(frames))]


def parse(root: Path, *, problems: Problems, split_id: int = 0) -> Parsed:
    """Parse PRID2011 with split ``split_id`` into train, query and gallery tracklets (see the module docstring).

    Raises:
        DataError: a camera folder is missing, the split file is malformed or names unknown persons, or
            ``split_id`` is out of range.
    """
    require(root, [str(_camera_dir(Path(), camid)) for camid in (0, 1)], LAYOUT)
    listing = Listing()
    counts = _frame_counts(root, listing)
    splits_path = root / SPLITS_FILE
    if splits_path.is_file():
        splits, source = _read_splits(splits_path), str(splits_path)
    else:
        splits = generate_splits(counts)
        source = f"generated ({NUM_SPLITS} random 50/50 splits, seed {SPLIT_SEED}, >= {MIN_FRAMES} frames per camera)"
    split = _select(splits, split_id, source=source, counts=counts)
    items = [(person, camid, "train") for person in split["train"] for camid in (0, 1)]
    items += [(person, 0, "query") for person in split["test"]] + [(person, 1, "gallery") for person in split["test"]]
    build = functools.partial(_build, root, listing=listing, problems=problems)
    tracklets = build_all(items, build, description="PRID2011 tracklets")
    return Parsed(tracklets=tracklets, extra={"split_id": split_id, "splits": source})
