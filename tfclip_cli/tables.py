"""The values that cross module boundaries as tables: Tracklet records, the Manifest and the Embeddings.

Both tables are Parquet files whose schema-level metadata holds provenance (JSON under the key ``tfclip``).
Every write goes through :func:`atomic_output`, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfclip_cli import __version__
from tfclip_cli.errors import DataError, GalleryError, OutputError, UserError

Split = Literal["train", "query", "gallery"]
SPLITS: tuple[Split, ...] = ("train", "query", "gallery")

UNKNOWN_PID = -1
"""The pid of a tracklet whose identity nobody labelled (cut from footage by `tfclip track`)."""

GalleryRule = Literal["includes_query", "gallery_only"]
"""What a query is ranked against: every test tracklet (official MARS) or the gallery split alone."""
GALLERY_RULES: tuple[GalleryRule, ...] = ("includes_query", "gallery_only")

METADATA_KEY = b"tfclip"
MANIFEST_COLUMNS = ("tracklet_id", "pid", "camid", "split", "num_frames", "frames", "video")
EMBEDDING_ROW_COLUMNS = ("tracklet_id", "pid", "camid", "split", "num_frames", "frames", "video")

MANIFEST_SCHEMA = pa.schema(
    [
        ("tracklet_id", pa.string()),
        ("pid", pa.int64()),
        ("camid", pa.int64()),
        ("split", pa.string()),
        ("num_frames", pa.int64()),
        ("frames", pa.list_(pa.string())),
        ("video", pa.string()),
    ]
)

# Optional columns of tracklets cut from raw footage by `tfclip track`: where in which source video each one is,
# and (start_time, end_time) when it was filmed, in seconds since the epoch (absent in tables of older tfclip).
ORIGIN_COLUMNS = ("source_video", "first_frame", "last_frame", "start_s", "end_s", "boxes", "frame_indices",
                  "start_time", "end_time")
ORIGIN_FIELDS = {
    "source_video": pa.string(),
    "first_frame": pa.int64(),
    "last_frame": pa.int64(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "boxes": pa.list_(pa.list_(pa.float64(), 4)),
    "frame_indices": pa.list_(pa.int64()),
    "start_time": pa.float64(),
    "end_time": pa.float64(),
}
PERSON_COLUMN = "person_id"
"""Optional column written by `tfclip link`: the person (across cameras) a tracklet belongs to, -1 for none."""


@dataclass(frozen=True)
class FootageOrigin:
    """Where a tracklet cut from raw footage comes from: the moment and the place in its source video.

    ``first_frame``/``last_frame`` are 0-based frame indices of the source video (inclusive); ``boxes`` holds one
    ``(x1, y1, x2, y2)`` pixel box per frame of the tracklet, in the tracklet's frame order, and ``frame_indices``
    the source-video frame of each box (a tracklet relinked from fragments has gaps). ``start_s`` is the start of
    the first frame, ``end_s`` the end of the last one (``(last_frame + 1) / fps``), in seconds from the video's
    start.
    """

    source_video: str
    first_frame: int
    last_frame: int
    start_s: float
    end_s: float
    boxes: tuple[tuple[float, float, float, float], ...]
    frame_indices: tuple[int, ...] | None = None
    """None only in tables written before tfclip recorded them."""
    start_time: float | None = None
    """When the first frame was filmed, in seconds since the epoch; None when the video's start is unknown."""
    end_time: float | None = None
    """When the last frame was filmed, in seconds since the epoch."""

    @property
    def _key(self) -> int:
        """Position of the key frame among the boxes: the middle one, when the frame of each box is known (recorded,
        or the frames run without gaps); else the first."""
        is_contiguous = len(self.boxes) == self.last_frame - self.first_frame + 1
        return len(self.boxes) // 2 if self.frame_indices is not None or is_contiguous else 0

    @property
    def key_frame(self) -> int:
        """The frame of the source video that reports show for this tracklet (0-based)."""
        if self.frame_indices is not None:
            return self.frame_indices[self._key]
        return self.first_frame + self._key

    @property
    def key_box(self) -> tuple[float, float, float, float]:
        """The person's box in :attr:`key_frame`."""
        return self.boxes[self._key]


