"""FAISS gallery: exact and approximate search, the documented ivfpq rule, append (the log, its torn records and
generations, the ids cache, compaction), damaged files, writers killed at every step, the --gpu error path,
the types ivfpq-fp16 / -sq8 / -norescore and `--type auto`'s choice within a memory budget,
`tfclip index` / `tfclip query` (tiny random-init model), and the HTML report (also in Chromium)."""

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gallery_copy import copy_gallery
from tiny_training import TINY_CONFIG as CONFIG, save_tiny_checkpoint, tiny_manifest
from tfclip_cli import index
from tfclip_cli.cli import app
from tfclip_cli.errors import GalleryError, OutputError, UserError
from tfclip_cli.inference import extract_to_file
from tfclip_cli.model import build_model
from tfclip_cli.report.query import render_query_report
from tfclip_cli.tables import Embeddings, read_embeddings, read_manifest, write_embeddings

CHECKPOINT_INFO = {"checkpoint": "/runs/a.ckpt", "checkpoint_sha256": "a" * 64, "sampling": "dense"}


def _rows(ids: list[str], *, videos: bool = True) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tracklet_id": ids,
            "pid": np.arange(len(ids), dtype=np.int64),
            "camid": np.arange(len(ids), dtype=np.int64) % 3,
            "split": "gallery",
            "num_frames": np.full(len(ids), 5, dtype=np.int64),
            "frames": [None] * len(ids),
            "video": [f"/videos/{i}.mp4" if videos else None for i in ids],
        }
    )


def _embeddings(vectors: np.ndarray, *, prefix: str = "t", info: dict | None = None) -> Embeddings:
    ids = [f"{prefix}{i}" for i in range(len(vectors))]
    info = dict(CHECKPOINT_INFO if info is None else info)
    return Embeddings(rows=_rows(ids), vectors=vectors.astype(np.float32), info=info)


