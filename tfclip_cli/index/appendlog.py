"""The append log of a gallery: ``G.<generation>.log`` beside the base file ``G``, one checksummed record per append.

A record is ``RECORD_HEAD`` (magic ``TFCLIPA1``, the 32-character generation of the base it extends, the payload's
length, the CRC-32 of generation, length and payload) followed by the payload: ``BATCH_HEAD`` (rows k, dimension
D, Parquet length), the appended rows as Parquet, then their L2-normalised float32 vectors ``[k, D]``.

Only the writer holding the gallery's lock appends, at the end of the last valid record, and ``fsync``s before
returning: an append is committed once :func:`append_record` returns. A record cut short by ``kill -9`` fails its
length or checksum check; readers stop there (a failed record always ends the log: the next writer truncates it
before appending), so a reader sees the records committed when it read them, whole, and nothing else. Records of
another generation (left by a rewrite of the base that died before it deleted the old log) are skipped.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tfclip_cli.errors import GalleryError

RECORD_MAGIC = b"TFCLIPA1"
RECORD_HEAD = struct.Struct("<8s32sQI")
"""Magic, base generation (ASCII hex), payload length, CRC-32 of generation + length + payload."""
BATCH_HEAD = struct.Struct("<QQQ")
"""Rows, dimension and Parquet length of a record's batch."""
GENERATION_LENGTH = 32


@dataclass(frozen=True)
class LogBatch:
    """One appended batch: its rows as Parquet bytes and its normalised vectors ``[k, D]``."""

    rows: bytes
    vectors: np.ndarray
    offset: int
    """Where its record starts in the log."""


@dataclass(frozen=True)
class LogScan:
    """The valid records of one generation read from a log, and where the valid part ends."""

    batches: tuple[LogBatch, ...]
    end: int
    """Offset just past the last valid record: where the next record goes."""
    size: int
    """Bytes the file held when it was read; above ``end`` when its tail is a torn record."""


def log_path(path: Path, generation: str) -> Path:
    """The append log of generation ``generation`` of the gallery at ``path``."""
    return path.with_name(f"{path.name}.{generation}.log")


def encode_record(generation: str, rows: bytes, vectors: np.ndarray) -> bytes:
    """The bytes of one record appending ``rows`` (Parquet) and ``vectors`` (float32 ``[k, D]``)."""
    assert len(generation) == GENERATION_LENGTH and vectors.dtype == np.float32 and vectors.ndim == 2
    payload = BATCH_HEAD.pack(*vectors.shape, len(rows)) + rows + np.ascontiguousarray(vectors).tobytes()
    owner = generation.encode("ascii")
    checksum = zlib.crc32(payload, zlib.crc32(owner + struct.pack("<Q", len(payload))))
    return RECORD_HEAD.pack(RECORD_MAGIC, owner, len(payload), checksum) + payload


def _batch(payload: bytes, offset: int, where: str) -> LogBatch:
    """Decode a checksummed payload; one whose parts disagree was written wrong: a GalleryError naming ``where``."""
    count, dim, rows_length = BATCH_HEAD.unpack_from(payload)
    vectors_at = BATCH_HEAD.size + rows_length
    if vectors_at + 4 * count * dim != len(payload):
        raise GalleryError(f"{where}: a record of {count} {dim}-d rows holds {len(payload):,} bytes",
                           hint="compact the gallery from a backup, or rebuild it with tfclip index --force")
    vectors = np.frombuffer(payload, dtype=np.float32, offset=vectors_at).reshape(count, dim)
    return LogBatch(rows=payload[BATCH_HEAD.size:vectors_at], vectors=vectors, offset=offset)


def read_records(handle: BinaryIO, generation: str, *, start: int = 0) -> LogScan:
    """The valid records of ``generation`` in the open log ``handle`` from offset ``start`` (a record's start).

    Reads up to the size the file has now (``fstat``); a writer appending meanwhile adds nothing to this scan.
    """
    size = os.fstat(handle.fileno()).st_size
    handle.seek(start)
    batches, end = [], start
    while end + RECORD_HEAD.size <= size:
        head = handle.read(RECORD_HEAD.size)
        if len(head) < RECORD_HEAD.size:  # cut by a writer truncating a torn tail meanwhile
            break
        magic, owner, length, checksum = RECORD_HEAD.unpack(head)
        if magic != RECORD_MAGIC or end + RECORD_HEAD.size + length > size:
            break
        payload = handle.read(length)
        key = owner + struct.pack("<Q", length)
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(key)) != checksum:
            break
        if owner == generation.encode("ascii"):
            batches.append(_batch(payload, end, str(getattr(handle, "name", "the append log"))))
        end += RECORD_HEAD.size + length
    return LogScan(batches=tuple(batches), end=end, size=size)


def append_record(log: Path, record: bytes, *, at: int) -> int:
    """Write ``record`` at offset ``at`` of ``log`` (cutting a torn tail there), ``fsync`` it; the new end.

    Only the holder of the gallery's writer lock calls this, with ``at`` = the end of the log's valid records.
    A new log file is made durable in its folder too, before the append counts as committed.
    """
    is_new = not log.exists()
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        if os.fstat(descriptor).st_size != at:
            os.ftruncate(descriptor, at)
        os.lseek(descriptor, at, os.SEEK_SET)
        view = memoryview(record)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if is_new:
        sync_folder(log.parent)
    return at + len(record)


def sync_folder(folder: Path) -> None:
    """``fsync`` a folder, so the names created, renamed or deleted in it survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