@dataclass(frozen=True)
class Tracklet:
    """One tracklet of one person seen by one camera: a video file or an ordered list of frame images.

    Exactly one of ``frames`` (absolute image paths in temporal order) and ``video`` (absolute path) is set.
    ``camid`` is 0-based; ``pid`` -1 means the identity is unknown (footage tracklets). ``origin`` is set for
    tracklets cut from raw footage.
    """

    tracklet_id: str
    pid: int
    camid: int
    split: Split
    num_frames: int
    frames: tuple[str, ...] | None = None
    video: str | None = None
    origin: FootageOrigin | None = None

    def __post_init__(self) -> None:
        assert (self.frames is None) != (self.video is None), f"{self.tracklet_id}: frames xor video"
        assert self.split in SPLITS, self.split

    @property
    def is_video(self) -> bool:
        return self.video is not None

    @property
    def source(self) -> str:
        """The video file, or the folder holding the frames."""
        if self.video is not None:
            return self.video
        return str(Path(self.frames[0]).parent) if self.frames else ""


@dataclass(frozen=True)
class ManifestInfo:
    """Provenance and protocol of a manifest, stored in the Parquet metadata."""

    dataset: str
    gallery_rule: GalleryRule
    root: str
    tfclip_version: str = __version__
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """One row per tracklet (columns ``MANIFEST_COLUMNS``, plus ``ORIGIN_COLUMNS`` for footage) and its info."""

    table: pd.DataFrame
    info: ManifestInfo

    def tracklets(self, split: Split | None = None) -> list[Tracklet]:
        """The rows as Tracklet records, optionally only those of one split."""
        rows = self.table if split is None else self.table[self.table["split"] == split]
        return [row_to_tracklet(row) for row in rows.itertuples(index=False)]

    def split_counts(self) -> dict[str, int]:
        return {name: int((self.table["split"] == name).sum()) for name in SPLITS}


def row_to_tracklet(row: object) -> Tracklet | None:
    """A table row (namedtuple or Series with the manifest columns) as a Tracklet; None when it names neither frames
    nor a video (embeddings tables written by other tools)."""
    video = row.video if isinstance(row.video, str) else None
    frames = row.frames if video is None else None
    if frames is not None and not isinstance(frames, float) and len(frames) == 0:
        frames = None
    if video is None and (frames is None or isinstance(frames, float)):
        return None
    return Tracklet(
        tracklet_id=str(row.tracklet_id),
        pid=int(row.pid),
        camid=int(row.camid),
        split=row.split,
        num_frames=int(row.num_frames),
        frames=tuple(frames) if frames is not None else None,
        video=video,
        origin=_row_origin(row),
    )


NON_UTF8_REASON = "the name is not valid UTF-8, which a manifest or embeddings table cannot store; rename it"


def non_utf8_name(tracklet: Tracklet) -> str | None:
    """The first name of a tracklet (id, video, frames) that is not UTF-8 text, as Parquet strings must be, or None.

    A file or folder named in another encoding reaches Python as surrogate escapes (``os.fsdecode``); such a
    tracklet is reported and skipped rather than stored under a name that would not open the file again.
    """
    names = (tracklet.tracklet_id, tracklet.video or "", *(tracklet.frames or ()))
    return next((name for name in names if not is_utf8(name)), None)


def is_utf8(name: str) -> bool:
    """Whether ``name`` is UTF-8 text (a file name in another encoding holds surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _row_origin(row: object) -> FootageOrigin | None:
    """The footage origin of a row, None when the table has no origin columns or this row has none."""
    source = getattr(row, "source_video", None)
    if not isinstance(source, str):
        return None
    return FootageOrigin(
        source_video=source,
        first_frame=int(row.first_frame),
        last_frame=int(row.last_frame),
        start_s=float(row.start_s),
        end_s=float(row.end_s),
        boxes=tuple(tuple(float(v) for v in box) for box in row.boxes),
        frame_indices=_frame_indices(getattr(row, "frame_indices", None)),
        start_time=optional_time(getattr(row, "start_time", None)),
        end_time=optional_time(getattr(row, "end_time", None)),
    )


def _frame_indices(values: object) -> tuple[int, ...] | None:
    """A row's ``frame_indices`` (None when the table predates them or the cell is empty)."""
    if values is None or isinstance(values, float):
        return None
    return tuple(int(v) for v in values)