def _clustered(count: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rows and 50 queries around ``count // 10`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // 10, dim)).astype(np.float32)
    draw = lambda n: centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return draw(count), draw(50)


def _brute_force(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by cosine similarity with a plain numpy sort: the oracle."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = unit(queries) @ unit(gallery).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_flat_search_equals_brute_force_cosine(tmp_path):
    rng = np.random.default_rng(0)
    gallery, queries = rng.standard_normal((300, 24)) * 5, rng.standard_normal((7, 24))
    index.build_index(_embeddings(gallery), tmp_path / "g.faiss")
    hits = index.search(index.load_index(tmp_path / "g.faiss"), queries, 5)
    expected_rows, expected_scores = _brute_force(gallery, queries, 5)
    assert [[hit.row for hit in query] for query in hits] == expected_rows.tolist()
    np.testing.assert_allclose([[hit.score for hit in query] for query in hits], expected_scores, atol=1e-5)
    first = hits[0][0]
    assert first.rank == 1 and first.tracklet_id == f"t{first.row}" and first.source == f"/videos/t{first.row}.mp4"
    assert first.pid == first.row and first.camid == first.row % 3


def test_top_k_larger_than_the_gallery_returns_every_row_once(tmp_path):
    index.build_index(_embeddings(np.eye(4)), tmp_path / "g.faiss")
    hits = index.search(index.load_index(tmp_path / "g.faiss"), np.eye(4)[:1], 10)[0]
    assert [hit.tracklet_id for hit in hits][0] == "t0" and sorted(hit.row for hit in hits) == [0, 1, 2, 3]
    assert [hit.rank for hit in hits] == [1, 2, 3, 4]


@pytest.mark.parametrize("index_type", ["ivfpq", "ivfpq-fp16", "ivfpq-sq8", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours_of_clustered_data(tmp_path, index_type):
    gallery, queries = _clustered(4000, 32, seed=1)
    info = index.build_index(_embeddings(gallery), tmp_path / "g.faiss", index_type=index_type)
    hits = index.search(index.load_index(tmp_path / "g.faiss"), queries, 10)
    exact, _ = _brute_force(gallery, queries, 10)
    recall = np.mean([len({h.row for h in found} & set(rows)) / 10 for found, rows in zip(hits, exact)])
    assert recall >= 0.9
    assert info.type == index_type and info.count == 4000


def test_ivfpq_parameters_follow_the_documented_rule():
    assert index.ivfpq_params(100_000, 256) == {
        "nlist": 316, "m": 64, "nbits": 4, "nprobe": 39, "k_factor": 4.0, "train_rows": 20_224,
    }
    large = index.ivfpq_params(1_000_000, 2048)
    assert (large["nlist"], large["m"], large["nprobe"], large["train_rows"]) == (1000, 512, 125, 64_000)
    small = index.ivfpq_params(2000, 30)  # 2000 // 39 = 51 > round(sqrt(2000)) = 45; 6 is 30's largest divisor <= 7
    assert (small["nlist"], small["m"], small["nprobe"], small["train_rows"]) == (45, 6, 16, 2000)


@pytest.mark.parametrize("dim", [7, 31, 127])  # below 8, or prime: no divisor between 2 and dim / 4
def test_ivfpq_refuses_a_dimension_it_cannot_split_instead_of_one_sub_quantizer(tmp_path, dim):
    with pytest.raises(GalleryError, match=f"{dim}-d embeddings have no divisor between 2 and {dim // 4}") as error:
        index.build_index(_embeddings(np.ones((700, dim))), tmp_path / "g.faiss", index_type="ivfpq")
    assert "--type hnsw" in error.value.hint and not (tmp_path / "g.faiss").exists()
    assert index.ivfpq_params(700, 8)["m"] == 2 and index.ivfpq_params(700, 62)["m"] == 2  # 62 = 2 x 31


def test_ivfpq_refuses_a_gallery_too_small_to_train_and_points_to_flat(tmp_path):
    with pytest.raises(GalleryError, match="at least 624") as error:
        index.build_index(_embeddings(np.eye(8)), tmp_path / "g.faiss", index_type="ivfpq")
    assert "--type flat" in error.value.hint
    assert not list(tmp_path.iterdir())


GIB = 2**30
AUTO_CHOICES = [  # (count, dim, budget) -> type, index bytes, worked by hand from index_bytes' rule
    # 1e7 x 512: nlist = round(sqrt(1e7)) = 3162, m = 128 -> 64 B of code + 8 B id; centroids 3162 * 512 * 4
    ((10**7, 512, 8 * GIB), "ivfpq-sq8", 10**7 * (72 + 512) + 3162 * 2048),  # 5.85e9; fp16 10.97e9 over
    ((10**7, 512, 12 * GIB), "ivfpq-fp16", 10**7 * (72 + 1024) + 3162 * 2048),  # 10.97e9 <= 12.88e9
    ((10**7, 512, 4 * GIB), "ivfpq-norescore", 10**7 * 72 + 3162 * 2048),
    ((10**6, 512, 4 * GIB), "ivfpq", 10**6 * (72 + 2048) + 1000 * 2048),  # 2.12e9: float32 re-scoring fits
    ((10**5, 512, 4 * GIB), "flat", 10**5 * 2048),  # at most FLAT_MAX_ROWS: exact
    # 1e5 x 512 in 100 MiB = 104,857,600 B: flat 204.8e6, ivfpq 212.6e6, fp16 110.2e6 over; sq8 59.0e6 fits
    ((10**5, 512, 100 * 2**20), "ivfpq-sq8", 10**5 * (72 + 512) + 316 * 2048),
    ((100_001, 512, 4 * GIB), "ivfpq", 100_001 * (72 + 2048) + 316 * 2048),  # one over FLAT_MAX_ROWS
]


@pytest.mark.parametrize(("args", "expected_type", "expected_bytes"), AUTO_CHOICES)
def test_auto_chooses_flat_when_small_then_the_most_accurate_ivfpq_within_the_budget(args, expected_type,
                                                                                      expected_bytes):
    choice = index.choose_index_type(*args)
    assert (choice.type, choice.index_bytes) == (expected_type, expected_bytes)
    assert index.index_bytes(expected_type, *args[:2]) == expected_bytes
    assert f"{args[0]:,} tracklets" in choice.reason and f"{args[2] / GIB:.2f} GiB budget" in choice.reason


def test_auto_names_the_smallest_type_when_nothing_fits_the_budget():
    with pytest.raises(GalleryError, match=r"fits the memory budget of 0\.50 GiB: the smallest, ivfpq-norescore, "
                                           r"takes 0\.68 GiB") as error:
        index.choose_index_type(10**7, 512, GIB // 2)  # 726,475,776 B = 0.68 GiB
    assert "--memory-budget to at least 1GiB" in error.value.hint
    with pytest.raises(GalleryError, match="ivfpq needs at least 624 tracklets"):
        index.choose_index_type(500, 512, 1024)  # flat takes 1,024,000 B


@pytest.mark.parametrize(("text", "size"), [("4GiB", 4 * GIB), ("512MiB", 512 * 2**20), ("8G", 8 * GIB),
                                            ("1.5gib", 3 * GIB // 2), ("64k", 65536), ("123", 123), ("1 TiB", 2**40)])
def test_memory_budgets_are_read_in_powers_of_1024(text, size):
    assert index.parse_memory_budget(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0", "4GB!", "4 PiB", ""])
def test_a_memory_budget_that_is_not_a_size_is_refused(text):
    with pytest.raises(UserError, match=f"--memory-budget {re.escape(repr(text))} is not a size"):
        index.parse_memory_budget(text)


def test_index_cli_auto_prints_and_records_its_choice_within_the_budget(tmp_path):
    table, out = tmp_path / "e.parquet", tmp_path / "g.faiss"
    write_embeddings(_embeddings(np.random.default_rng(0).standard_normal((700, 16))), table)
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(table), "--out", str(out), "--type", "auto"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "flat index of 700 tracklets" in result.output and "--type auto chose flat: 700 tracklets" in result.output
    # 700 x 16 in 40 KiB = 40,960 B: flat 44,800 over; ivfpq (nlist 17, m 4: 2 B code + 8 B id) 700 * 74 + 17 * 64
    # = 52,888 over; ivfpq-fp16 700 * 42 + 1,088 = 30,488 fits
    result = runner.invoke(app, ["index", str(table), "--out", str(out), "--type", "auto", "--memory-budget", "40KiB",
                                 "--force"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "ivfpq-fp16 index of 700 tracklets" in result.output
    info = index.load_index(out).info
    assert info.type == "ivfpq-fp16" and info.choice["budget_bytes"] == 40960 and info.choice["index_bytes"] == 30488
    assert f"--type auto chose ivfpq-fp16: {info.choice['reason']}" in result.output
    for extra, message in [(["--memory-budget", "4GiB"], "--memory-budget chooses the type of --type auto"),
                           (["--type", "auto", "--memory-budget", "lots"], "--memory-budget 'lots' is not a size"),
                           (["--type", "auto", "--memory-budget", "1KiB"], "fits the memory budget of 0.00 GiB")]:
        result = runner.invoke(app, ["index", str(table), "--out", str(tmp_path / "h.faiss"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "h.faiss").exists()
    result = runner.invoke(app, ["index", "--compact", str(out), "--memory-budget", "4GiB"])
    assert result.exit_code == 2 and "--compact takes the gallery alone" in result.output, result.output


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "ivfpq-fp16", "ivfpq-sq8", "ivfpq-norescore", "hnsw"])
def test_each_index_file_takes_about_the_bytes_the_budget_rule_counts(tmp_path, index_type):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(_clustered(4000, 32, seed=1)[0]), path, index_type=index_type)
    size = index.index_path(path, info.generation).stat().st_size
    assert 0.9 < size / index.index_bytes(index_type, 4000, 32) < 1.15


def test_one_gallery_file_records_rows_and_provenance_and_names_its_index_file(tmp_path):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(6)), path, index_type="hnsw")
    assert len(info.generation) == 32 and int(info.generation, 16) >= 0  # uuid4 hex
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g.faiss", f"g.faiss.{info.generation}.faissindex", f"g.faiss.{info.generation}.ids", "g.faiss.lock"]
    assert path.read_bytes().startswith(b"TFCLIP-GALLERY-2")
    assert faiss.read_index(str(index.index_path(path, info.generation))).ntotal == 6  # a plain FAISS file
    gallery = index.load_index(path)
    assert gallery.info == info
    assert (info.type, info.dim, info.count, info.removed, info.calibration) == ("hnsw", 6, 6, (), None)
    assert info.params == {"M": 32, "efConstruction": 40, "efSearch": 64}
    assert info.checkpoint == "/runs/a.ckpt" and info.checkpoint_sha256 == "a" * 64
    assert info.embeddings_info == {"sampling": "dense"}
    assert list(gallery.rows["tracklet_id"]) == [f"t{i}" for i in range(6)]
    assert list(gallery.rows["video"]) == [f"/videos/t{i}.mp4" for i in range(6)]


FOOTAGE_COLUMNS = {
    "source_video": ["/cams/c1.mp4", "/cams/c2.mp4"],
    "first_frame": [10, 200],
    "last_frame": [40, 260],
    "start_s": [0.4, 8.0],
    "end_s": [1.6, 10.4],
    "boxes": [[[1.0, 2.0, 30.0, 60.0]], [[5.0, 6.0, 35.0, 70.0]]],
}


def _plain(value):
    """A value read back from Parquet as plain Python (nested lists come back as arrays of arrays)."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def test_the_gallery_keeps_every_column_of_the_indexed_rows_and_reports_time_ranges(tmp_path):
    path = tmp_path / "g.faiss"
    table = _embeddings(np.eye(4)[:2])
    for name, values in FOOTAGE_COLUMNS.items():
        table.rows[name] = values
    index.build_index(table, path)
    later = _embeddings(np.eye(4)[2:], prefix="n")  # appended rows without the footage columns
    index.append_to_index(later, path)
    rows = index.load_index(path).rows
    assert list(rows.columns[:7]) == ["tracklet_id", "pid", "camid", "split", "num_frames", "frames", "video"]
    for name, values in FOOTAGE_COLUMNS.items():
        stored = [_plain(v) for v in rows[name][:2]]
        assert stored == values, name
    assert rows["start_s"][2:].isna().all()
    hits = index.search(index.load_index(path), np.eye(4)[[1, 3]], 1)
    assert (hits[0][0].start_s, hits[0][0].end_s) == (8.0, 10.4) and hits[1][0].start_s is None


def test_build_refuses_an_existing_output_and_repeated_ids(tmp_path):
    path = tmp_path / "g.faiss"
    path.write_text("stale")
    with pytest.raises(UserError, match="g.faiss already exists"):
        index.build_index(_embeddings(np.eye(3)), path)
    assert path.read_text() == "stale"
    index.build_index(_embeddings(np.eye(3)), path, force=True)
    repeated = Embeddings(rows=_rows(["a", "b", "a"]), vectors=np.eye(3, dtype=np.float32), info={})
    with pytest.raises(GalleryError, match="repeats tracklet ids a"):
        index.build_index(repeated, tmp_path / "h.faiss")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_index_refuses_non_finite_embeddings_with_one_red_line(tmp_path, bad):
    vectors = np.eye(4, dtype=np.float32)
    vectors[2, 1] = bad
    with pytest.raises(GalleryError, match=r"1 tracklet\(s\) hold NaN or inf \(t2\)"):
        index.build_index(_embeddings(vectors), tmp_path / "g.faiss")
    table = tmp_path / "e.parquet"
    write_embeddings(_embeddings(vectors), table)
    result = CliRunner().invoke(app, ["index", str(table), "--out", str(tmp_path / "g.faiss")])
    assert result.exit_code == 2 and "NaN or inf" in result.output and "Traceback" not in result.output
    index.build_index(_embeddings(np.eye(4)), tmp_path / "g.faiss")
    with pytest.raises(GalleryError, match="NaN or inf"):
        index.append_to_index(_embeddings(vectors, prefix="n"), tmp_path / "g.faiss")
    assert index.load_index(tmp_path / "g.faiss").info.count == 4


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "ivfpq-fp16", "ivfpq-sq8", "ivfpq-norescore", "hnsw"])
def test_append_adds_tracklets_that_search_then_finds(tmp_path, index_type):
    rng = np.random.default_rng(2)
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(rng.standard_normal((700, 16))), path, index_type=index_type)
    new = rng.standard_normal((5, 16))
    info = index.append_to_index(_embeddings(new, prefix="new"), path)
    gallery = index.load_index(path)
    assert info.count == 705 and gallery.info.count == 705 and gallery.index.ntotal == 705
    assert info.type == index_type and info.params == gallery.info.params
    assert list(gallery.rows["tracklet_id"][-5:]) == [f"new{i}" for i in range(5)]
    # the log's vectors are added to the loaded index (IndexRefine over IndexScalarQuantizer too); without
    # re-scoring, a 4-bit PQ code of 16-d noise ranks its own row within the top 10, not always first
    found = [[hit.tracklet_id for hit in hits] for hits in index.search(gallery, new, 10)]
    if index_type == "ivfpq-norescore":
        assert all(f"new{i}" in hits for i, hits in enumerate(found)), found
    else:
        assert [hits[0] for hits in found] == [f"new{i}" for i in range(5)]
    more = rng.standard_normal((200, 16))  # 205 log rows > COMPACT_SHARE of 700: the append compacts
    info = index.append_to_index(_embeddings(more, prefix="more"), path)
    compacted = index.load_index(path)
    assert compacted.info.count == compacted.index.ntotal == 905 and compacted.info.generation == info.generation
    assert not index.store.log_path(path, info.generation).exists()
    assert compacted.info.type == index_type and compacted.info.params == gallery.info.params


def test_append_refuses_other_dimension_other_checkpoint_and_known_ids(tmp_path):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(4)), path)
    before = path.read_bytes()
    with pytest.raises(GalleryError, match="holds 4-d embeddings; the new table has 5-d"):
        index.append_to_index(_embeddings(np.eye(5), prefix="n"), path)
    other = {**CHECKPOINT_INFO, "checkpoint_sha256": "b" * 64}
    with pytest.raises(GalleryError, match="checkpoint sha256") as error:
        index.append_to_index(_embeddings(np.eye(4), prefix="n", info=other), path)
    assert "/runs/a.ckpt" in error.value.hint
    with pytest.raises(GalleryError, match="already indexed or repeated: t0, t1"):
        index.append_to_index(_embeddings(np.eye(4)[:2]), path)
    assert path.read_bytes() == before and index.load_index(path).info.count == 4


PREFIX = 40  # MAGIC (16 bytes) and three uint64 section lengths


def _sections(data: bytes) -> list[bytes]:
    """The header, rows and index sections of a gallery file's bytes."""
    lengths = struct.unpack("<QQQ", data[16:PREFIX])
    starts = np.cumsum([PREFIX, *lengths])
    return [data[start:start + length] for start, length in zip(starts, lengths)]


def _assembled(header: bytes, rows: bytes, blob: bytes) -> bytes:
    return b"TFCLIP-GALLERY-1" + struct.pack("<QQQ", len(header), len(rows), len(blob)) + header + rows + blob


def _header(data: bytes, **changes) -> bytes:
    fields = {**json.loads(_sections(data)[0]), **changes}
    return json.dumps(fields).encode()


def _sections_2(data: bytes) -> list[bytes]:
    """The header and rows sections of a format-2 gallery file's bytes."""
    lengths = struct.unpack("<QQ", data[16:32])
    return [data[32:32 + lengths[0]], data[32 + lengths[0]:32 + sum(lengths)]]


def _as_format_1(path: Path) -> bytes:
    """The gallery at ``path`` rewritten in place as a format-1 file (its index inside it, no index file beside it);
    returns the bytes."""
    header, rows = _sections_2(path.read_bytes())
    file = index.index_path(path, json.loads(header)["generation"])
    data = _assembled(header, rows, file.read_bytes())
    file.unlink()
    path.write_bytes(data)
    return data


def _broken(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A format-1 gallery damaged in one way, and what the error must say (each message names the file)."""
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(4)), path)
    data = _as_format_1(path)
    header, rows, blob = _sections(data)
    damaged = {
        "empty file": b"",
        "truncated in its prefix": data[:30],
        "wrong magic": b"TFCLIP-GALLERY-X" + data[16:],
        "older format": faiss.serialize_index(faiss.IndexFlatIP(4)).tobytes(),  # a bare FAISS file, as before
        "truncated": data[:-10],
        "longer than its sections": data + b"trailing bytes",
        "huge section": data[:16] + struct.pack("<Q", 1 << 40) + data[24:],  # the lengths claim a terabyte
        "lengths lying about the split": (  # the right total, the header said 10 bytes shorter
            data[:16] + struct.pack("<QQQ", len(header) - 10, len(rows) + 10, len(blob)) + data[PREFIX:]),
        "header not JSON": _assembled(b"{not json", rows, blob),
        "header not UTF-8": _assembled(b"\xff\xfe{}", rows, blob),
        "header not an object": _assembled(b"[1, 2]", rows, blob),
        "header without count": _assembled(
            json.dumps({k: v for k, v in json.loads(header).items() if k != "count"}).encode(), rows, blob),
        "header of unknown type": _assembled(_header(data, type="annoy"), rows, blob),
        "header count not a number": _assembled(_header(data, count="4"), rows, blob),
        "header removing a non-row": _assembled(_header(data, removed=["t1"]), rows, blob),
        "header removing beyond the rows": _assembled(_header(data, removed=[4]), rows, blob),
        "count mismatch": _assembled(_header(data, count=5), rows, blob),
        "rows not Parquet": _assembled(header, b"PAR1 not parquet at all", blob),
        "rows without tracklet_id": _assembled(header, _parquet(pd.DataFrame({"pid": [0, 1, 2, 3]})), blob),
        "index not FAISS": _assembled(header, rows, b"not a faiss index"),
    }
    if how == "missing":
        path.unlink()
        return path, f"{path} not found"
    if how == "huge vector":  # the FAISS header claims a vector of 2^36 floats: refused before any allocation
        at = PREFIX + len(header) + len(rows) + 37  # fourcc, d, ntotal, 2 dummies, is_trained, metric, codes size
        assert data[at - 37:at - 33] == b"IxFI" and data[at:at + 8] == struct.pack("<Q", 16)
        path.write_bytes(data[:at] + struct.pack("<Q", 1 << 36) + data[at + 8:])
        return path, f"{path}: the FAISS section (109 bytes) is not a readable index"
    if how == "empty index":
        empty = faiss.serialize_index(faiss.IndexFlatIP(4)).tobytes()
        path.write_bytes(_assembled(_header(data, count=0), _parquet(_rows([])), empty))
        return path, f"{path} is an empty index"
    path.write_bytes(damaged[how])
    return path, str(path)


def _parquet(rows: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    return buffer.getvalue()


BROKEN = ["missing", "empty file", "truncated in its prefix", "wrong magic", "older format", "truncated",
          "longer than its sections", "huge section", "lengths lying about the split", "header not JSON",
          "header not UTF-8", "header not an object", "header without count", "header of unknown type",
          "header count not a number", "header removing a non-row", "header removing beyond the rows",
          "count mismatch", "rows not Parquet", "rows without tracklet_id", "index not FAISS", "huge vector",
          "empty index"]
EXPECTED_CAUSE = {
    "empty file": "is not a tfclip gallery", "truncated in its prefix": "is not a tfclip gallery",
    "wrong magic": "is not a tfclip gallery", "older format": "is not a tfclip gallery",
    "truncated": "is damaged: its sections claim", "longer than its sections": "is damaged: its sections claim",
    "huge section": "is damaged: its sections claim", "lengths lying about the split": "the header is not",
    "header not JSON": "the header is not", "header not UTF-8": "the header is not",
    "header not an object": "the header is not", "header without count": "the header is not",
    "header of unknown type": "the header is not", "header count not a number": "the header is not",
    "header removing a non-row": "the header is not", "header removing beyond the rows": "removes rows outside 0..3",
    "count mismatch": "its header says 5 4-d", "rows not Parquet": "the rows table is not readable Parquet",
    "rows without tracklet_id": "lacks the column(s) tracklet_id", "index not FAISS": "is not a readable index",
}


@pytest.mark.parametrize("how", BROKEN)
def test_load_names_the_file_and_the_damage_of_a_broken_gallery(tmp_path, how):
    path, named = _broken(tmp_path, how)
    with pytest.raises(GalleryError) as error:
        index.load_index(path)
    assert named in error.value.message and str(path) in error.value.message
    assert EXPECTED_CAUSE.get(how, "") in error.value.message


@pytest.mark.parametrize("how", ["missing", "wrong magic", "truncated", "header not an object", "index not FAISS"])
def test_query_cli_exits_2_naming_the_file_of_a_broken_gallery(tmp_path, how):
    path, named = _broken(tmp_path, how)
    result = CliRunner().invoke(app, ["query", "clip.mp4", "--gallery", str(path)], terminal_width=1000)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and named in result.output.replace("\n", "")


@pytest.mark.parametrize("how", ["wrong magic", "header not an object", "count mismatch"])
def test_append_to_a_broken_gallery_is_refused_and_leaves_it_as_it_was(tmp_path, how):
    path, named = _broken(tmp_path, how)
    before = path.read_bytes()
    with pytest.raises(GalleryError, match=re.escape(named)):
        index.append_to_index(_embeddings(np.eye(4), prefix="n"), path)
    assert path.read_bytes() == before


def test_search_refuses_queries_of_another_dimension(tmp_path):
    index.build_index(_embeddings(np.eye(4)), tmp_path / "g.faiss")
    with pytest.raises(GalleryError, match="query embeddings have 3 dimensions"):
        index.search(index.load_index(tmp_path / "g.faiss"), np.ones((1, 3), np.float32), 2)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="this faiss build sees a GPU: the no-GPU error cannot occur")
def test_gpu_without_faiss_gpu_is_a_clear_error_and_writes_nothing(tmp_path):
    table = tmp_path / "e.parquet"
    write_embeddings(_embeddings(np.eye(4)), table)
    with pytest.raises(UserError, match="faiss-gpu/CUDA is not available"):
        index.build_index(read_embeddings(table), tmp_path / "g.faiss", use_gpu=True)
    result = CliRunner().invoke(app, ["index", str(table), "--out", str(tmp_path / "g.faiss"), "--gpu"])
    assert result.exit_code == 2 and "faiss-gpu/CUDA is not available" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]


def test_index_cli_builds_appends_and_summarises(tmp_path):
    first, second, out = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "g.faiss"
    write_embeddings(_embeddings(np.eye(6)[:4]), first)
    write_embeddings(_embeddings(np.eye(6)[4:], prefix="n"), second)
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(first), "--out", str(out), "--type", "hnsw"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "hnsw index of 4 tracklets x 6-d" in result.output and "efSearch=64" in result.output
    result = runner.invoke(app, ["index", str(second), "--out", str(out), "--append"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "appended to" in result.output and "6 tracklets" in result.output
    result = runner.invoke(app, ["index", str(second), "--out", str(out), "--append", "--type", "flat"])
    assert result.exit_code == 2 and "--append keeps the index" in result.output


def _frames(color: tuple[int, int, int], count: int = 3) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (count, 64, 32, 3)).copy()


def _report_results() -> list[index.QueryResult]:
    hits = (
        index.Hit(1, 0.9731, "gallery-<7>", 7, 1, "gallery", "/data/p7/c1", 3),
        index.Hit(2, 0.5012, "gallery-9", 9, 0, "gallery", "", 5),
    )
    hit_frames = (_frames((20, 20, 230)), index.NO_FRAMES)
    return [index.QueryResult("/clips/query & friend.mp4", 40, _frames((230, 20, 20)), hits, hit_frames)]


def test_html_report_is_self_contained_with_ids_scores_and_embedded_thumbnails():
    page = render_query_report(_report_results(), gallery="/runs/g.faiss")
    assert page.startswith("<!DOCTYPE html>") and "/runs/g.faiss" in page
    assert "/clips/query &amp; friend.mp4" in page and "40 frames" in page
    assert "gallery-&lt;7&gt;" in page and "gallery-9" in page and "/data/p7/c1" in page
    assert "0.9731" in page and "0.5012" in page and "frames unavailable" in page
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(images) == 6  # 3 query key frames + 3 of the first hit; the second hit has none
    assert all(base64.b64decode(data)[:2] == b"\xff\xd8" for data in images)
    assert not re.search(r"https?:|//[a-z]|src=\"(?!data:)|<script|<link", page)


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_html_report_renders_its_thumbnails_in_headless_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_query_report(_report_results(), gallery="/runs/g.faiss"))
    shot = tmp_path / "shot.png"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               f"--screenshot={shot}", "--window-size=1000,900", page.as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    blue = (pixels[..., 2] > 180) & (pixels[..., 0] < 80) & (pixels[..., 1] < 80)
    assert red.sum() > 3 * 1000 and blue.sum() > 3 * 1000  # three ~64x128 thumbnails of each colour drawn


# ------------------------------------------------------------------ query with a random-init tiny model




def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_tiny_checkpoint(build_model(CONFIG), path)


@pytest.fixture(scope="module")
def tiny_gallery(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A flat index over the tiny synthetic gallery tracklets (given as paths), its checkpoint and the sources."""
    folder = tmp_path_factory.mktemp("gallery")
    sources = [t.source for t in read_manifest(tiny_manifest(tmp_path_factory.mktemp("tiny"))).tracklets("gallery")]
    checkpoint = _checkpoint(folder / "model.ckpt", seed=0)
    extract_to_file(checkpoint, folder / "e.parquet", paths=[Path(s) for s in sources], sampling="rrs", workers=0)
    index.build_index(read_embeddings(folder / "e.parquet"), folder / "g.faiss")
    return folder / "g.faiss", checkpoint, sources


def test_query_finds_a_gallery_tracklet_at_rank_1_from_its_own_clip(tiny_gallery):
    path, _, sources = tiny_gallery
    clips = [Path(sources[0]), Path(sources[-1])]  # embedded together, as one batch
    results = index.query(path, clips, index.SearchOptions(top_k=3, with_hit_frames=True))
    assert [r.hits[0].tracklet_id for r in results] == [str(c.resolve()) for c in clips]
    assert all(r.hits[0].score == pytest.approx(1.0, abs=1e-4) and len(r.hits) == 3 for r in results)
    assert results[0].key_frames.ndim == 4 and results[0].key_frames.shape[-1] == 3
    assert len(results[0].hit_key_frames) == 3 and results[0].hit_key_frames[0].shape[1:] == (64, 32, 3)


def test_query_refuses_a_checkpoint_the_gallery_was_not_built_from(tiny_gallery, tmp_path):
    path, _, sources = tiny_gallery
    other = _checkpoint(tmp_path / "other.ckpt", seed=1)
    with pytest.raises(GalleryError, match="is not the checkpoint"):
        index.query(path, [Path(sources[0])], index.SearchOptions(checkpoint=other))
    foreign = tmp_path / "foreign.faiss"  # a table from another tool: no checkpoint recorded, 16-d
    index.build_index(_embeddings(np.eye(16), info={}), foreign)
    with pytest.raises(GalleryError, match="records no checkpoint"):
        index.query(foreign, [Path(sources[0])])
    with pytest.raises(GalleryError, match="embeds in 320 dimensions"):
        index.query(foreign, [Path(sources[0])], index.SearchOptions(checkpoint=other))


def test_query_cli_prints_table_json_and_html_and_names_bad_clips(tiny_gallery, tmp_path):
    path, checkpoint, sources = tiny_gallery
    runner = CliRunner()
    result = runner.invoke(app, ["query", sources[1], "--gallery", str(path), "-k", "2"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "tracklet_id" in result.output and "1.0000" in result.output
    report = tmp_path / "r.html"
    args = ["query", sources[1], "--gallery", str(path), "-k", "2", "--json", "--html", str(report)]
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["queries"][0]["persons"][0]["hits"]
    assert hits[0]["tracklet_id"] == str(Path(sources[1]).resolve()) and len(hits) == 2
    assert report.read_text().count("data:image/jpeg;base64,") >= 6
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"no video here")
    for clip in (tmp_path / "missing.mp4", bad):
        result = runner.invoke(app, ["query", str(clip), "--gallery", str(path)], terminal_width=1000)
        assert result.exit_code == 2 and clip.name in result.output


def test_query_min_score_drops_hits_below_it_and_auto_needs_a_calibration(tiny_gallery, tmp_path):
    path, _, sources = tiny_gallery
    runner = CliRunner()
    result = runner.invoke(app, ["query", sources[1], "--gallery", str(path), "--min-score", "1.5", "--json"])
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.stdout)["queries"][0]["persons"]
    assert answer["hits"] == [] and answer["match"] is False and answer["threshold"] == 1.5
    result = runner.invoke(app, ["query", sources[1], "--gallery", str(path), "--min-score", "1.5"], terminal_width=400)
    assert "no match: no hit scores >= 1.5000" in result.output
    result = runner.invoke(app, ["query", sources[1], "--gallery", str(path), "--min-score", "auto"],
                           terminal_width=400)
    assert result.exit_code == 2 and "no calibrated threshold" in result.output and "tfclip calibrate" in result.output
    result = runner.invoke(app, ["query", sources[1], "--gallery", str(path), "--min-score", "high"])
    assert result.exit_code == 2 and "expected a number, 'auto' or 'off'" in result.output
    calibrated = tmp_path / "c.faiss"
    copy_gallery(path, calibrated)
    index.store.update_header(calibrated, calibration={"threshold": 0.999, "fmr": 0.01})
    (found,) = index.query(calibrated, [Path(sources[1])], index.SearchOptions(top_k=3, min_score="auto"))
    assert found.threshold == 0.999 and [hit.match for hit in found.hits] == [True]


# ------------------------------------------------------------------ writers: lock, atomic update, removal


def test_concurrent_appends_wait_for_each_other_and_keep_both_batches(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:2]), path)
    write = index.store._write_gallery

    def slow_write(*args, **kwargs):  # widen the read-modify-write window so that unlocked appends would collide
        time.sleep(0.3)
        write(*args, **kwargs)

    monkeypatch.setattr(index.store, "_write_gallery", slow_write)
    batches = [_embeddings(np.eye(8)[2:5], prefix="a"), _embeddings(np.eye(8)[5:8], prefix="b")]
    with ThreadPoolExecutor(2) as pool:  # flock excludes two open files even within one process
        list(pool.map(lambda batch: index.append_to_index(batch, path), batches))
    gallery = index.load_index(path)
    assert sorted(gallery.rows["tracklet_id"]) == ["a0", "a1", "a2", "b0", "b1", "b2", "t0", "t1"]
    hits = index.search(gallery, np.eye(8), 1)  # every id still sits beside its own vector
    assert [h[0].tracklet_id for h in hits] == ["t0", "t1", "a0", "a1", "a2", "b0", "b1", "b2"]


def test_a_writer_blocked_too_long_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(4)), path)
    monkeypatch.setattr(index.store, "LOCK_WAIT_S", 0.2)
    with index.writer_lock(path):
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(index.append_to_index, _embeddings(np.eye(4), prefix="n"), path)
            with pytest.raises(GalleryError, match="another tfclip process has been writing this gallery"):
                future.result()
    assert index.load_index(path).info.count == 4


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("failing", "named"), [(1, r"g\.faiss\.[0-9a-f]{32}\.faissindex"), (2, r"g\.faiss")])
def test_a_failure_between_write_and_rename_leaves_the_old_gallery_and_no_temp(tmp_path, monkeypatch, failing,
                                                                               named):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(4)), path)
    before, names = path.read_bytes(), _names(tmp_path)
    renames = []
    real_replace = os.replace

    def no_space_at_the_nth(*args):  # the index file's rename is the first, the base's the second
        renames.append(args)
        if len(renames) == failing:
            raise OSError(28, "No space left on device")
        return real_replace(*args)

    monkeypatch.setattr(os, "replace", no_space_at_the_nth)
    with pytest.raises(OutputError, match=f"cannot write .*{named}: no space left on device"):
        index.compact_index(path)  # a rewrite of base and index file
    assert path.read_bytes() == before and names == [
        "g.faiss", f"g.faiss.{info.generation}.faissindex", f"g.faiss.{info.generation}.ids", "g.faiss.lock"]
    assert _names(tmp_path) == names


def test_an_append_stays_committed_when_the_compaction_after_it_fails(tmp_path, monkeypatch, caplog):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(4)), path)
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    appended = index.append_to_index(_embeddings(np.eye(4), prefix="n"), path)  # 4 rows > 25% of 4: compacts
    assert appended.count == 8 and "the append is committed, compacting its log failed" in caplog.text
    assert index.load_index(path).info.count == 8 and (tmp_path / f"g.faiss.{info.generation}.log").exists()
    monkeypatch.undo()
    compacted = index.compact_index(path)
    assert compacted.count == 8 and compacted.generation != info.generation
    assert _names(tmp_path) == ["g.faiss", f"g.faiss.{compacted.generation}.faissindex",
                                f"g.faiss.{compacted.generation}.ids", "g.faiss.lock"]


