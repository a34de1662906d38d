"""LS-VID, the layout the official TF-CLIP code reads.

Reference: Li et al., "Global-Local Temporal Representations for Video Person Re-Identification", ICCV 2019.
URL: https://github.com/jackiehaoli/LS-VID (request form for the data)

Statistics: 3,772 identities, 15 cameras, 14,943 tracklets (about 3 million frames).

Layout (ROOT is the folder holding ``info/``; the release's own ``list_sequence/`` and ``test/data/`` folders are
accepted in place of ``info/list_sequence/`` and ``info/data/``)::

    ROOT/info/list_sequence/list_seq_train.txt   "<tracklet path> <pid>" per line; the path is relative to ROOT
    ROOT/info/list_sequence/list_seq_test.txt    and is the common prefix of the tracklet's frame files
    ROOT/info/data/info_test.mat                 MATLAB v7.3 (HDF5); dataset "query": 1-based test line numbers
    ROOT/tracklet_train/..., ROOT/tracklet_test/...   frames <a>_<b>_<camera>_<c>_....jpg

Protocol (TF-CLIP ``datasets/set/lsvid.py`` L25-32, L131-148; docs/fidelity.md#datasets-and-sampler): the query is the
test lines listed in ``query`` and the gallery the other test lines; junk (pid -1) is dropped; the camera is the third
``_`` field of the first frame's name (1..15, made 0-based). TF-CLIP's evaluator ranks each query against query plus
gallery (``utils/metrics.py``, ``gf = feats[0:]``), and the other public parsers note that the gallery must contain the
queries for every query to have a match, hence the gallery rule ``includes_query``.

Training chunks (TF-CLIP ``datasets/set/lsvid.py`` L140-148, ``sampling_step=48``;
docs/fidelity.md#datasets-and-sampler): by default each training tracklet is cut into ``len // 48`` chunks of 48 frames,
the last chunk keeping the remainder (100 frames give 0-47 and 48-99), and a training tracklet shorter than 48 frames
yields no chunk, so it is left out of training (and out of the CLIP-Memory) as in the reference; an identity left
without chunks has no classifier row (the reference counts classes before chunking, so it keeps a row no sample uses).
``train_chunk=0`` keeps whole training tracklets instead. Query and gallery tracklets are never cut. Frames are checked
for presence by listing their folders, not decoded.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tfclip_cli.datasets.common import Layout, Listing, Parsed, Problems, build_all, require
from tfclip_cli.errors import DataError
from tfclip_cli.tables import Split, Tracklet

logger = logging.getLogger(__name__)

LAYOUT = Layout(
    description="the LS-VID layout read by TF-CLIP (info/list_sequence/list_seq_{train,test}.txt, "
    "info/data/info_test.mat, tracklet_train/, tracklet_test/)",
    hint="point ROOT at the folder holding info/ (or the release's list_sequence/ and test/)",
)
# Where the index files live: TF-CLIP's layout first, then the release's own.
INDEX_DIRS = (("info/list_sequence", "info/data"), ("list_sequence", "test/data"))
JUNK_PID = -1
NUM_CAMERAS = 15
TRAIN_CHUNK = 48  # the reference's sampling_step


@dataclass(frozen=True)
class _Line:
    """One line of a list_seq file and the split it goes to."""

    path: str  # relative to ROOT, prefix of the frame files
    pid: int
    split: Split


def _index_paths(root: Path) -> tuple[Path, ...]:
    """The train list, test list and info_test.mat of whichever of the two layouts ROOT has."""
    require(root, [], LAYOUT)
    lists, data = next((pair for pair in INDEX_DIRS if (root / pair[0]).is_dir()), INDEX_DIRS[0])
    names = (f"{lists}/list_seq_train.txt", f"{lists}/list_seq_test.txt", f"{data}/info_test.mat")
    require(root, names, LAYOUT)
    return tuple(root / name for name in names)


def _read_list(path: Path, split: Split) -> list[_Line]:
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: {text!r}; expected '<tracklet path> <pid>'")
        lines.append(_Line(path=fields[0], pid=int(fields[1]), split=split))
    return lines


def _read_query_lines(path: Path, num_test: int) -> np.ndarray:
    """0-based test line numbers of the queries (``query`` holds 1-based ones)."""
    try:
        with h5py.File(path, "r") as mat:
            if "query" not in mat:
                raise DataError(f"{path} has no dataset 'query' (found: {', '.join(mat)}); expected LS-VID's file")
            rows = np.asarray(mat["query"]).reshape(-1).astype(np.int64) - 1
    except OSError as exc:
        raise DataError(f"{path} is not a readable MATLAB v7.3 (HDF5) file ({exc})", hint=LAYOUT.hint) from exc
    bad = rows[(rows < 0) | (rows >= num_test)]
    if bad.size:
        raise DataError(f"{path}: query index {bad[0] + 1} is outside 1..{num_test}, the lines of list_seq_test.txt")
    return rows


def _camera(frame: str) -> int:
    """The 1-based camera: the third ``_`` field of a frame's file name."""
    fields = Path(frame).name.split("_")
    if len(fields) < 4 or not fields[2].isdigit() or not 1 <= int(fields[2]) <= NUM_CAMERAS:
        raise DataError(f"{frame}: expected a name <a>_<b>_<camera 1..{NUM_CAMERAS}>_<c>_... as in LS-VID")
    return int(fields[2])