def optional_time(value: object) -> float | None:
    """A time column's value as a float, None where it is missing (None or NaN)."""
    return None if value is None or pd.isna(value) else float(value)


def row_columns(names: Iterable[str]) -> list[str]:
    """The tracklet-row columns to keep of a table with column ``names``: the manifest columns, then any origin
    columns it has, then its person column."""
    present = set(names)
    optional = (*ORIGIN_COLUMNS, PERSON_COLUMN)
    return list(MANIFEST_COLUMNS) + [name for name in optional if name in present]


def row_schema(columns: Sequence[str]) -> pa.Schema:
    """The Arrow schema of tracklet rows with ``columns`` (from :func:`row_columns`)."""
    fields = {**ORIGIN_FIELDS, PERSON_COLUMN: pa.int64()}
    extra = [pa.field(name, fields[name]) for name in columns if name in fields]
    return pa.schema(list(MANIFEST_SCHEMA) + extra)


def _origin_table(tracklets: Sequence[Tracklet]) -> dict[str, list]:
    """The origin columns of ``tracklets`` (None where a tracklet has no origin)."""
    origins = [t.origin for t in tracklets]
    columns: dict[str, list] = {
        name: [getattr(o, name) if o is not None else None for o in origins] for name in ORIGIN_COLUMNS
    }
    columns["first_frame"] = pd.array(columns["first_frame"], dtype="Int64")
    columns["last_frame"] = pd.array(columns["last_frame"], dtype="Int64")
    for name in ("start_time", "end_time"):
        columns[name] = pd.array(columns[name], dtype="Float64")
    return columns


def tracklet_table(tracklets: Sequence[Tracklet]) -> pd.DataFrame:
    """The manifest columns of ``tracklets``, one row each, in order; the origin columns too when any has one."""
    table = pd.DataFrame(
        {
            "tracklet_id": [t.tracklet_id for t in tracklets],
            "pid": pd.array([t.pid for t in tracklets], dtype="int64"),
            "camid": pd.array([t.camid for t in tracklets], dtype="int64"),
            "split": [t.split for t in tracklets],
            "num_frames": pd.array([t.num_frames for t in tracklets], dtype="int64"),
            "frames": [list(t.frames) if t.frames is not None else None for t in tracklets],
            "video": [t.video for t in tracklets],
        },
        columns=list(MANIFEST_COLUMNS),
    )
    if any(t.origin is not None for t in tracklets):
        for name, values in _origin_table(tracklets).items():
            table[name] = values
    return table


def manifest_from_tracklets(tracklets: Sequence[Tracklet], info: ManifestInfo) -> Manifest:
    """Build a Manifest; tracklet ids must be unique.

    Raises:
        DataError: when two tracklets share an id.
    """
    ids = [t.tracklet_id for t in tracklets]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
        raise DataError(f"duplicate tracklet ids in {info.root}: {', '.join(duplicates[:5])}")
    table = tracklet_table(tracklets)
    return Manifest(table=table, info=info)


# errno values that mean "this destination cannot take the file" rather than a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG}
WRITE_HINTS = {
    errno.ENOSPC: "free some space or choose another destination",
    errno.EDQUOT: "free some space or choose another destination",
    errno.EROFS: "the file system is read-only: choose another destination",
    errno.EACCES: "choose a destination you may write to",
    errno.EPERM: "choose a destination you may write to",
    errno.ENOTDIR: "choose another destination",
    errno.EEXIST: "choose another destination",
}