# ------------------------------------------------------------------ the append log and compaction


@pytest.fixture
def no_compaction(monkeypatch):
    """Appends never compact on their own (a share no log reaches), so tests see the log."""
    monkeypatch.setattr(index.store, "COMPACT_SHARE", 1e9)


def _ids(gallery: index.Gallery) -> list[str]:
    return list(gallery.rows["tracklet_id"][gallery.live])


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "hnsw"])
def test_an_append_writes_one_record_beside_an_untouched_base_and_readers_see_it(tmp_path, no_compaction,
                                                                                 index_type):
    rng = np.random.default_rng(5)
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(rng.standard_normal((700, 16))), path, index_type=index_type)
    base = path.read_bytes()
    new = rng.standard_normal((3, 16))
    appended = index.append_to_index(_embeddings(new, prefix="new"), path)
    again = index.append_to_index(_embeddings(rng.standard_normal((2, 16)), prefix="more"), path)
    assert path.read_bytes() == base and (appended.count, again.count) == (703, 705)
    assert appended.generation == again.generation == info.generation
    log_file = tmp_path / f"g.faiss.{info.generation}.log"
    assert [file.name for file in index.gallery_files(path)] == [  # what to copy, or delete, with the gallery
        "g.faiss", "g.faiss.lock", f"g.faiss.{info.generation}.faissindex", f"g.faiss.{info.generation}.ids",
        f"g.faiss.{info.generation}.log"]
    records = log_file.read_bytes()
    assert records.startswith(b"TFCLIPA1" + info.generation.encode()) and records.count(b"TFCLIPA1") == 2
    gallery = index.load_index(path)
    assert gallery.info.count == gallery.index.ntotal == len(gallery.rows) == 705
    assert _ids(gallery)[-5:] == ["new0", "new1", "new2", "more0", "more1"]
    assert [hits[0].tracklet_id for hits in index.search(gallery, new, 3)] == ["new0", "new1", "new2"]


