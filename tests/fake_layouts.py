"""Builders of tiny fake datasets in the real published layouts: the same folders, file names, .mat keys and index
conventions as the releases, with a few 8×4 frames per tracklet."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import av
import h5py
import numpy as np
import scipy.io
from PIL import Image

# (pid, camera as published (1-based for MARS/LS-VID), number of frames)
Track = tuple[int, int, int]


def write_image(path: Path, shade: int = 128) -> None:
    """A tiny solid image; the format follows the suffix (.jpg or .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (shade, 255 - shade, 60)).save(path)


def write_video(path: Path, num_frames: int) -> None:
    """A tiny MPEG-4 video (16×16) of ``num_frames`` frames, written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index in range(num_frames):
            pixels = np.full((16, 16, 3), 10 * index % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def truncate(path: Path) -> None:
    """Cut a file to half its size, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])




def mars_pid(pid: int) -> str:
    """The 4-character pid of MARS file names: junk is ``00-1``."""
    return "00-1" if pid == -1 else f"{pid:04d}"


def _mars_half(root: Path, name: str, tracks: Sequence[Track]) -> np.ndarray:
    """Write bbox_<name>/ frames and info/<name>_name.txt; return the [N, 4] track table (1-based)."""
    names, rows, serial = [], [], Counter()
    for pid, camera, num_frames in tracks:
        serial[(pid, camera)] += 1
        prefix = f"{mars_pid(pid)}C{camera}T{serial[(pid, camera)]:04d}"
        start = len(names) + 1
        names += [f"{prefix}F{frame:03d}.jpg" for frame in range(1, num_frames + 1)]
        rows.append([start, len(names), pid, camera])
    for frame in names:
        write_image(root / f"bbox_{name}" / frame[:4] / frame)
    (root / "info" / f"{name}_name.txt").write_text("".join(f"{n}\n" for n in names))
    return np.asarray(rows, dtype=np.float64)  # the release stores doubles


def make_mars(root: Path, *, train: Sequence[Track], test: Sequence[Track], query_rows: Sequence[int]) -> Path:
    """A MARS tree; ``query_rows`` are 1-based rows of ``test``, as in query_IDX.mat."""
    (root / "info").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": _mars_half(root, "train", train)})
    scipy.io.savemat(root / "info" / "tracks_test_info.mat", {"track_test_info": _mars_half(root, "test", test)})
    query = np.asarray(query_rows, dtype=np.float64).reshape(1, -1)
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": query})
    return root




def _write_mat73(path: Path, key: str, values: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 behind a 512-byte MATLAB header, as h5py-reading parsers expect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as mat:
        mat.create_dataset(key, data=values)
    with path.open("r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 .")


def lsvid_prefix(subset: str, index: int, *, pid: int, camera: int) -> str:
    """The list path of a tracklet, ``tracklet_<subset>/<pid>/<pid>_<index>_<camera>_<index>``; frames add ``_NNNN``."""
    folder = "junk" if pid == -1 else f"{pid:04d}"
    return f"tracklet_{subset}/{folder}/{folder}_{index:03d}_{camera:02d}_{index:04d}"


def _lsvid_half(root: Path, subset: str, tracks: Sequence[Track]) -> list[str]:
    lines = []
    for index, (pid, camera, num_frames) in enumerate(tracks, start=1):
        prefix = lsvid_prefix(subset, index, pid=pid, camera=camera)
        for frame in range(num_frames):
            write_image(root / f"{prefix}_{frame:04d}.jpg")
        lines.append(f"{prefix} {pid}\n")
    return lines


def make_lsvid(
    root: Path, *, train: Sequence[Track], test: Sequence[Track], query_rows: Sequence[int], release: bool = False
) -> Path:
    """An LS-VID tree in TF-CLIP's layout (``info/...``) or, with ``release``, the release's own."""
    lists, data = ("list_sequence", "test/data") if release else ("info/list_sequence", "info/data")
    (root / lists).mkdir(parents=True, exist_ok=True)
    (root / lists / "list_seq_train.txt").write_text("".join(_lsvid_half(root, "train", train)))
    (root / lists / "list_seq_test.txt").write_text("".join(_lsvid_half(root, "test", test)))
    _write_mat73(root / data / "info_test.mat", "query", np.asarray(query_rows, dtype=np.float64).reshape(1, -1))
    return root




def make_ilidsvid(root: Path, *, persons: dict[int, tuple[int, int]], ls_set: np.ndarray) -> Path:
    """An iLIDS-VID tree; ``persons`` maps person number → frames in (cam1, cam2); ``ls_set`` is 1-based."""
    for number, counts in persons.items():
        for camera, num_frames in zip(("cam1", "cam2"), counts):
            folder = root / "i-LIDS-VID" / "sequences" / camera / f"person{number:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for frame in range(num_frames):
                write_image(folder / f"{camera}_person{number:03d}_{frame * 7 + 3:05d}.png")
    splits = root / "train-test people splits"
    splits.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(splits / "train_test_splits_ilidsvid.mat", {"ls_set": np.asarray(ls_set, dtype=np.float64)})
    return root




def make_prid2011(
    root: Path, *, cam_a: dict[int, int], cam_b: dict[int, int], splits: list[dict] | None = None
) -> Path:
    """A PRID2011 multi-shot tree; ``cam_a``/``cam_b`` map person number → frames; ``splits`` goes to
    splits_prid2011.json."""
    for camera, persons in (("cam_a", cam_a), ("cam_b", cam_b)):
        for number, num_frames in persons.items():
            folder = root / "prid_2011" / "multi_shot" / camera / f"person_{number:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for frame in range(1, num_frames + 1):
                write_image(folder / f"{frame:04d}.png")
    if splits is not None:
        (root / "splits_prid2011.json").write_text(json.dumps(splits))
    return root