def output_error(path: Path, error: OSError) -> OutputError:
    """The one-line error for a failed write of ``path``, naming the cause (no space left, read-only ...)."""
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    if error.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir met a file where the path needs a folder
        reason = "a part of the path is a file, not a folder"
    return OutputError(f"cannot write {path}: {reason}", hint=WRITE_HINTS.get(error.errno))


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, *, force: bool = False) -> None:
    """Fail before any work when ``path`` could not be written: it exists (without ``force``) or is a folder, a
    part of its parent is a file, or its nearest existing folder refuses a new file (read-only, full, no access).

    Raises:
        UserError: the file exists and ``force`` is false.
        OutputError: the destination cannot be written, naming the cause.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder", hint="give a file path")
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to overwrite it, or choose another --out")
    _check_creatable(path, in_folder=path.parent)


def check_writable_folder(folder: Path) -> None:
    """Fail before any work when files could not be created in ``folder`` (made if missing): a part of its path is
    a file, or its nearest existing folder refuses a new file (read-only, full, no access).

    Raises:
        OutputError: naming ``folder`` and the cause.
    """
    _check_creatable(Path(folder), in_folder=Path(folder))


def _check_creatable(path: Path, *, in_folder: Path) -> None:
    """Raise the OutputError naming ``path`` when no file can be created in ``in_folder`` or its nearest ancestor."""
    folder = _nearest_existing(in_folder)
    if not folder.is_dir():
        raise output_error(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    try:  # os.access says nothing of a full disk or a read-only mount for root: try a real file
        handle, probe = tempfile.mkstemp(prefix=".tfclip-probe.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise output_error(path, error) from error


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``os.umask`` sets it while reading)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(requested: int) -> int:
    """The permissions the umask leaves of ``requested`` (0o666 for a file, 0o777 for a folder), as ``open()`` and
    ``mkdir`` give them; mkstemp and mkdtemp alone give 0o600 and 0o700."""
    return requested & ~_umask()


@contextlib.contextmanager
def reporting_write_errors(path: Path) -> Iterator[None]:
    """Turn an OSError that means "cannot write here" (no space, read-only, a file as a folder) raised in the block
    into an :class:`OutputError` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        raise output_error(path, error) from error


def require_known_identities(pids: Iterable[int], *, source: str, use: str) -> None:
    """Refuse tracklets of unknown identity (pid -1) where identities are needed.

    Raises:
        DataError: naming ``source``, how many such tracklets it has, and what they can be used for instead.
    """
    unknown = sum(1 for pid in pids if int(pid) == UNKNOWN_PID)
    if unknown:
        raise DataError(
            f"{source}: {unknown} tracklet(s) of unknown identity (pid {UNKNOWN_PID}, e.g. cut from footage by "
            f"tfclip track) cannot be used for {use}: it needs labelled identities",
            hint="unlabelled tracklets can be extracted, indexed and queried; to train or evaluate, give each "
            "person a pid (e.g. the folder layout ROOT/<split>/<pid>/<camid>/...)",
        )