def _record_bytes(path: Path, generation: str) -> bytes:
    return (path.parent / f"{path.name}.{generation}.log").read_bytes()


def test_a_torn_last_record_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:6], prefix="a"), path)
    committed = _record_bytes(path, info.generation)
    index.append_to_index(_embeddings(np.eye(8)[6:8], prefix="b"), path)
    whole = _record_bytes(path, info.generation)
    second = whole[len(committed):]
    log_file = tmp_path / f"g.faiss.{info.generation}.log"
    for torn in (second[:30], second[:-1], second[:-4] + b"\0\0\0\0", second[:60] + b"\xff" + second[61:]):
        log_file.write_bytes(committed + torn)  # kill -9 in the middle of the second append, or a bad checksum
        assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a0", "a1"]
    index.append_to_index(_embeddings(np.eye(8)[6:8], prefix="c"), path)
    assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a0", "a1", "c0", "c1"]
    assert log_file.read_bytes().count(b"TFCLIPA1") == 2 and len(log_file.read_bytes()) == len(whole)


def test_records_of_another_generation_are_ignored_and_deleted_by_the_next_writer(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:6], prefix="a"), path)
    old = index.load_index(path).info.generation
    stale = _record_bytes(path, old)
    info = index.compact_index(path)
    assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a0", "a1"] and info.generation != old
    # a compaction killed after its rename, before deleting the old log; and a log holding an old record
    (tmp_path / f"g.faiss.{old}.log").write_bytes(stale)
    (tmp_path / f"g.faiss.{info.generation}.log").write_bytes(stale)
    assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a0", "a1"]
    index.append_to_index(_embeddings(np.eye(8)[6:8], prefix="b"), path)
    assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a0", "a1", "b0", "b1"]
    index.compact_index(path)
    assert not list(tmp_path.glob("*.log")) and len(list(tmp_path.glob("*.ids"))) == 1