def chunk_bounds(num_frames: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of the training chunks of a tracklet: ``num_frames // chunk`` chunks, the last one keeping the
    remainder; none for a tracklet shorter than ``chunk`` (reference: lsvid.py L140-148)."""
    count = num_frames // chunk
    return [(k * chunk, num_frames if k == count - 1 else (k + 1) * chunk) for k in range(count)]


def _build(root: Path, line: _Line, *, listing: Listing, problems: Problems, train_chunk: int) -> list[Tracklet]:
    """The tracklet(s) of one list line: none for junk or a line without frames, chunks for training."""
    if line.pid == JUNK_PID:
        return []
    prefix = root / line.path
    frames = listing.images(prefix.parent, prefix.name)
    if not frames:
        problems.add(str(prefix) + "*", "no frame images start with this path")
        return []
    camid = _camera(frames[0]) - 1
    if train_chunk == 0 or line.split != "train":
        return [Tracklet(line.path, line.pid, camid, line.split, len(frames), frames=tuple(frames))]
    return [
        Tracklet(f"{line.path}:c{k}", line.pid, camid, "train", end - start, frames=tuple(frames[start:end]))
        for k, (start, end) in enumerate(chunk_bounds(len(frames), train_chunk))
    ]


def parse(root: Path, *, problems: Problems, train_chunk: int = TRAIN_CHUNK) -> Parsed:
    """Parse LS-VID into train (chunks), query and gallery tracklets (see the module docstring).

    Args:
        train_chunk: frames per training chunk (the reference's 48); 0 keeps whole training tracklets.
    Raises:
        DataError: a required file is missing or malformed, or a frame name carries no camera.
    """
    if train_chunk < 0:
        raise DataError(f"--train-chunk {train_chunk}: expected a number of frames (48 as the reference) or 0")
    train_path, test_path, query_path = _index_paths(root)
    train = _read_list(train_path, "train")
    test = _read_list(test_path, "gallery")
    query_rows = _read_query_lines(query_path, len(test))
    queries = set(query_rows.tolist())
    lines = train + [_Line(test[i].path, test[i].pid, "query") for i in query_rows]
    lines += [line for i, line in enumerate(test) if i not in queries]
    build = functools.partial(_build, root, listing=Listing(), problems=problems, train_chunk=train_chunk)
    tracklets = build_all(lines, build, description="LS-VID tracklets")
    extra = {"train_chunk": train_chunk}
    if train_chunk:
        unusable = {path for path, _ in problems.items}
        kept = [line for line in train if f"{root / line.path}*" not in unusable]
        extra["short_train_tracklets_dropped"] = _count_dropped(kept, tracklets)
    return Parsed(tracklets=tracklets, extra=extra)


def _count_dropped(train: list[_Line], tracklets: list[Tracklet]) -> int:
    """Training lines with frames (junk aside) that gave no chunk: shorter than the chunk, as in the reference."""
    chunked = {t.tracklet_id.rpartition(":c")[0] for t in tracklets if t.split == "train"}
    listed = {line.path for line in train if line.pid != JUNK_PID}
    dropped = len(listed - chunked)
    if dropped:
        logger.info("%d training tracklet(s) shorter than the training chunk left out, as the reference does", dropped)
    return dropped