@contextlib.contextmanager
def atomic_output(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions the umask gives any new file. Nothing is left behind when the block fails.

    Raises:
        UserError: when ``path`` exists and ``force`` is false.
        OutputError: when the destination cannot be written (no space, read-only, a file as a folder), naming it.
    """
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to overwrite it, or choose another --out")
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
    temp = Path(temp_name)
    try:
        with reporting_write_errors(path):
            yield temp
            os.chmod(temp, umask_mode(0o666))
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _metadata(info: dict) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps(info, sort_keys=True).encode()}


def write_manifest(manifest: Manifest, path: Path, *, force: bool = False) -> None:
    """Write the manifest atomically as Parquet, its info in the schema metadata."""
    info = dict(manifest.info.__dict__)
    columns = row_columns(manifest.table.columns)
    schema = row_schema(columns).with_metadata(_metadata(info))
    table = pa.Table.from_pandas(manifest.table[columns], schema=schema, preserve_index=False)
    with atomic_output(path, force=force) as temp:
        pq.write_table(table, temp)


def _read_parquet(path: Path, error: type[UserError], what: str) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} not found: expected a {what} Parquet file")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise error(f"{path} is not a readable Parquet file ({exc}): expected a {what}") from exc


def _check_columns(table: pa.Table, path: Path, required: Sequence[str], error: type[UserError]) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise error(f"{path} lacks the column(s) {', '.join(missing)}; found {', '.join(table.column_names)}")


def _check_integer_columns(table: pa.Table, path: Path, names: Sequence[str], error: type[UserError]) -> None:
    """Columns such as ``pid`` must hold integers (a table with string pids would fail far away)."""
    for name in names:
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_null(kind)):
            raise error(f"{path}: column {name} holds {kind} values; expected integers",
                        hint="write the table with integer pids and camids, e.g. with `tfclip prepare`")


def _check_splits(table: pa.Table, path: Path, error: type[UserError]) -> None:
    """The ``split`` column holds only train, query or gallery (a Tracklet of another split would break far away)."""
    found = set(table.column("split").unique().to_pylist())
    unknown = sorted(map(repr, found - set(SPLITS)))
    if unknown:
        raise error(f"{path}: column split holds {', '.join(unknown[:5])}; expected {', '.join(SPLITS)}",
                    hint="write the table with tfclip prepare / tfclip extract, or rename those splits")


def _stored_info(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_manifest(path: Path) -> Manifest:
    """Read a manifest written by :func:`write_manifest` (or any table with the manifest columns).

    Raises:
        DataError: when the file is missing, unreadable, lacks columns or names a split other than train, query
            or gallery.
    """
    table = _read_parquet(path, DataError, "manifest (tfclip prepare ... --out M.parquet)")
    _check_columns(table, path, MANIFEST_COLUMNS, DataError)
    _check_integer_columns(table, path, ("pid", "camid", "num_frames"), DataError)
    _check_splits(table, path, DataError)
    stored = _stored_info(table)
    info = ManifestInfo(
        dataset=stored.get("dataset", "unknown"),
        gallery_rule=stored.get("gallery_rule", "gallery_only"),
        root=stored.get("root", str(Path(path).parent)),
        tfclip_version=stored.get("tfclip_version", "unknown"),
        extra=stored.get("extra", {}),
    )
    frame = table.select(row_columns(table.column_names)).to_pandas()
    return Manifest(table=frame, info=info)


@dataclass(frozen=True)
class Embeddings:
    """Tracklet rows (``EMBEDDING_ROW_COLUMNS``) with one float32 vector each, plus provenance.

    ``info`` holds at least ``gallery_rule`` when known, and for tfclip-written tables ``checkpoint``,
    ``checkpoint_sha256``, ``sampling`` and ``embedding``.
    """

    rows: pd.DataFrame
    vectors: np.ndarray
    info: dict

    def __post_init__(self) -> None:
        assert self.vectors.ndim == 2 and len(self.vectors) == len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def select(self, mask: np.ndarray) -> "Embeddings":
        """The rows where ``mask`` is true."""
        return Embeddings(rows=self.rows[mask].reset_index(drop=True), vectors=self.vectors[mask], info=self.info)


def write_embeddings(embeddings: Embeddings, path: Path, *, force: bool = False) -> None:
    """Write atomically as Parquet; ``embedding`` is a fixed-size list<float32> column."""
    vectors = np.ascontiguousarray(embeddings.vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, embeddings.dim)
    rows = embeddings.rows.copy()
    for name in EMBEDDING_ROW_COLUMNS:
        if name not in rows:
            rows[name] = None
    columns = row_columns(rows.columns)
    base = pa.Table.from_pandas(rows[columns], schema=row_schema(columns), preserve_index=False)
    table = base.append_column("embedding", column)
    table = table.replace_schema_metadata(_metadata(embeddings.info))
    with atomic_output(path, force=force) as temp:
        pq.write_table(table, temp)


def read_embeddings(path: Path) -> Embeddings:
    """Read an embeddings table; tables written by other tools (no tfclip metadata) are accepted.

    The only required columns are ``tracklet_id``, ``pid``, ``camid`` and ``embedding``; a missing
    ``split`` is read as ``gallery``.

    Raises:
        GalleryError: when the file is missing, unreadable, lacks columns, names an unknown split or has ragged
            embeddings.
    """
    table = _read_parquet(path, GalleryError, "embeddings table (tfclip extract ... --out E.parquet)")
    _check_columns(table, path, ("tracklet_id", "pid", "camid", "embedding"), GalleryError)
    _check_integer_columns(table, path, ("pid", "camid"), GalleryError)
    if "split" in table.column_names:
        _check_splits(table, path, GalleryError)
    info = _stored_info(table)
    column = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    else:
        lengths = {len(v) for v in column.to_pylist()}
        if len(lengths) > 1:
            raise GalleryError(f"{path}: embeddings of different lengths {sorted(lengths)}; expected one dimension")
        vectors = np.asarray(column.to_pylist(), dtype=np.float32).reshape(len(column), -1)
    rows = table.drop(["embedding"]).to_pandas()
    for name in EMBEDDING_ROW_COLUMNS:
        if name not in rows:
            rows[name] = "gallery" if name == "split" else None
    rows["pid"] = rows["pid"].astype("int64")
    rows["camid"] = rows["camid"].astype("int64")
    return Embeddings(rows=rows[row_columns(rows.columns)], vectors=vectors.astype(np.float32, copy=False), info=info)