def test_compaction_folds_the_log_into_a_new_base_from_the_cli(tmp_path, no_compaction):
    rng = np.random.default_rng(6)
    path = tmp_path / "g.faiss"
    vectors = rng.standard_normal((800, 16))
    index.build_index(_embeddings(vectors[:700]), path, index_type="ivfpq")
    for start in range(700, 800, 25):
        index.append_to_index(_embeddings(vectors[start:start + 25], prefix=f"b{start}-"), path)
    before = index.load_index(path)
    own = [f"t{row}" if row < 700 else f"b{row // 25 * 25}-{row % 25}" for row in range(0, 800, 50)]
    assert [hits[0].tracklet_id for hits in index.search(before, vectors[::50], 5)] == own  # log rows: exact
    result = CliRunner().invoke(app, ["index", "--compact", str(path)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "compacted" in result.output and "ivfpq index of 800 tracklets" in result.output
    after = index.load_index(path)
    assert after.info.generation != before.info.generation and not list(tmp_path.glob("*.log"))
    assert _ids(after) == _ids(before) and after.info.params == before.info.params
    assert [hits[0].tracklet_id for hits in index.search(after, vectors[::50], 5)] == own  # now in the ivfpq
    for wrong in (["index", str(path), "--compact", str(path)], ["index"],
                  ["index", "--compact", str(path), "--out", str(path)]):
        result = CliRunner().invoke(app, wrong)
        assert result.exit_code == 2 and "--compact" in result.output


def test_an_append_compacts_once_the_log_outgrows_a_share_of_the_base(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(16)[:8]), path)
    first = index.append_to_index(_embeddings(np.eye(16)[8:10], prefix="a"), path)  # 2 rows <= 25% of 8
    assert first.generation == info.generation and (tmp_path / f"g.faiss.{info.generation}.log").exists()
    second = index.append_to_index(_embeddings(np.eye(16)[10:11], prefix="b"), path)  # 3 rows > 25% of 8
    assert second.generation != info.generation and second.count == 11 and not list(tmp_path.glob("*.log"))
    monkeypatch.setattr(index.store, "COMPACT_RECORDS", 1)
    third = index.append_to_index(_embeddings(np.eye(16)[11:12], prefix="c"), path)  # 1 record: not yet
    fourth = index.append_to_index(_embeddings(np.eye(16)[12:13], prefix="d"), path)  # 2 records > 1
    assert third.generation == second.generation != fourth.generation and fourth.count == 13
    hits = index.search(index.load_index(path), np.eye(16)[:13], 1)
    assert [h[0].tracklet_id for h in hits] == [*(f"t{i}" for i in range(8)), "a0", "a1", "b0", "c0", "d0"]


def test_duplicates_are_refused_across_base_and_log_even_without_the_ids_cache(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:6], prefix="a"), path)
    for cache in (None, b"not sqlite", "copy"):
        cache_file = tmp_path / f"g.faiss.{info.generation}.ids"
        if cache == "copy":  # a copy of the gallery has no cache: it is rebuilt from the gallery
            shutil.copy(path, tmp_path / "h.faiss")
            for suffix in ("log", "faissindex"):
                name = f"faiss.{info.generation}.{suffix}"
                shutil.copy(tmp_path / f"g.{name}", tmp_path / f"h.{name}")
            path = tmp_path / "h.faiss"
        elif cache is None:
            cache_file.unlink()
        else:
            cache_file.write_bytes(cache)
        for known in ("t2", "a1"):
            with pytest.raises(GalleryError, match=f"already indexed or repeated: {known}"):
                index.append_to_index(_one(known), path)
    index.remove_from_index(path, ["a1"])  # a removed tracklet can be added again
    assert index.append_to_index(_one("a1"), path).live_count == 6


