"""Manifest and embeddings tables: round trips, metadata, foreign tables, atomic writes."""

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfclip_cli.errors import DataError, GalleryError, OutputError, UserError
from tfclip_cli.tables import (
    Embeddings,
    FootageOrigin,
    Manifest,
    ManifestInfo,
    Tracklet,
    atomic_output,
    check_writable,
    manifest_from_tracklets,
    read_embeddings,
    read_manifest,
    write_embeddings,
    write_manifest,
)

TRACKLETS = [
    Tracklet("a", 1, 0, "train", 2, frames=("/d/a/0.jpg", "/d/a/1.jpg")),
    Tracklet("b", 2, 1, "query", 30, video="/d/b.mp4"),
    Tracklet("c", 0, 2, "gallery", 1, frames=("/d/c/0.jpg",)),
]
INFO = ManifestInfo(dataset="mars", gallery_rule="includes_query", root="/d", extra={"split_id": 3})


def test_manifest_round_trip_keeps_rows_types_and_info(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(manifest_from_tracklets(TRACKLETS, INFO), path)
    manifest = read_manifest(path)
    assert manifest.tracklets() == TRACKLETS
    assert manifest.info.dataset == "mars"
    assert manifest.info.gallery_rule == "includes_query"
    assert manifest.info.extra == {"split_id": 3}
    assert manifest.split_counts() == {"train": 1, "query": 1, "gallery": 1}
    schema = pq.read_schema(path)
    assert schema.field("pid").type == pa.int64() and schema.field("frames").type == pa.list_(pa.string())
    assert [t.tracklet_id for t in manifest.tracklets("query")] == ["b"]


def test_duplicate_tracklet_ids_are_refused() -> None:
    with pytest.raises(DataError, match="duplicate tracklet ids.*a"):
        manifest_from_tracklets([TRACKLETS[0], TRACKLETS[0]], INFO)


def test_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_text("precious")
    with pytest.raises(UserError, match="already exists"):
        write_manifest(manifest_from_tracklets(TRACKLETS, INFO), path)
    assert path.read_text() == "precious"
    write_manifest(manifest_from_tracklets(TRACKLETS, INFO), path, force=True)
    assert len(read_manifest(path).table) == 3


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(path) as temp:
            temp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_manifest_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.parquet not found"):
        read_manifest(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="bad.parquet is not a readable Parquet file"):
        read_manifest(bad)


def test_embeddings_round_trip_as_fixed_size_list(tmp_path: Path) -> None:
    rows = manifest_from_tracklets(TRACKLETS, INFO).table
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "e.parquet"
    write_embeddings(Embeddings(rows=rows, vectors=vectors, info={"gallery_rule": "gallery_only"}), path)
    assert pa.types.is_fixed_size_list(pq.read_schema(path).field("embedding").type)
    loaded = read_embeddings(path)
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert loaded.info == {"gallery_rule": "gallery_only"}
    assert list(loaded.rows["tracklet_id"]) == ["a", "b", "c"]
    assert loaded.dim == 4
    assert list(loaded.select(np.array([False, True, True])).rows["pid"]) == [2, 0]


def test_foreign_embeddings_table_without_metadata_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "foreign.parquet"
    frame = pd.DataFrame({"tracklet_id": ["x", "y"], "pid": [1, 2], "camid": [0, 1], "embedding": [[1.0, 0.0], [0.0, 1.0]]})
    frame.to_parquet(path)
    loaded = read_embeddings(path)
    assert loaded.info == {}
    assert list(loaded.rows["split"]) == ["gallery", "gallery"]
    np.testing.assert_array_equal(loaded.vectors, np.eye(2, dtype=np.float32))


def test_embeddings_without_required_column_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pd.DataFrame({"tracklet_id": ["x"], "pid": [1]}).to_parquet(path)
    with pytest.raises(GalleryError, match="lacks the column"):
        read_embeddings(path)


# --- destinations that cannot be written (issue 13) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
     (errno.EDQUOT, "disk quota exceeded")],
)
def test_a_failed_rename_or_write_is_one_output_error_naming_path_and_cause(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "m.parquet"
    manifest = manifest_from_tracklets(TRACKLETS, INFO)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=f"cannot write {path}: {reason}"):
        write_manifest(manifest, path)
    monkeypatch.undo()
    monkeypatch.setattr(pq, "write_table", refuse)
    with pytest.raises(OutputError, match=f"cannot write {path}: {reason}"):
        write_manifest(manifest, path)
    assert list(tmp_path.iterdir()) == []


def test_an_out_path_under_a_regular_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "sub" / "m.parquet"
    with pytest.raises(OutputError, match="a part of the path is a file, not a folder"):
        check_writable(path)
    with pytest.raises(OutputError, match=f"cannot write {path}"):
        write_manifest(manifest_from_tracklets(TRACKLETS, INFO), path)


def test_check_writable_refuses_a_full_or_read_only_folder_before_any_work(tmp_path, monkeypatch) -> None:
    import tempfile

    check_writable(tmp_path / "new" / "m.parquet")
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="read-only file system"):
        check_writable(tmp_path / "m.parquet")
    (tmp_path / "m.parquet").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        check_writable(tmp_path / "m.parquet")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_output_follows_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out.txt") as temp:
            temp.write_text("shared")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~umask


