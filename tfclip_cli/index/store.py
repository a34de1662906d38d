"""The gallery: a base file and its FAISS index file, an append log and an ids cache beside it, written under a lock.

Every index holds L2-normalised embeddings and ranks by inner product (= cosine similarity), the score
used by ``evaluate``; row ``i`` of the index is row ``i`` of the rows table. The types, their parameters, their
memory and ``--type auto``'s choice live in :mod:`tfclip_cli.index.types`.

On disk, a gallery ``G`` is:

- ``G``, the base (format 2): ``MAGIC``, two little-endian uint64 section lengths, then the JSON header
  (:class:`IndexInfo`, whose ``generation`` is a uuid4 hex drawn each time a base is written) and the rows table
  (Parquet: every column of the indexed embeddings rows, footage columns included).
- ``G.<generation>.faissindex``, the base's FAISS index (``faiss.write_index``, streamed to the file: a build
  never holds a second serialised copy of a large index). It is written and synced before ``G`` is renamed into
  place, and never modified: a rewrite that keeps the index (a removal, a calibration, ``set_person_ids``) links
  it under the new generation's name instead of writing it again.
- ``G.<generation>.log``, the append log of that base (``appendlog``): one record per append, each with its
  length, the base's generation and a CRC-32; it holds the appended rows (Parquet) and their normalised float32
  vectors. An append writes one record and ``fsync``s it: O(k) for k tracklets, whatever the gallery's size.
- ``G.<generation>.ids``, the writers' cache (``known_ids``): the live tracklet ids and the rows' schema, so an
  append checks for duplicates without reading the rows; rebuilt from ``G`` and its log whenever it is missing
  or out of date. ``G.lock``: the writers' lock.

A reader (:func:`load_index`) opens the base, then its generation's log and index file, and checks that ``G``
still names the base it opened (else it starts again): the snapshot is the base plus the log records committed
at that moment. The index file is memory-mapped read-only (faiss ``IO_FLAG_MMAP_IFC``): the flat codes (the
vectors of ``flat`` and ``hnsw``, the re-scoring vectors of ``ivfpq*``) stay on disk until a search reads them,
so opening a large gallery reads its IVF lists or graph, not its vectors. The log's vectors are searched exactly
beside the mapped index (:class:`GalleryIndex`); faiss cannot add to a mapped index, and the log stays small: an
append compacts the gallery once the log holds more than ``COMPACT_SHARE`` of the base's rows, ``COMPACT_ROWS``
rows or ``COMPACT_RECORDS`` records, so readers never decode an unbounded log and the O(N) rewrite is amortised
over the appends that grew the log. A record cut short by ``kill -9`` fails its checksum: readers stop before it
and the next writer truncates it.

A rewrite folds the log into a new base of a new generation (:func:`compact_index`, ``tfclip index --compact G``,
is that rewrite alone): the new index file first, then ``G`` renamed into place, then the old generation's files
deleted. A ``kill -9`` before the rename leaves the old base, its index file and its log, after it the new ones
(whose readers ignore the old files); the next writer deletes what a killed one left. So at any instant the
gallery on disk is the old state or the new one, an append that returned is never lost, and a reader that mapped
an index file a writer has since deleted keeps reading it. Format 1 (``MAGIC_FORMAT_1``: three sections, the
serialised index inside ``G``) still opens, read whole; its next rewrite makes it format 2, and a gallery written
before append logs (no ``generation``) is rewritten by its first append.

Writers (build, append, compaction, remove, calibrate, link) hold ``fcntl.flock`` on ``G.lock`` for their whole
read-modify-write, so concurrent writers wait for each other instead of losing a batch; holding it, a writer
deletes the temporary files and the other generations' files a killed writer left. Removing a tracklet marks its
row in the header (a tombstone); searches exclude tombstoned rows with a FAISS id selector, and ``tfclip index``
rebuilds a compact gallery.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Mapping, NamedTuple, Sequence, get_args

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfclip_cli import __version__
from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.index.appendlog import LogScan, append_record, encode_record, log_path, read_records, sync_folder
from tfclip_cli.index.known_ids import KnownIds, LogPosition, ids_path, open_known_ids, write_known_ids
from tfclip_cli.index.types import (
    DEFAULT_MEMORY_BUDGET,
    RESCORE_BYTES,
    IndexChoice,
    IndexType,
    choose_index_type,
    index_params,
    new_index,
)
from tfclip_cli.tables import (
    EMBEDDING_ROW_COLUMNS,
    MANIFEST_SCHEMA,
    PERSON_COLUMN,
    Embeddings,
    atomic_output,
    check_writable,
    reporting_write_errors,
)

log = logging.getLogger(__name__)

BUILD_CHUNK_ROWS = 16_384
"""Rows normalised and added at a time, so a build never holds a second float32 copy of all the vectors."""
TRAIN_SEED = 1234

MAGIC = b"TFCLIP-GALLERY-2"
"""The first 16 bytes of a gallery file; the last digit is the format version."""
SECTION_LENGTHS = struct.Struct("<QQ")
MAGIC_FORMAT_1 = b"TFCLIP-GALLERY-1"
"""Format 1: the serialised index is a third section of ``G`` (read whole, never written any more)."""
SECTION_LENGTHS_FORMAT_1 = struct.Struct("<QQQ")
LOCK_WAIT_S = 300.0
"""How long a writer waits for another writer of the same gallery before refusing."""
REBUILD_HINT = "rebuild it: tfclip index E.parquet --out {path} --force"
COMPACT_SHARE = 0.25
"""An append compacts the gallery when its log holds more rows than this share of the base's."""
COMPACT_ROWS = 100_000
"""... or more rows than this (a reader holds them in memory and scans them exactly beside the mapped index)."""
COMPACT_RECORDS = 1000
"""... or more records than this (each costs a reader a Parquet decode)."""
QUERY_CHUNK = 256
"""Queries scored against the log's vectors at a time, so a large batch never holds a [Q, rows] matrix."""
LOAD_ATTEMPTS = 20
"""How many times a reader starts again when the base is replaced while it opens base and log."""