def _one(tracklet_id: str) -> Embeddings:
    return Embeddings(rows=_rows([tracklet_id]), vectors=np.eye(8, dtype=np.float32)[:1], info=CHECKPOINT_INFO)


def test_a_full_disk_under_the_ids_cache_neither_fails_nor_loses_an_append(tmp_path, no_compaction, monkeypatch,
                                                                            caplog):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    for write in (lambda: index.append_to_index(_one("a1"), path), lambda: index.compact_index(path)):
        with monkeypatch.context() as patched:
            patched.setattr(index.known_ids, "_write_meta", full)
            assert write().count == 5  # committed: the record to the log, or the new base; not the cache
        with pytest.raises(GalleryError, match="already indexed or repeated: a1"):  # caught up, or rebuilt
            index.append_to_index(_one("a1"), path)
    assert caplog.text.count("was not written (database or disk is full)") == 2
    assert _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "a1"]


def test_an_append_whose_columns_clash_with_the_gallery_is_refused_at_once(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    table = _embeddings(np.eye(4)[:2])
    table.rows["start_s"] = [0.5, 1.5]
    info = index.build_index(table, path)
    later = _embeddings(np.eye(4)[2:], prefix="n")
    later.rows["start_s"] = ["noon", "one"]
    with pytest.raises(GalleryError, match="cannot be stored with the gallery's .*start_s"):
        index.append_to_index(later, path)
    later.rows["start_s"] = [2, 3]  # integers widen to the gallery's floats
    index.append_to_index(later, path)
    assert not (tmp_path / f"g.faiss.{info.generation}.log").read_bytes().count(b"noon")
    assert index.compact_index(path).count == 4
    assert list(index.load_index(path).rows["start_s"]) == [0.5, 1.5, 2.0, 3.0]


def test_a_gallery_written_before_append_logs_opens_and_its_first_append_gives_it_a_generation(tmp_path):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    header, rows, blob = _sections(_as_format_1(path))
    fields = json.loads(header)
    del fields["generation"]
    path.write_bytes(_assembled(json.dumps(fields).encode(), rows, blob))  # as tfclip wrote it before
    for cache in tmp_path.glob("*.ids"):
        cache.unlink()
    old = index.load_index(path)
    assert old.info.generation == "" and _ids(old) == ["t0", "t1", "t2", "t3"]
    info = index.append_to_index(_embeddings(np.eye(8)[4:5], prefix="n"), path)
    assert len(info.generation) == 32 and _ids(index.load_index(path)) == ["t0", "t1", "t2", "t3", "n0"]


def test_person_ids_calibration_and_removal_rewrite_the_log_into_the_base(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:6], prefix="a"), path)
    linked = index.set_person_ids(path, {"t0": 1, "a1": 1})
    assert not list(tmp_path.glob("*.log"))
    index.append_to_index(_embeddings(np.eye(8)[6:7], prefix="b"), path)
    index.store.update_header(path, calibration={"threshold": 0.5, "fmr": 0.01})
    index.append_to_index(_embeddings(np.eye(8)[7:8], prefix="c"), path)
    info = index.remove_from_index(path, ["a0", "c0"])
    gallery = index.load_index(path)
    assert linked.count == 6 and info.count == 8 and info.live_count == 6
    assert _ids(gallery) == ["t0", "t1", "t2", "t3", "a1", "b0"]
    assert gallery.rows["person_id"].fillna(-1).astype(int).tolist() == [1, -1, -1, -1, -1, 1, -1, -1]
    assert gallery.info.calibration == {"threshold": 0.5, "fmr": 0.01}