def test_a_manifest_with_string_pids_is_a_data_error(tmp_path: Path) -> None:
    table = manifest_from_tracklets(TRACKLETS, INFO).table.astype({"pid": str})
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path)
    with pytest.raises(DataError, match="column pid holds (large_)?string values; expected integers"):
        read_manifest(path)
    rows = table.assign(embedding=[[0.0, 1.0]] * len(table))
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "e.parquet")
    with pytest.raises(GalleryError, match="column pid holds (large_)?string values; expected integers"):
        read_embeddings(tmp_path / "e.parquet")



@pytest.mark.parametrize("split", ["val", None])
def test_a_table_naming_a_split_other_than_train_query_gallery_is_refused_naming_it(tmp_path, split) -> None:
    table = manifest_from_tracklets(TRACKLETS, INFO).table.assign(split=split)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp_path / "m.parquet")
    with pytest.raises(DataError, match=f"m.parquet: column split holds {split!r}; expected train, query, gallery"):
        read_manifest(tmp_path / "m.parquet")
    rows = table.assign(embedding=[[0.0, 1.0]] * len(table))
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "e.parquet")
    with pytest.raises(GalleryError, match=f"e.parquet: column split holds {split!r}"):
        read_embeddings(tmp_path / "e.parquet")


UNDER_O = """
import sys
from pathlib import Path
import torch
from tfclip_cli.errors import UserError
from tfclip_cli.inference import load_memory
from tfclip_cli.tables import read_manifest
from tfclip_cli.footage.pipeline import PipelineOptions, check_options
assert False, "this interpreter runs asserts: the test needs python -O"
torch.save({"features": torch.zeros(3, 4), "pid_to_label": {7: 0}, "fingerprint": "f"}, sys.argv[2])
for check in (lambda: read_manifest(Path(sys.argv[1])), lambda: load_memory(Path(sys.argv[2])),
              lambda: check_options(PipelineOptions(every=0))):
    try:
        check()
        print("accepted")
    except UserError as error:
        print(type(error).__name__, error.message)
"""


def test_checks_of_user_input_hold_under_python_O(tmp_path) -> None:
    table = manifest_from_tracklets(TRACKLETS, INFO).table.assign(split="val")
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp_path / "m.parquet")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-O", "-c", UNDER_O, str(tmp_path / "m.parquet"), str(tmp_path / "mem.pt")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("DataError ") and "column split holds 'val'" in lines[0]
    assert lines[1].startswith("CheckpointError ") and "features of shape (3, 4) for 1 identities" in lines[1]
    assert lines[2] == "UserError --every 0 and --min-frames 8: both must be at least 1"


FOOTAGE = [
    Tracklet(
        "cam0/vtest/track0003",
        -1,
        0,
        "gallery",
        2,
        frames=("/f/3/000012.jpg", "/f/3/000019.jpg"),
        origin=FootageOrigin("/videos/vtest.avi", 12, 19, 1.2, 2.0, ((1.5, 2.0, 30.25, 80.0), (2.5, 2.0, 31.25, 81.0)),
                             (12, 19)),
    ),
    TRACKLETS[2],  # a plain tracklet beside a footage one keeps origin None
]


def test_footage_origin_round_trips_through_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(manifest_from_tracklets(FOOTAGE, INFO), path)
    assert read_manifest(path).tracklets() == FOOTAGE
    schema = pq.read_schema(path)
    assert schema.field("first_frame").type == pa.int64()
    assert schema.field("boxes").type == pa.list_(pa.list_(pa.float64(), 4))
    assert schema.field("frame_indices").type == pa.list_(pa.int64())


def test_a_table_from_before_frame_indices_reads_without_them(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    table = manifest_from_tracklets(FOOTAGE, INFO).table.drop(columns=["frame_indices"])
    write_manifest(Manifest(table, INFO), path)
    origin = read_manifest(path).tracklets()[0].origin
    assert origin.frame_indices is None and origin.key_frame == 12  # gapped, frames unknown: the first


def test_manifest_without_footage_has_no_origin_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(manifest_from_tracklets(TRACKLETS, INFO), path)
    assert "source_video" not in pq.read_schema(path).names
    assert all(t.origin is None for t in read_manifest(path).tracklets())


def test_footage_origin_round_trips_through_embeddings_and_index_sidecar(tmp_path: Path) -> None:
    from tfclip_cli.index import build_index, load_index
    from tfclip_cli.tables import row_to_tracklet

    rows = manifest_from_tracklets(FOOTAGE, INFO).table
    path = tmp_path / "e.parquet"
    write_embeddings(Embeddings(rows=rows, vectors=np.eye(2, 4, dtype=np.float32), info={}), path)
    loaded = read_embeddings(path)
    assert [row_to_tracklet(r) for r in loaded.rows.itertuples(index=False)] == FOOTAGE
    build_index(loaded, tmp_path / "g.faiss")
    gallery = load_index(tmp_path / "g.faiss")
    assert [row_to_tracklet(r) for r in gallery.rows.itertuples(index=False)] == FOOTAGE