@dataclass(frozen=True)
class IndexInfo:
    """The JSON header of a gallery: what it holds and where its embeddings came from."""

    type: IndexType
    dim: int
    count: int
    """Rows in the index, tombstoned ones included."""
    params: dict
    checkpoint: str | None
    checkpoint_sha256: str | None
    embeddings_info: dict = field(default_factory=dict)
    """Provenance of the embeddings table (sampling, embedding settings, gallery rule)."""
    removed: tuple[int, ...] = ()
    """Rows removed from the gallery (tombstones), never returned by a search."""
    calibration: dict | None = None
    """The "no match" threshold, the rule and rate it was calibrated for and the live rows then
    (``calibrate.SearchCalibration.to_dict()``, or ``calibrate.Calibration`` for the per-pair rule)."""
    generation: str = ""
    """uuid4 hex, new each time the base file is written; its append log is ``G.<generation>.log``
    (empty in galleries written before append logs: their first append rewrites them with one)."""
    tfclip_version: str = __version__
    choice: dict | None = None
    """Why ``--type auto`` chose ``type``: ``{"budget_bytes", "index_bytes", "reason"}``; None when given."""

    @property
    def live_count(self) -> int:
        """Tracklets a search can return."""
        return self.count - len(self.removed)


@dataclass(frozen=True)
class GalleryIndex:
    """The vectors of a loaded gallery: the base's FAISS index and the append log's unit vectors after it.

    Row ``i < base.ntotal`` is the base's, row ``base.ntotal + j`` the log's ``j``-th. A base read from an index
    file is memory-mapped read-only (faiss aborts the process on an ``add`` to it), so the log's vectors are not
    added to it: :meth:`search` scans them exactly and merges the two rankings.
    """

    base: Any
    appended: np.ndarray
    """[M, D] float32 unit rows of the log (M = 0 without one)."""
    file: Path | None = None
    """The index file ``base`` maps; None for an index built or read whole in memory."""

    @classmethod
    def of(cls, index: Any) -> "GalleryIndex":
        """An in-memory FAISS ``index`` alone, no log."""
        return cls(index, np.zeros((0, index.d), dtype=np.float32))

    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal) + len(self.appended)

    @property
    def d(self) -> int:
        return int(self.base.d)

    def reconstruct(self, row: int) -> np.ndarray:
        """The stored vector of ``row`` (approximate for the compressed ``ivfpq*`` types)."""
        count = int(self.base.ntotal)
        return self.appended[row - count].copy() if row >= count else self.base.reconstruct(row)

    def reconstruct_n(self, start: int, count: int) -> np.ndarray:
        """The stored vectors [count, D] of rows ``start`` .. ``start + count - 1``."""
        base_count, stop = int(self.base.ntotal), start + count
        head = self.base.reconstruct_n(start, min(stop, base_count) - start) if start < base_count else \
            np.zeros((0, self.d), dtype=np.float32)
        return np.concatenate([head, self.appended[max(start - base_count, 0):max(stop - base_count, 0)]])

    def search(self, queries: np.ndarray, k: int, *, params: Any = None,
               appended_allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS-style ``(scores [Q, k], rows [Q, k])`` by inner product over base and log, row -1 past the end.

        Args:
            params: the base's FAISS search parameters (its selector speaks of base rows).
            appended_allowed: boolean ``[M]``, the log rows a search may return (None: all).
        """
        scores, rows = self.base.search(queries, k, params=params)
        if len(self.appended) == 0:
            return scores, rows
        scores = np.where(rows >= 0, scores, -np.inf)
        merged_scores, merged_rows = [], []
        for start in range(0, len(queries), QUERY_CHUNK):
            extra = queries[start:start + QUERY_CHUNK] @ self.appended.T
            if appended_allowed is not None:
                extra[:, ~appended_allowed] = -np.inf
            extra_rows = np.broadcast_to(np.arange(len(self.appended)) + self.base.ntotal, extra.shape)
            both_scores = np.concatenate([scores[start:start + QUERY_CHUNK], extra], axis=1)
            both_rows = np.concatenate([rows[start:start + QUERY_CHUNK], extra_rows], axis=1)
            order = np.argsort(-both_scores, axis=1, kind="stable")[:, :k]
            merged_scores.append(np.take_along_axis(both_scores, order, axis=1))
            merged_rows.append(np.take_along_axis(both_rows, order, axis=1))
        scores, rows = np.concatenate(merged_scores), np.concatenate(merged_rows)
        return scores.astype(np.float32), np.where(np.isfinite(scores), rows, -1)

    def merged(self) -> Any:
        """One writable FAISS index of every row: the base (read whole again from its file when mapped) with the
        log's vectors added. An in-memory base is added to, not copied: the gallery is stale afterwards."""
        base = _read_index_file(self.file, mapped=False) if self.file is not None else self.base
        if len(self.appended):
            base.add(self.appended)
        return base


@dataclass(frozen=True)
class Gallery:
    """A loaded gallery: its vectors, its rows (row ``i`` ↔ index row ``i``) and header."""

    path: Path
    index: GalleryIndex
    rows: pd.DataFrame
    info: IndexInfo
    log_end: int = 0
    """Offset just past the last log record the snapshot holds (:func:`refresh_index` reads on from there)."""
    base_identity: str = ""
    """The identity of the base file it was read from (``_base_identity``); empty for one not read from disk."""

    @property
    def live(self) -> np.ndarray:
        """Boolean ``[count]``: rows not removed."""
        mask = np.ones(self.info.count, dtype=bool)
        mask[list(self.info.removed)] = False
        return mask

    def row_of(self, tracklet_id: str) -> int | None:
        """The live row holding ``tracklet_id``, or None."""
        found = np.flatnonzero((self.rows["tracklet_id"].astype(str) == tracklet_id).to_numpy() & self.live)
        return int(found[-1]) if len(found) else None


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 copy of ``vectors`` [N, D] with unit L2 rows (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, np.finfo(np.float32).tiny)
    return out


def _require_gpus(index_type: IndexType) -> int:
    """The number of GPUs faiss sees; raises UserError without faiss-gpu/CUDA or for a type with no GPU step."""
    count = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if count == 0:
        raise UserError(
            "--gpu: faiss-gpu/CUDA is not available (this faiss build has no GPU support or sees no GPU)",
            hint="install faiss-gpu on a machine with CUDA GPUs, or drop --gpu to build on the CPU",
        )
    if index_type not in RESCORE_BYTES:
        raise UserError(
            f"--gpu: a {index_type} index has no GPU build step (only ivfpq's k-means training runs on GPUs)",
            hint="drop --gpu, or use --type ivfpq",
        )
    return count


def _gpu_flat(dim: int) -> Any:
    """An empty inner-product flat index sharded over every visible GPU."""
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim), options)


