"""The writers' cache beside a gallery: ``G.<generation>.ids``, a SQLite file of what an append must check against.

It holds the live tracklet ids of the base and of the append log (a primary key: checking k new ids costs
O(k log N), where reading the base's id column costs O(N): 0.38 s at a million rows), the rows' Arrow schema (so
an append whose columns could not be stored with the others is refused at once, not at the next compaction), and
how far into the log it has read (``log_end``, ``log_rows``, ``log_records``), with the identity of the base file
it was made from. Only writers holding the gallery's lock use it, and it is only a cache: a missing, unreadable
or out-of-date file (another base, a log shorter than it says) is rebuilt from the gallery itself, and records
committed to the log after it was last written are read into it before the next check.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa

from tfclip_cli.errors import OutputError
from tfclip_cli.tables import atomic_output

log = logging.getLogger(__name__)

QUERY_CHUNK = 500
"""Ids per ``IN (...)`` query, below SQLite's limit on bound parameters."""


def ids_path(path: Path, generation: str) -> Path:
    """The ids cache of generation ``generation`` of the gallery at ``path``."""
    return path.with_name(f"{path.name}.{generation}.ids")


@dataclass(frozen=True)
class LogPosition:
    """How much of the append log the cache covers."""

    end: int
    """Offset just past the last record whose ids are in the cache."""
    rows: int
    records: int
    last: int
    """Where that last record starts: a writer checks it is still whole before trusting ``end``."""


class KnownIds:
    """An open ids cache; :meth:`add` commits a batch in one transaction."""

    def __init__(self, connection: sqlite3.Connection, file: Path) -> None:
        self._connection, self.file = connection, file
        meta = dict(connection.execute("SELECT key, value FROM meta"))
        self.base = str(meta["base"])
        self.schema = pa.ipc.read_schema(pa.py_buffer(meta["schema"]))
        self.log = LogPosition(*(int(meta[f"log_{name}"]) for name in ("end", "rows", "records", "last")))

    def repeated(self, tracklet_ids: Sequence[str]) -> list[str]:
        """Those of ``tracklet_ids`` the gallery already holds live, sorted."""
        found: set[str] = set()
        for start in range(0, len(tracklet_ids), QUERY_CHUNK):
            chunk = list(tracklet_ids[start:start + QUERY_CHUNK])
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._connection.execute(
                f"SELECT tracklet_id FROM ids WHERE tracklet_id IN ({marks})", chunk))
        return sorted(found)

    def add(self, tracklet_ids: Iterable[str], *, schema: pa.Schema, log: LogPosition) -> None:
        """Record a batch appended to the log (its ids, the widened schema, the log's new end), committed.

        The batch is already committed to the log: when the cache cannot be written (a full disk), a warning says
        so and the next writer reads the batch from the log into the cache.
        """
        try:
            with self._connection:
                self._connection.executemany("INSERT INTO ids VALUES (?)", ((i,) for i in tracklet_ids))
                _write_meta(self._connection, base=self.base, schema=schema, log=log)
        except sqlite3.Error as error:
            _warn_not_written(self.file, error)
            return
        self.schema, self.log = schema, log

    def close(self) -> None:
        """Close the SQLite connection."""
        self._connection.close()

    def __enter__(self) -> KnownIds:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_meta(connection: sqlite3.Connection, *, base: str, schema: pa.Schema, log: LogPosition) -> None:
    values = {"base": base, "schema": schema.serialize().to_pybytes(), "log_end": log.end, "log_rows": log.rows,
              "log_records": log.records, "log_last": log.last}
    connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())


def open_known_ids(file: Path, *, base: str) -> KnownIds | None:
    """Open the cache at ``file`` made from the base file identified by ``base``; None when it is missing,
    unreadable or was made from another base."""
    if not file.is_file():
        return None
    connection = sqlite3.connect(file)
    try:
        known = KnownIds(connection, file)
    except (sqlite3.DatabaseError, KeyError, ValueError, pa.ArrowInvalid):
        connection.close()
        return None
    if known.base != base:
        known.close()
        return None
    return known


def write_known_ids(file: Path, tracklet_ids: Iterable[str], *, base: str, schema: pa.Schema,
                    log: LogPosition) -> None:
    """Write a new cache at ``file`` (atomically: a killed writer leaves the old one or none). A cache that cannot
    be written (a full disk) is only a warning: the gallery is whole without it, and the next append rebuilds it."""
    try:
        with atomic_output(file, force=True) as temp:
            temp.unlink()
            connection = sqlite3.connect(temp)
            try:
                connection.execute("PRAGMA journal_mode=OFF")  # a new file: a failed write is discarded whole
                with connection:
                    connection.execute("CREATE TABLE ids (tracklet_id TEXT PRIMARY KEY) WITHOUT ROWID")
                    connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
                    connection.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((i,) for i in tracklet_ids))
                    _write_meta(connection, base=base, schema=schema, log=log)
            finally:
                connection.close()
    except (sqlite3.Error, OutputError) as error:
        _warn_not_written(file, error)


def _warn_not_written(file: Path, error: Exception) -> None:
    log.warning("%s was not written (%s): the next append brings this cache up to date", file, error)
