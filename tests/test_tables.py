"""Manifest and embeddings tables: round trips, metadata, foreign tables, atomic writes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfclip_cli.errors import DataError, GalleryError, UserError
from tfclip_cli.tables import (
    Embeddings,
    FootageOrigin,
    ManifestInfo,
    Tracklet,
    atomic_output,
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


FOOTAGE = [
    Tracklet(
        "cam0/vtest/track0003",
        -1,
        0,
        "gallery",
        2,
        frames=("/f/3/000012.jpg", "/f/3/000013.jpg"),
        origin=FootageOrigin("/videos/vtest.avi", 12, 13, 1.2, 1.3, ((1.5, 2.0, 30.25, 80.0), (2.5, 2.0, 31.25, 81.0))),
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