def _chunks(vectors: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` blocks of ``BUILD_CHUNK_ROWS`` rows of ``vectors`` [N, D], as they are.

    ``vectors`` may be any ``[N, D]`` array that slices (an ``np.memmap``, or rows computed on demand).
    """
    for start in range(0, len(vectors), BUILD_CHUNK_ROWS):
        yield start, np.asarray(vectors[start:start + BUILD_CHUNK_ROWS])


def _checked_sample(vectors: np.ndarray, ids: pd.Series, sample_rows: int) -> np.ndarray:
    """The unit rows [sample_rows, D] of a seeded sample, read block by block; raises GalleryError on NaN/inf rows."""
    sample = np.sort(np.random.default_rng(TRAIN_SEED).choice(len(vectors), size=sample_rows, replace=False))
    picked, bad = [], []
    for start, block in _chunks(vectors):
        bad.extend(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
        inside = sample[(sample >= start) & (sample < start + len(block))]
        picked.append(normalized(block[inside - start]))
    if bad:
        raise GalleryError(
            f"the embeddings of {len(bad)} tracklet(s) hold NaN or inf ({', '.join(ids.iloc[bad[:5]])}): "
            "expected finite vectors",
            hint="extract them again (a diverged checkpoint gives NaN); tfclip evaluate refuses them too",
        )
    return np.concatenate(picked)


def _fill(index: Any, vectors: np.ndarray, sample: np.ndarray, *, use_gpu: bool) -> None:
    """Train ``index`` when it needs it on the unit rows ``sample``, then add ``vectors`` [N, D] block by block.

    With ``use_gpu`` the coarse k-means (the costly part of training) assigns points with a flat index sharded
    over every visible GPU; the index itself stays a CPU index, so the saved file loads anywhere.
    """
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        on_gpus = _gpu_flat(index.d) if use_gpu else None
        ivf.clustering_index = on_gpus  # the local keeps the GPU index alive while faiss holds a raw pointer
        index.train(sample)
        ivf.clustering_index = None
    for _, block in _chunks(vectors):
        index.add(normalized(block))


def lock_path(path: Path) -> Path:
    """The lock file beside the gallery at ``path``, held by its writers."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive writer lock of the gallery at ``path`` (``fcntl.flock`` on ``path.lock``).

    The kernel drops the lock when its holder dies, so a killed writer never blocks the next one. Holding it,
    temporary files a killed writer left beside the gallery are deleted.

    Raises:
        GalleryError: when another writer holds the lock for longer than ``LOCK_WAIT_S``.
        OutputError: when the lock file cannot be created beside ``path`` (read-only folder, a file as a folder).
    """
    path = Path(path)
    with reporting_write_errors(path):  # a read-only folder, or a file where a folder should be
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path(path), "a")
    with handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GalleryError(
                        f"{path}: another tfclip process has been writing this gallery for {LOCK_WAIT_S:.0f} s "
                        f"(it holds {lock_path(path)})",
                        hint="wait for it to finish, or stop it; the gallery is left as it was",
                    ) from None
                time.sleep(0.05)
        try:
            _delete_orphans(path)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _delete_orphans(path: Path) -> None:
    """Delete ``tables.atomic_output`` temporaries of ``path`` and the files of generations its base does not name
    (an index file written before a killed writer's rename, a log left after it): under the lock no other writer
    owns them. Nothing of an unreadable base is deleted."""
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        log.warning("deleting %s, left by a gallery writer that was killed", orphan)
        orphan.unlink(missing_ok=True)
    try:
        generation = _read_base_header(path).generation if path.is_file() else ""
    except GalleryError:
        return
    _delete_other_generations(path, generation)


def _check_output(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to overwrite it, or --append to extend it")
    check_writable(path, force=True)


def _checked_ids(embeddings: Embeddings) -> pd.DataFrame:
    """Every column of the rows to index; raises GalleryError on no rows or a repeated id."""
    if len(embeddings.rows) == 0:
        raise GalleryError("the embeddings table has no rows: nothing to index")
    ids = embeddings.rows["tracklet_id"].astype(str)
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise GalleryError(f"the embeddings table repeats tracklet ids {', '.join(repeated[:5])}: ids must be unique")
    return embeddings.rows.reset_index(drop=True)


def _checked_rows(embeddings: Embeddings) -> pd.DataFrame:
    """Every column of the rows to index; raises GalleryError on no rows, a repeated id or non-finite vectors."""
    _checked_ids(embeddings)
    ids = embeddings.rows["tracklet_id"].astype(str)
    bad = ~np.isfinite(embeddings.vectors).all(axis=1)
    if bad.any():
        raise GalleryError(
            f"the embeddings of {int(bad.sum())} tracklet(s) hold NaN or inf ({', '.join(ids[bad][:5])}): "
            "expected finite vectors",
            hint="extract them again (a diverged checkpoint gives NaN); tfclip evaluate refuses them too",
        )
    return embeddings.rows.reset_index(drop=True)


def _header_from(embeddings: Embeddings, index_type: IndexType, params: dict, choice: dict | None) -> IndexInfo:
    provenance = {k: v for k, v in embeddings.info.items() if k not in ("checkpoint", "checkpoint_sha256")}
    return IndexInfo(
        type=index_type,
        dim=embeddings.dim,
        count=len(embeddings.rows),
        params=params,
        checkpoint=embeddings.info.get("checkpoint"),
        checkpoint_sha256=embeddings.info.get("checkpoint_sha256"),
        embeddings_info=provenance,
        choice=choice,
    )


def _resolved_type(index_type: IndexType | Literal["auto"], count: int, dim: int, budget: int) -> IndexChoice | None:
    """The choice of ``auto`` (logged), or None for a given type."""
    if index_type != "auto":
        return None
    choice = choose_index_type(count, dim, budget)
    log.info("--type auto chose %s: %s", choice.type, choice.reason)
    return choice


def build_index(
    embeddings: Embeddings,
    out: Path,
    *,
    index_type: IndexType | Literal["auto"] = "flat",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    use_gpu: bool = False,
    force: bool = False,
) -> IndexInfo:
    """Index ``embeddings`` (L2-normalised, inner product) into the gallery file ``out``.

    ``embeddings.vectors`` is read ``BUILD_CHUNK_ROWS`` rows at a time (twice: a checked training sample, then
    the rows added), so it may be an ``np.memmap`` or rows computed on demand. ``index_type="auto"`` chooses by
    :func:`~tfclip_cli.index.types.choose_index_type` within ``memory_budget`` bytes, recorded in the header's
    ``choice``.

    Raises:
        UserError: when ``out`` exists without ``force``, or ``use_gpu`` without faiss-gpu/CUDA.
        OutputError: when ``out`` cannot be written (read-only folder, a file as a folder), before any work.
        GalleryError: on an empty table, repeated tracklet ids, non-finite vectors, too few rows for ``ivfpq``,
            or no type within ``memory_budget`` for ``auto``.
    """
    out = Path(out)
    _check_output(out, force=force)
    rows = _checked_ids(embeddings)
    choice = _resolved_type(index_type, len(rows), embeddings.dim, memory_budget)
    index_type = choice.type if choice else index_type
    if use_gpu:
        log.info("building on %d GPU(s)", _require_gpus(index_type))
    params = index_params(index_type, len(rows), embeddings.dim)
    sample = _checked_sample(embeddings.vectors, rows["tracklet_id"].astype(str), params.get("train_rows", 0))
    index = new_index(index_type, embeddings.dim, params)
    _fill(index, embeddings.vectors, sample, use_gpu=use_gpu)
    del sample
    info = _header_from(embeddings, index_type, params,
                        choice and {"budget_bytes": memory_budget, "index_bytes": choice.index_bytes,
                                    "reason": choice.reason})
    with writer_lock(out):
        _check_output(out, force=force)  # another writer may have created it while this one built
        return _write_gallery(Gallery(out, GalleryIndex.of(index), rows, info), force=force)


def _check_appendable(info: IndexInfo, path: Path, embeddings: Embeddings) -> None:
    """Same dimension and checkpoint as the gallery's header; raises GalleryError naming the gallery."""
    if embeddings.dim != info.dim:
        raise GalleryError(f"{path} holds {info.dim}-d embeddings; the new table has {embeddings.dim}-d")
    theirs, ours = embeddings.info.get("checkpoint_sha256"), info.checkpoint_sha256
    if theirs != ours:
        raise GalleryError(
            f"{path} holds embeddings of checkpoint sha256 {ours}; the new table's came from {theirs}",
            hint=f"extract the new tracklets with {info.checkpoint}, or build a new index",
        )


def append_to_index(embeddings: Embeddings, path: Path) -> IndexInfo:
    """Add new tracklets to the gallery at ``path``: one checksummed record appended to its log, in O(k).

    Under the writer lock it reads the base's header (never its rows or index) and the ids cache, appends the
    record and ``fsync``s it: the tracklets are committed when this returns. When the log has grown past
    ``COMPACT_SHARE`` of the base's rows or ``COMPACT_RECORDS`` records, the same call then compacts the gallery
    (:func:`compact_index`: O(N), amortised over the appends that grew the log).

    Raises:
        GalleryError: on a missing/corrupt gallery, another dimension or checkpoint, a known tracklet id, rows
            whose columns cannot be stored with the gallery's, non-finite vectors, or another writer holding the
            lock too long.
    """
    path = Path(path)
    rows = _checked_rows(embeddings)
    new_ids = rows["tracklet_id"].astype(str)
    with writer_lock(path):
        info = _read_base_header(path)
        if not info.generation:
            log.info("%s was written before append logs: rewriting it once with a generation", path)
            info = _write_gallery(load_index(path), force=True)
        base_rows = info.count
        _check_appendable(info, path, embeddings)
        table = _rows_table(rows, path)
        with _known_ids(path, info) as known:
            repeated = known.repeated(list(new_ids))
            if repeated:
                raise GalleryError(f"{path}: tracklet ids already indexed or repeated: {', '.join(repeated[:5])}")
            schema = _widened(known.schema, table.schema, path)
            record = encode_record(info.generation, _parquet_bytes(table), normalized(embeddings.vectors))
            end = append_record(log_path(path, info.generation), record, at=known.log.end)
            position = LogPosition(end, known.log.rows + len(rows), known.log.records + 1, last=known.log.end)
            known.add(new_ids, schema=schema, log=position)
        info = replace(info, count=base_rows + position.rows, tfclip_version=__version__)
        if position.rows > min(COMPACT_SHARE * base_rows, COMPACT_ROWS) or position.records > COMPACT_RECORDS:
            return _compact_after_append(path, info)
    return info


def _compact_after_append(path: Path, appended: IndexInfo) -> IndexInfo:
    """Compact under the lock already held; the append is committed, so a failure here is logged, not raised."""
    try:
        return _write_gallery(load_index(path), force=True)
    except UserError as error:
        log.warning("%s: the append is committed, compacting its log failed: %s", path, error.message)
        return appended


def compact_index(path: Path) -> IndexInfo:
    """Rewrite the gallery at ``path`` as one base holding its append log, of a new generation, then delete the
    log; locked, and atomic as every rewrite (a ``kill -9`` leaves the base and log before it, or the new base).

    Raises:
        GalleryError: on a missing or damaged gallery, or another writer holding the lock too long.
    """
    path = Path(path)
    with writer_lock(path):
        return _write_gallery(load_index(path), force=True)


def _widened(known: pa.Schema, new: pa.Schema, path: Path) -> pa.Schema:
    """The schema of the gallery's rows with the new rows' added; a GalleryError when a column's types clash."""
    try:
        return pa.unify_schemas([known, new.remove_metadata()], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise GalleryError(f"{path}: the new rows cannot be stored with the gallery's ({exc}); a column changed "
                           "its type", hint="give the column the type it has in the gallery") from exc


def _base_identity(path: Path) -> str:
    """The identity of the base file now at ``path``: a rewrite (a new file) or an edit in place changes it."""
    return _identity(os.stat(path))


def _identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def _known_ids(path: Path, info: IndexInfo) -> KnownIds:
    """The ids cache of the gallery's current generation, up to date with its log (rebuilt when it must be).

    Called under the writer lock. A cache of another base file, or covering more of the log than the log holds,
    is rebuilt from the whole gallery (O(N), once: after a crash between a rewrite and its cache, or a copy).
    """
    file, base = ids_path(path, info.generation), _base_identity(path)
    known = open_known_ids(file, base=base)
    if known is not None and _caught_up(known, path, info.generation):
        return known
    if known is not None:
        known.close()
    snapshot = _load_snapshot(path)
    gallery = snapshot.gallery
    live_ids = gallery.rows["tracklet_id"].astype(str)[gallery.live]
    position = LogPosition(gallery.log_end, gallery.info.count - info.count, snapshot.records, snapshot.log_last)
    write_known_ids(file, live_ids, base=base, schema=_rows_table(gallery.rows, path).schema.remove_metadata(),
                    log=position)
    known = open_known_ids(file, base=base)
    assert known is not None
    return known


def _caught_up(known: KnownIds, path: Path, generation: str) -> bool:
    """Add to ``known`` the batches committed to the log after it. False when the log does not hold what it
    says: the last record it read is no longer whole, or the log is shorter."""
    try:
        handle = open(log_path(path, generation), "rb")
    except FileNotFoundError:
        return known.log.end == 0
    with handle:
        scan = read_records(handle, generation, start=known.log.last)
    if scan.end < known.log.end:
        return False
    new = [batch for batch in scan.batches if batch.offset >= known.log.end]
    if new:
        tables = [pq.read_table(pa.BufferReader(batch.rows)) for batch in new]
        schema = pa.unify_schemas([known.schema, *(t.schema.remove_metadata() for t in tables)],
                                  promote_options="permissive")
        ids = [str(i) for table in tables for i in table.column("tracklet_id").to_pylist()]
        rows = known.log.rows + sum(len(table) for table in tables)
        known.add(ids, schema=schema, log=LogPosition(scan.end, rows, known.log.records + len(new), new[-1].offset))
    return True


def remove_from_index(path: Path, tracklet_ids: Sequence[str]) -> IndexInfo:
    """Remove tracklets from the gallery at ``path`` (tombstones in its header), locked and atomic.

    Raises:
        GalleryError: naming the ids the gallery does not hold (nothing is removed then).
    """
    with writer_lock(path):
        gallery = load_index(path)
        rows = {tracklet_id: gallery.row_of(tracklet_id) for tracklet_id in tracklet_ids}
        unknown = [tracklet_id for tracklet_id, row in rows.items() if row is None]
        if unknown:
            raise GalleryError(f"{gallery.path} holds no tracklet {', '.join(unknown[:5])}")
        removed = tuple(sorted({*gallery.info.removed, *rows.values()}))
        info = replace(gallery.info, removed=removed, tfclip_version=__version__)
        return _write_gallery(replace(gallery, info=info), force=True)


def update_header(path: Path, **changes: Any) -> IndexInfo:
    """Rewrite the gallery at ``path`` with header fields ``changes`` (e.g. its calibration), locked and atomic."""
    with writer_lock(path):
        gallery = load_index(path)
        info = replace(gallery.info, **changes, tfclip_version=__version__)
        return _write_gallery(replace(gallery, info=info), force=True)


def set_person_ids(path: Path, person_ids: Mapping[str, int]) -> IndexInfo:
    """Write ``tfclip link``'s person id of each tracklet into the ``person_id`` column of the gallery's rows
    (-1 for rows not given, e.g. tracklets appended since), locked and atomic.

    Raises:
        GalleryError: naming the tracklet ids the gallery does not hold live (nothing is written then).
    """
    with writer_lock(path):
        gallery = load_index(path)
        rows = {tracklet_id: gallery.row_of(tracklet_id) for tracklet_id in person_ids}
        unknown = [tracklet_id for tracklet_id, row in rows.items() if row is None]
        if unknown:
            raise GalleryError(f"{gallery.path} holds no tracklet {', '.join(unknown[:5])}"
                               + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""),
                               hint="link the embeddings table the gallery was indexed from")
        column = np.full(len(gallery.rows), -1, dtype=np.int64)
        if PERSON_COLUMN in gallery.rows:
            column = gallery.rows[PERSON_COLUMN].fillna(-1).to_numpy(dtype=np.int64)
        for tracklet_id, row in rows.items():
            column[row] = int(person_ids[tracklet_id])
        linked = gallery.rows.assign(**{PERSON_COLUMN: column})
        info = replace(gallery.info, tfclip_version=__version__)
        return _write_gallery(replace(gallery, rows=linked, info=info), force=True)


def _rows_table(rows: pd.DataFrame, path: Path) -> pa.Table:
    """The rows as an Arrow table: manifest columns with their schema types, any other column as pandas has it."""
    try:
        table = pa.Table.from_pandas(rows, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise GalleryError(f"{path}: the rows cannot be stored together ({exc}); a column changed its type") from exc
    for name in EMBEDDING_ROW_COLUMNS:
        position = table.schema.get_field_index(name)
        table = table.set_column(position, name, table.column(name).cast(MANIFEST_SCHEMA.field(name).type))
    return table


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_gallery(gallery: Gallery, *, force: bool) -> IndexInfo:
    """Write ``gallery`` as a new base of a new generation: its index file first (synced), then header and rows
    in a temporary file, synced and renamed onto ``gallery.path`` in one step. Then delete the files of other
    generations (the gallery holds their rows: every writer loads base and log under the lock) and write the new
    ids cache. Called under the writer lock.

    Returns:
        The header written, with its new ``generation``.
    """
    path, rows = gallery.path, gallery.rows
    info = replace(gallery.info, generation=uuid.uuid4().hex)
    assert gallery.index.ntotal == len(rows) == info.count, (gallery.index.ntotal, len(rows), info.count)
    header = json.dumps(asdict(info), indent=2, sort_keys=True).encode()
    table = _rows_table(rows, path)
    table_bytes = _parquet_bytes(table)
    index_file = index_path(path, info.generation)
    _write_index_file(gallery.index, index_file)
    try:
        with atomic_output(path, force=force) as temp, open(temp, "wb") as handle:
            handle.write(MAGIC + SECTION_LENGTHS.pack(len(header), len(table_bytes)))
            for section in (header, table_bytes):
                handle.write(section)
            handle.flush()
            os.fsync(handle.fileno())  # the new base is on disk before the old generation's files are deleted
    except BaseException:
        index_file.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    _delete_other_generations(path, info.generation)
    live_ids = rows["tracklet_id"].astype(str)[replace(gallery, info=info).live]
    write_known_ids(ids_path(path, info.generation), live_ids, base=_base_identity(path),
                    schema=table.schema.remove_metadata(), log=LogPosition(0, 0, 0, 0))
    return info


def _write_index_file(index: GalleryIndex, out: Path) -> None:
    """Write ``index`` (base and log as one FAISS index) to ``out``, synced. An index file unchanged since it was
    read (no log rows to fold in) is hard-linked under the new name instead: O(1) for a rewrite of the header
    or rows alone (a copy where the file system has no hard links)."""
    with atomic_output(out) as temp:
        if index.file is not None and len(index.appended) == 0:
            temp.unlink()
            try:
                os.link(index.file, temp)
            except OSError:
                shutil.copyfile(index.file, temp)
        else:
            faiss.write_index(index.merged(), str(temp))  # streamed: no second, serialised copy in memory
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())


def index_path(path: Path, generation: str) -> Path:
    """The FAISS index file of generation ``generation`` of the gallery at ``path``."""
    return path.with_name(f"{path.name}.{generation}.faissindex")


def _generation_files(path: Path) -> Iterator[tuple[Path, str]]:
    """The index files, append logs and ids caches (and their SQLite journals) beside ``path``, each with its
    generation."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9a-f]{32})\.(?:faissindex|log|ids|ids-journal)")
    for file in path.parent.iterdir() if path.parent.is_dir() else ():
        found = pattern.fullmatch(file.name)
        if found:
            yield file, found.group(1)


def _delete_other_generations(path: Path, generation: str) -> None:
    """Delete the index files, append logs and ids caches beside ``path`` of generations other than ``generation``
    (a reader that mapped a deleted index file keeps reading it)."""
    for file, owner in _generation_files(path):
        if owner != generation:
            file.unlink(missing_ok=True)


def gallery_files(path: Path) -> list[Path]:
    """The files of the gallery at ``path`` on disk: the base, its lock, its index files, append logs and ids
    caches."""
    path = Path(path)
    files = [file for file in (path, lock_path(path)) if file.exists()]
    return files + sorted(file for file, _ in _generation_files(path))


class _Sections(NamedTuple):
    header: bytes
    rows: bytes
    index: bytes | None
    """The serialised index of a format-1 file; None in format 2 (the index has its own file)."""


def _section_lengths(handle: BinaryIO, path: Path) -> tuple[int, ...]:
    """The lengths of the sections (two in format 2, three in format 1) of the gallery file open as ``handle``,
    checked against its size.

    The size is that of the open file (``fstat``), never of ``path``: a writer may rename a new gallery onto
    ``path`` after the open, and this reader keeps reading the old file whole.
    """
    magic = handle.read(len(MAGIC))
    lengths_format = {MAGIC: SECTION_LENGTHS, MAGIC_FORMAT_1: SECTION_LENGTHS_FORMAT_1}.get(magic)
    packed = handle.read(lengths_format.size) if lengths_format else b""
    if lengths_format is None or len(packed) < lengths_format.size:
        raise GalleryError(
            f"{path} is not a tfclip gallery (format 1 or 2): an index written by an older tfclip (with "
            ".meta.parquet/.json files beside it), another tool, or a damaged file",
            hint=REBUILD_HINT.format(path=path),
        )
    lengths = lengths_format.unpack(packed)
    prefix, size = len(magic) + len(packed), os.fstat(handle.fileno()).st_size
    if prefix + sum(lengths) != size:
        raise GalleryError(
            f"{path} is damaged: its sections claim {prefix + sum(lengths):,} bytes, the file holds {size:,}",
            hint=REBUILD_HINT.format(path=path),
        )
    return lengths


def _read_sections(handle: BinaryIO, path: Path) -> _Sections:
    """The sections of the gallery file open as ``handle``."""
    sections = [handle.read(length) for length in _section_lengths(handle, path)]
    return _Sections(*sections, *([None] if len(sections) == 2 else []))


def _read_base_header(path: Path) -> IndexInfo:
    """The header of the base file at ``path`` alone, without reading its rows or index."""
    if not path.is_file():
        raise GalleryError(
            f"{path} not found: expected a gallery written by tfclip index",
            hint=f"build it with: tfclip index E.parquet --out {path}",
        )
    with open(path, "rb") as handle:
        return _read_header(handle.read(_section_lengths(handle, path)[0]), path)


def gallery_stamp(path: Path) -> tuple[int, ...]:
    """What changes whenever the gallery at ``path`` does: its base file's identity and its append log's size.

    Raises:
        GalleryError: when ``path`` is missing or not a gallery.
    """
    path = Path(path)
    generation = _read_base_header(path).generation
    stat = path.stat()
    try:
        log_size = log_path(path, generation).stat().st_size if generation else -1
    except FileNotFoundError:
        log_size = -1
    return stat.st_ino, stat.st_mtime_ns, stat.st_size, log_size


INDEX_TYPES = get_args(IndexType)


def _header_problem(fields: Any) -> str | None:
    """What makes decoded header JSON not a gallery header, or None."""
    if not isinstance(fields, dict):
        return f"a JSON {type(fields).__name__}, expected an object"
    if fields.get("type") not in INDEX_TYPES:
        return f"type {fields.get('type')!r}, expected one of {', '.join(INDEX_TYPES)}"
    for name in ("dim", "count"):
        if type(fields.get(name)) is not int:
            return f"{name} {fields.get(name)!r}, expected an integer"
    removed = fields.get("removed", [])
    if not isinstance(removed, list) or any(type(row) is not int for row in removed):
        return f"removed {removed!r}, expected a list of row numbers"
    generation = fields.get("generation", "")
    if not (isinstance(generation, str) and re.fullmatch(r"(?:[0-9a-f]{32})?", generation)):
        return f"generation {generation!r}, expected 32 hex digits"
    return None


def _read_header(data: bytes, path: Path) -> IndexInfo:
    try:
        fields = json.loads(data)
        problem = _header_problem(fields)
        if problem is None:
            return IndexInfo(**{**fields, "removed": tuple(fields.get("removed", ()))})
    except (ValueError, TypeError) as exc:
        problem = str(exc)
    raise GalleryError(f"{path}: the header is not a tfclip gallery header ({problem})",
                       hint=REBUILD_HINT.format(path=path))


def _read_rows(data: bytes, path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise GalleryError(f"{path}: the rows table is not readable Parquet ({exc})") from exc
    missing = [c for c in EMBEDDING_ROW_COLUMNS if c not in table.column_names]
    if missing:
        raise GalleryError(f"{path}: the rows table lacks the column(s) {', '.join(missing)}")
    return table.to_pandas()


_FAISS_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _faiss_reading(size: int, what: str, path: Path) -> Iterator[None]:
    """Read a FAISS index of ``size`` bytes (``what``: where, for the message); a vector claiming more bytes than
    that is a GalleryError naming the gallery ``path``.

    faiss allocates a vector at the size its file claims before reading it (a damaged or crafted header asked
    for terabytes: MemoryError); capping faiss's per-vector limit at the index's length refuses it unallocated.
    """
    with _FAISS_LIMIT_LOCK:  # the limit is a faiss global: restore it for other readers
        previous = faiss.get_deserialization_vector_byte_limit()
        faiss.set_deserialization_vector_byte_limit(max(size, 1))
        try:
            yield
        except (RuntimeError, MemoryError) as exc:
            reason = str(exc).splitlines()[0].split("Error: ")[-1] if str(exc) else type(exc).__name__
            raise GalleryError(
                f"{path}: {what} ({size:,} bytes) is not a readable index ({reason})",
                hint=REBUILD_HINT.format(path=path),
            ) from exc
        finally:
            faiss.set_deserialization_vector_byte_limit(previous)


def _read_faiss(data: bytes, path: Path) -> Any:
    """Deserialise the index section of a format-1 file."""
    with _faiss_reading(len(data), "the FAISS section", path):
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def _read_index_file(file: Path, *, mapped: bool, gallery: Path | None = None) -> Any:
    """The FAISS index in ``file``: its flat codes memory-mapped read-only (``mapped``), or read whole.

    Raises:
        FileNotFoundError: when ``file`` is gone (a writer replaced the gallery since its header was read).
        GalleryError: naming the gallery and ``file``, when it is not a readable FAISS index.
    """
    size = file.stat().st_size
    try:
        with _faiss_reading(size, f"its index file {file.name}", gallery or file):
            return faiss.read_index(str(file), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
    except GalleryError:
        if not file.exists():
            raise FileNotFoundError(file) from None
        raise


class _Snapshot(NamedTuple):
    gallery: Gallery
    log_last: int
    """Where that record starts (0 without records)."""
    records: int


def load_index(path: Path) -> Gallery:
    """Load the gallery at ``path``: its base (index, rows and header checked against each other) and the records
    of its append log committed when it was opened, one consistent snapshot.

    Raises:
        GalleryError: naming the file, when it is missing, of another format, damaged, empty, or its counts,
            dimensions or tombstones disagree.
    """
    return _load_snapshot(Path(path)).gallery


def _load_snapshot(path: Path) -> _Snapshot:
    """The gallery and how much of its log it read. The base is opened first, then its generation's log; if the
    base was replaced meanwhile (a compaction renames the new base, then deletes the old log), start again."""
    for _ in range(LOAD_ATTEMPTS):
        if not path.is_file():
            raise GalleryError(
                f"{path} not found: expected a gallery written by tfclip index",
                hint=f"build it with: tfclip index E.parquet --out {path}",
            )
        generation = None
        try:
            with open(path, "rb") as base:
                sections = _read_sections(base, path)
                info = _read_header(sections.header, path)
                generation = info.generation
                scan = _read_log(path, info.generation)
                index = _read_index(path, sections, info)
                if _is_current(base, path):
                    return _assembled(path, sections, info, scan, index, _identity(os.fstat(base.fileno())))
        except FileNotFoundError:  # replaced between the check and an open (of the base, or its index file)
            if generation and _names_generation(path, generation):  # not replaced: the index file is gone
                raise GalleryError(f"{path}: its index file {index_path(path, generation).name} is missing",
                                   hint=REBUILD_HINT.format(path=path)) from None
    raise GalleryError(f"{path} was rewritten {LOAD_ATTEMPTS} times while it was being read", hint="try again")


def _read_log(path: Path, generation: str) -> LogScan:
    """The committed records of ``generation``'s log (none for a gallery without one)."""
    try:
        handle = open(log_path(path, generation), "rb") if generation else None
    except FileNotFoundError:
        handle = None
    if handle is None:
        return LogScan(batches=(), end=0, size=0)
    with handle:
        return read_records(handle, generation)


def _names_generation(path: Path, generation: str) -> bool:
    """Whether the base now at ``path`` is of ``generation``."""
    try:
        return _read_base_header(path).generation == generation
    except (FileNotFoundError, GalleryError):
        return False


def _read_index(path: Path, sections: _Sections, info: IndexInfo) -> GalleryIndex:
    """The base's index without the log: the format-1 section read whole, or the index file mapped."""
    if sections.index is not None:
        return GalleryIndex.of(_read_faiss(sections.index, path))
    file = index_path(path, info.generation)
    return GalleryIndex(_read_index_file(file, mapped=True, gallery=path), np.zeros((0, info.dim), np.float32), file)


def _is_current(base: BinaryIO, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``base``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(base.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _assembled(path: Path, sections: _Sections, info: IndexInfo, scan: LogScan, index: GalleryIndex,
               identity: str) -> _Snapshot:
    """The base's index, rows and header checked against each other, then the log's batches added to them."""
    rows = _read_rows(sections.rows, path)
    if index.ntotal == 0:
        raise GalleryError(f"{path} is an empty index: nothing to search", hint="index some embeddings first")
    if not (index.ntotal == len(rows) == info.count) or index.d != info.dim:
        raise GalleryError(
            f"{path} holds {index.ntotal} {index.d}-d vectors and {len(rows)} rows; its header says "
            f"{info.count} {info.dim}-d: expected one count and dimension",
            hint=REBUILD_HINT.format(path=path),
        )
    if any(not 0 <= row < info.count for row in info.removed):
        raise GalleryError(f"{path}: the header removes rows outside 0..{info.count - 1}")
    gallery = _with_records(Gallery(path, index, rows, info, base_identity=identity), scan)
    last = scan.batches[-1].offset if scan.batches else 0
    return _Snapshot(gallery, last, len(scan.batches))


def _with_records(gallery: Gallery, scan: LogScan) -> Gallery:
    """``gallery`` with the log batches of ``scan`` after its rows, read up to ``scan.end``."""
    info = gallery.info
    if scan.batches:
        log_file = log_path(gallery.path, info.generation)
        if any(batch.vectors.shape[1] != info.dim for batch in scan.batches):
            raise GalleryError(f"{log_file}: a record holds vectors of another width than the gallery's {info.dim}")
        rows = pd.concat([gallery.rows, *(_read_rows(batch.rows, log_file) for batch in scan.batches)],
                         ignore_index=True)
        appended = np.concatenate([gallery.index.appended, *(batch.vectors for batch in scan.batches)])
        gallery = replace(gallery, index=replace(gallery.index, appended=appended), rows=rows,
                          info=replace(info, count=len(rows)))
    return replace(gallery, log_end=scan.end)


def refresh_index(gallery: Gallery) -> Gallery:
    """The gallery at ``gallery.path`` now, read on from the snapshot ``gallery``: the same object when nothing
    changed, the snapshot plus the log records committed since when only the log grew (the cost of the new
    records: the base's rows and index are not read again), else :func:`load_index`'s full read.

    Raises:
        GalleryError: as :func:`load_index`.
    """
    path = gallery.path
    try:
        unchanged = bool(gallery.base_identity) and _base_identity(path) == gallery.base_identity
        handle = open(log_path(path, gallery.info.generation), "rb") if unchanged and gallery.info.generation else None
    except FileNotFoundError:  # the base, or its log, was replaced or deleted
        handle = None
    if handle is None:
        return load_index(path)
    with handle:  # the base's log: records are only ever added after the valid ones a snapshot read
        scan = read_records(handle, gallery.info.generation, start=gallery.log_end)
    return _with_records(gallery, scan) if scan.batches else gallery