def test_the_gallery_stamp_changes_with_every_append_and_rewrite(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    stamps = [index.gallery_stamp(path)]
    index.append_to_index(_embeddings(np.eye(8)[4:5], prefix="a"), path)
    stamps.append(index.gallery_stamp(path))
    index.append_to_index(_embeddings(np.eye(8)[5:6], prefix="b"), path)
    stamps.append(index.gallery_stamp(path))
    index.compact_index(path)
    stamps.append(index.gallery_stamp(path))
    assert len(set(stamps)) == 4 and index.gallery_stamp(path) == stamps[-1]


# ------------------------------------------------------------------ kill -9 at any point of a write


CRASH_CALLS = ("write", "fsync", "ftruncate", "replace", "unlink", "link")
"""The file-system calls a writer is killed at (a write is cut in the middle first)."""


def _crash_at(number: int, operation) -> tuple[int, bool]:
    """Run ``operation`` in a forked child that SIGKILLs itself at its ``number``-th file-system call.

    Returns the child's wait status (0: it finished first) and whether an append was committed (its record
    synced) before it died: the child says so through a pipe.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child never returns
        status = 1
        try:
            os.close(read_end)
            real = {name: getattr(os, name) for name in CRASH_CALLS}
            calls = iter(range(1, 10**6))

            def dying(name):
                def call(*args, **kwargs):
                    if next(calls) == number:
                        if name == "write":
                            real["write"](args[0], bytes(args[1])[:max(1, len(args[1]) // 2)])
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real[name](*args, **kwargs)
                return call

            append_record = index.store.append_record

            def committing(*args, **kwargs):
                end = append_record(*args, **kwargs)
                real["write"](write_end, b"committed")
                return end

            index.store.append_record = committing
            for name in CRASH_CALLS:
                setattr(os, name, dying(name))
            operation()
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        committed = pipe.read() == b"committed"
    return status, committed


def _restore(saved: Path, folder: Path) -> None:
    shutil.rmtree(folder)
    shutil.copytree(saved, folder)


WRITES = {
    "append": lambda path: index.append_to_index(_embeddings(np.eye(16)[10:13], prefix="n"), path),
    "append that compacts": lambda path: index.append_to_index(_embeddings(np.eye(16)[10:13], prefix="n"), path),
    "compact": index.compact_index,
    "remove": lambda path: index.remove_from_index(path, ["a1"]),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_kill_9_at_any_point_of_a_write_leaves_the_old_or_the_new_gallery(tmp_path, monkeypatch, write):
    folder, saved = tmp_path / "g", tmp_path / "saved"
    path = folder / "g.faiss"
    monkeypatch.setattr(index.store, "COMPACT_SHARE", 1e9)
    index.build_index(_embeddings(np.eye(16)[:8]), path)
    index.append_to_index(_embeddings(np.eye(16)[8:10], prefix="a"), path)  # a log of one record
    if write == "append that compacts":
        monkeypatch.setattr(index.store, "COMPACT_SHARE", 0.25)
    shutil.copytree(folder, saved)
    old = _ids(index.load_index(path))
    new = {"compact": old, "remove": [i for i in old if i != "a1"]}.get(write, [*old, "n0", "n1", "n2"])
    outcomes = set()
    for number in range(1, 60):
        _restore(saved, folder)
        status, committed = _crash_at(number, lambda: WRITES[write](path))
        found = _ids(index.load_index(path))
        assert found in (old, new), (number, found)
        assert not committed or found == new, number  # a committed append is never lost
        outcomes.add((status, found == new))
        # the next writers go on from there: nothing they hold is lost, no temporary file is left behind
        index.append_to_index(_embeddings(np.eye(16)[13:14], prefix="z"), path)
        index.compact_index(path)
        gallery = index.load_index(path)
        assert _ids(gallery) == [*found, "z0"] and not list(folder.glob(".*.tmp"))
        vectors = {f"t{i}": i for i in range(8)} | {"a0": 8, "a1": 9, "n0": 10, "n1": 11, "n2": 12, "z0": 13}
        hits = index.search(gallery, np.eye(16)[[vectors[i] for i in found]], 1)
        assert [h[0].tracklet_id for h in hits] == found  # every id still beside its own vector
        if status == 0:
            break
    assert status == 0 and number > 2, "the write never finished"
    assert any(killed != 0 for killed, _ in outcomes)


def test_a_writer_killed_at_random_moments_never_loses_a_committed_append(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(64)[:8]), path)  # small: appends compact often, kills land in both
    rng = np.random.default_rng(7)
    committed: list[int] = []
    for run in range(4):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child never returns
            try:
                os.close(read_end)
                for batch in range(run * 100, run * 100 + 100):
                    index.append_to_index(_embeddings(np.eye(64)[batch % 54 + 8:batch % 54 + 10],
                                                      prefix=f"b{batch}-"), path)
                    os.write(write_end, struct.pack("<I", batch))
            finally:
                os._exit(0)
        os.close(write_end)
        time.sleep(float(rng.uniform(0.5, 1.5)))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        with os.fdopen(read_end, "rb") as pipe:
            reported = pipe.read()
        committed += [number for (number,) in struct.iter_unpack("<I", reported[:len(reported) // 4 * 4])]
        ids = _ids(index.load_index(path))
        batches = {int(i[1:].split("-")[0]) for i in ids if i.startswith("b")}
        assert set(committed) <= batches  # every append that returned is there
        assert all(f"b{b}-0" in ids and f"b{b}-1" in ids for b in batches)  # and no batch is there in part
    assert committed, "no append finished before the kills"


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "ivfpq-fp16", "ivfpq-sq8", "ivfpq-norescore", "hnsw"])
def test_removed_tracklets_are_never_returned_and_can_be_added_again(tmp_path, index_type):
    rng = np.random.default_rng(3)
    path = tmp_path / "g.faiss"
    vectors = rng.standard_normal((700, 16))
    index.build_index(_embeddings(vectors), path, index_type=index_type)
    info = index.remove_from_index(path, ["t3", "t5"])
    assert info.removed == (3, 5) and info.live_count == 698
    gallery = index.load_index(path)
    found = {hit.tracklet_id for hits in index.search(gallery, vectors[[3, 5]], 50) for hit in hits}
    assert found and not found & {"t3", "t5"}
    with pytest.raises(GalleryError, match="holds no tracklet t3"):
        index.remove_from_index(path, ["t3"])
    readded = Embeddings(rows=_rows(["t3"]), vectors=vectors[[3]].astype(np.float32), info=CHECKPOINT_INFO)
    index.append_to_index(readded, path)
    (hits,) = index.search(index.load_index(path), vectors[[3]], 10)
    found = [(hit.tracklet_id, hit.row) for hit in hits]
    if index_type == "ivfpq-norescore":  # the PQ code alone ranks a 16-d noise row within the top 10
        assert ("t3", 700) in found, found
    else:
        assert found[0] == ("t3", 700)


def test_camera_filter_returns_only_those_cameras(tmp_path):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(9)), path)  # camid = row % 3
    gallery = index.load_index(path)
    hits = index.search(gallery, np.eye(9)[:1], 9, camids={1})[0]
    assert sorted(hit.row for hit in hits) == [1, 4, 7]
    assert index.search(gallery, np.eye(9)[:1], 9, camids={5}) == [[]]


def test_a_reader_loading_in_a_loop_during_appends_never_sees_a_damaged_gallery(tmp_path):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:1]), path)
    failures, counts, done = [], [], threading.Event()

    def read_until_done():
        while not done.is_set():
            try:
                counts.append(index.load_index(path).info.count)
            except GalleryError as error:  # a reader must see the old gallery or the new one, whole
                failures.append(error.message)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for batch in range(40):
            index.append_to_index(_embeddings(np.eye(8)[batch % 8:batch % 8 + 1], prefix=f"b{batch}-"), path)
    finally:
        done.set()
        reader.join()
    assert failures == [] and counts and set(counts) <= set(range(1, 42))
    assert index.load_index(path).info.count == 41


def test_a_reader_whose_base_is_replaced_after_it_opened_it_starts_again_and_loses_no_append(
        tmp_path, monkeypatch, no_compaction):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:8], prefix="n"), path)  # in the log
    real_open, opened = open, []

    def open_then_compact(file, *args, **kwargs):  # a compaction renames the new base in and deletes the old log
        handle = real_open(file, *args, **kwargs)
        opened.append(Path(file).name)
        if len(opened) == 1:
            index.compact_index(path)
        return handle

    monkeypatch.setattr(index.store, "open", open_then_compact, raising=False)
    gallery = index.load_index(path)  # the old base with no log would be 4 rows: it starts again instead
    assert gallery.info.count == 8 and _ids(gallery) == ["t0", "t1", "t2", "t3", "n0", "n1", "n2", "n3"]
    assert opened[0] == "g.faiss" and opened.count("g.faiss") >= 2


# ------------------------------------------------------------------ the index file, memory-mapped


def _mapped_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[-1].strip() for line in maps if "/" in line}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory map of the process from /proc")
@pytest.mark.parametrize("index_type", ["flat", "ivfpq-sq8", "hnsw"])
def test_a_reader_maps_the_index_file_and_a_compaction_still_folds_the_log_into_it(tmp_path, no_compaction,
                                                                                   index_type):
    rng = np.random.default_rng(0)
    path = tmp_path / "g.faiss"
    vectors = rng.standard_normal((710, 16))
    info = index.build_index(_embeddings(vectors[:700]), path, index_type=index_type)
    index.append_to_index(_embeddings(vectors[700:], prefix="n"), path)
    gallery = index.load_index(path)
    assert str(index.index_path(path, info.generation)) in _mapped_files()
    assert (gallery.index.base.ntotal, len(gallery.index.appended), gallery.index.ntotal) == (700, 10, 710)
    np.testing.assert_allclose(gallery.index.reconstruct_n(695, 10)[5:], index.normalized(vectors[700:705]), atol=1e-6)
    compacted = index.compact_index(path)  # faiss aborts on an add to a mapped index: the writer reads it whole
    after = index.load_index(path)
    assert (after.index.base.ntotal, len(after.index.appended), compacted.count) == (710, 0, 710)
    assert [hits[0].tracklet_id for hits in index.search(after, vectors[[3, 705]], 1)] == ["t3", "n5"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from /proc")
def test_opening_a_large_flat_gallery_reads_little_of_its_index_file(tmp_path):
    path = tmp_path / "g.faiss"
    vectors = np.random.default_rng(0).standard_normal((10_000, 2048)).astype(np.float32)  # 80 MB; rows: ~3 MB
    info = index.build_index(_embeddings(vectors), path)
    del vectors

    def rss_kib() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    size_kib = index.index_path(path, info.generation).stat().st_size // 1024
    before = rss_kib()
    gallery = index.load_index(path)
    assert rss_kib() - before < size_kib / 4
    assert gallery.index.ntotal == 10_000


def test_a_reader_keeps_searching_its_mapped_gallery_after_a_writer_deleted_its_index_file(tmp_path):
    path = tmp_path / "g.faiss"
    old = index.build_index(_embeddings(np.eye(4)), path)
    gallery = index.load_index(path)
    new = index.compact_index(path)
    assert not index.index_path(path, old.generation).exists() and index.index_path(path, new.generation).exists()
    assert [hit.tracklet_id for hit in index.search(gallery, np.eye(4)[2:3], 1)[0]] == ["t2"]


def test_a_rewrite_of_the_header_alone_links_the_index_file_instead_of_writing_it(tmp_path):
    path = tmp_path / "g.faiss"
    old = index.build_index(_embeddings(np.eye(4)), path)
    inode = index.index_path(path, old.generation).stat().st_ino
    new = index.remove_from_index(path, ["t1"])
    assert new.generation != old.generation and index.index_path(path, new.generation).stat().st_ino == inode
    assert not index.index_path(path, old.generation).exists()
    query = np.array([[1.0, 0.9, 0.3, 0.2]])
    assert [hit.tracklet_id for hit in index.search(index.load_index(path), query, 4)[0]] == ["t0", "t2", "t3"]


def test_searches_merge_the_log_rows_with_the_base_ranking_and_filter_both(tmp_path, no_compaction):
    rng = np.random.default_rng(3)
    path = tmp_path / "g.faiss"
    vectors, queries = rng.standard_normal((12, 8)), rng.standard_normal((5, 8))
    base, logged = _embeddings(vectors[:8]), _embeddings(vectors[8:], prefix="n")
    base.rows["camid"], logged.rows["camid"] = np.arange(8) % 2, np.arange(4) % 2
    index.build_index(base, path)
    index.append_to_index(logged, path)
    gallery = index.load_index(path)
    ids = [f"t{i}" for i in range(8)] + [f"n{i}" for i in range(4)]
    order, scores = _brute_force(vectors, queries, 12)
    found = index.search(gallery, queries, 12)
    assert [[hit.tracklet_id for hit in hits] for hits in found] == [[ids[i] for i in row] for row in order]
    np.testing.assert_allclose([[hit.score for hit in hits] for hits in found], scores, atol=1e-5)
    odd = index.search(gallery, queries, 3, camids=[1])
    expected = [[ids[i] for i in row if i % 2 == 1 if (i < 8 or (i - 8) % 2 == 1)][:3] for row in order]
    assert [[hit.tracklet_id for hit in hits] for hits in odd] == expected


def test_an_append_compacts_once_the_log_holds_more_rows_than_a_reader_should_scan(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    monkeypatch.setattr(index.store, "COMPACT_ROWS", 2)
    info = index.build_index(_embeddings(np.eye(64)[:40]), path)
    first = index.append_to_index(_embeddings(np.eye(64)[40:42], prefix="a"), path)  # 2 rows: kept in the log
    assert first.generation == info.generation
    second = index.append_to_index(_embeddings(np.eye(64)[42:43], prefix="b"), path)  # 3 > 2, far under 25 %
    assert second.generation != info.generation and not list(tmp_path.glob("*.log"))


@pytest.mark.parametrize("how", ["index file missing", "index file truncated", "index file not FAISS",
                                 "generation not hex"])
def test_load_names_the_gallery_and_its_index_file_when_the_index_file_is_damaged(tmp_path, how):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(4)), path)
    file = index.index_path(path, info.generation)
    if how == "index file missing":
        file.unlink()
    elif how == "index file truncated":
        file.write_bytes(file.read_bytes()[:-10])
    elif how == "index file not FAISS":
        file.write_bytes(b"not a faiss index")
    else:
        header, rows = _sections_2(path.read_bytes())
        header = json.dumps({**json.loads(header), "generation": "../../x"}).encode()
        path.write_bytes(b"TFCLIP-GALLERY-2" + struct.pack("<QQ", len(header), len(rows)) + header + rows)
    expected = {"index file missing": f"its index file {file.name} is missing",
                "index file truncated": f"its index file {file.name} (99 bytes) is not a readable index",
                "index file not FAISS": f"its index file {file.name} (17 bytes) is not a readable index",
                "generation not hex": "the header is not a tfclip gallery header (generation '../../x', expected 32 "
                                      "hex digits)"}[how]
    with pytest.raises(GalleryError, match=re.escape(f"{path}: {expected}")):
        index.load_index(path)


def test_format_1_galleries_still_open_and_the_next_write_makes_them_format_2(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(8)[:4]), path)
    _as_format_1(path)
    assert not list(tmp_path.glob("*.faissindex"))
    index.append_to_index(_embeddings(np.eye(8)[4:6], prefix="n"), path)  # a log beside a format-1 base
    gallery = index.load_index(path)
    assert gallery.info.generation == info.generation and _ids(gallery)[-2:] == ["n0", "n1"]
    assert [hits[0].tracklet_id for hits in index.search(gallery, np.eye(8)[[1, 5]], 1)] == ["t1", "n1"]
    compacted = index.compact_index(path)
    assert path.read_bytes().startswith(b"TFCLIP-GALLERY-2") and index.load_index(path).info.count == 6
    assert [file.name for file in tmp_path.glob("*.faissindex")] == [f"g.faiss.{compacted.generation}.faissindex"]


def test_a_writer_deletes_the_index_file_a_killed_writer_wrote_before_its_rename(tmp_path):
    path = tmp_path / "g.faiss"
    info = index.build_index(_embeddings(np.eye(4)), path)
    orphan = index.index_path(path, "f" * 32)  # written, synced, then the writer was killed before renaming G
    shutil.copy(index.index_path(path, info.generation), orphan)
    neighbour = index.index_path(tmp_path / "g.faiss.x", "e" * 32)  # another gallery's, named like this one's
    neighbour.write_bytes(b"x")
    index.append_to_index(_embeddings(np.eye(4), prefix="n"), path)
    assert not orphan.exists() and neighbour.exists()


def test_a_refresh_reads_only_the_records_appended_since_and_a_rewrite_in_full(tmp_path, no_compaction):
    path = tmp_path / "g.faiss"
    index.build_index(_embeddings(np.eye(8)[:4]), path)
    index.append_to_index(_embeddings(np.eye(8)[4:5], prefix="a"), path)
    gallery = index.load_index(path)
    assert index.refresh_index(gallery) is gallery  # nothing changed
    index.append_to_index(_embeddings(np.eye(8)[5:7], prefix="b"), path)
    refreshed = index.refresh_index(gallery)
    assert refreshed.index.base is gallery.index.base  # the base was not read again
    loaded = index.load_index(path)
    assert _ids(refreshed) == _ids(loaded) == ["t0", "t1", "t2", "t3", "a0", "b0", "b1"]
    assert (refreshed.info, refreshed.log_end) == (loaded.info, loaded.log_end)
    assert [hits[0].tracklet_id for hits in index.search(refreshed, np.eye(8)[[1, 6]], 1)] == ["t1", "b1"]
    index.remove_from_index(path, ["b0"])  # a new base: read in full
    rewritten = index.refresh_index(refreshed)
    assert rewritten.index.base is not gallery.index.base and _ids(rewritten) == ["t0", "t1", "t2", "t3", "a0", "b1"]
