"""Uploaded clips → a video file or a folder of frames on disk, within the service's limits.

An upload is a video file, or a zip or tar archive of frame images (``.jpg .jpeg .png .bmp``, taken in name
order, folders ignored). Archive members are never extracted by their own names: each image is written as
``NNNNNN<suffix>`` into a fresh folder, so ``..`` or absolute member names cannot escape it.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from tfclip_cli.errors import DataError, UserError
from tfclip_cli.frames import IMAGE_SUFFIXES, tracklet_from_path
from tfclip_cli.tables import Tracklet

COPY_CHUNK = 1 << 20


class TooLarge(UserError):
    """An upload over the service's size or frame limit (HTTP 413)."""


class Forbidden(UserError):
    """A server-side path outside the directories the operator allowed (HTTP 403)."""


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload may hold."""

    max_bytes: int
    """Bytes of the upload, and of the images unpacked from an archive."""
    max_frames: int


def save_upload(stream: BinaryIO, out: Path, limits: UploadLimits) -> Path:
    """Copy an upload to ``out``, refusing it past ``limits.max_bytes``.

    Raises:
        TooLarge: when the upload holds more bytes than allowed.
    """
    written = 0
    with open(out, "wb") as handle:
        while chunk := stream.read(COPY_CHUNK):
            written += len(chunk)
            if written > limits.max_bytes:
                raise TooLarge(f"the upload exceeds {limits.max_bytes:,} bytes")
            handle.write(chunk)
    return out


def _zip_images(path: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.infolist(), key=lambda m: m.filename):
            if not member.is_dir():
                with archive.open(member) as data:
                    yield member.filename, member.file_size, data


def _tar_images(path: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    with tarfile.open(path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.isfile():  # links and devices are skipped, never followed
                yield member.name, member.size, archive.extractfile(member)


def _unpack_frames(archive: Path, folder: Path, limits: UploadLimits) -> Path:
    """Write the archive's images into ``folder`` as numbered files; raises TooLarge or DataError."""
    members = _zip_images(archive) if zipfile.is_zipfile(archive) else _tar_images(archive)
    folder.mkdir()
    count, unpacked = 0, 0
    for name, size, data in members:
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            continue
        count, unpacked = count + 1, unpacked + size
        if count > limits.max_frames or unpacked > limits.max_bytes:
            raise TooLarge(f"the archive holds more than {limits.max_frames:,} frames or {limits.max_bytes:,} bytes")
        with open(folder / f"{count:06d}{suffix}", "wb") as handle:
            shutil.copyfileobj(data, handle, COPY_CHUNK)
    if count == 0:
        raise DataError(f"the archive holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    return folder


def _is_archive(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    try:  # tarfile.is_tarfile accepts any run of zero bytes (an empty tar): ask for a first member
        with tarfile.open(path) as archive:
            return archive.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def clip_from_upload(upload: Path, folder: Path, limits: UploadLimits) -> Tracklet:
    """The tracklet in a saved upload: an archive unpacked into ``folder/frames``, else the upload as a video.

    Raises:
        TooLarge: over the frame or size limit.
        DataError: an archive without images, or a file that is neither an archive nor a readable video.
    """
    try:
        source = _unpack_frames(upload, folder / "frames", limits) if _is_archive(upload) else upload
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"the uploaded archive cannot be read ({exc})") from exc
    tracklet = tracklet_from_path(source)
    if tracklet.num_frames > limits.max_frames:
        raise TooLarge(f"the clip has {tracklet.num_frames:,} frames; at most {limits.max_frames:,} are accepted")
    if tracklet.num_frames == 0:
        raise DataError("the uploaded video has no frames")
    return tracklet


def allowed_path(text: str, allow_dirs: tuple[Path, ...]) -> Path:
    """A server-side path, resolved (``..`` and symlinks followed), that lies under one of ``allow_dirs``.

    Raises:
        Forbidden: when no directory is allowed, or the resolved path lies outside all of them.
    """
    if not allow_dirs:
        raise Forbidden("server-side paths are off", hint="start tfclip serve with --allow-dir DIR to allow some")
    path = Path(text).resolve()
    if not any(path.is_relative_to(folder.resolve()) for folder in allow_dirs):
        raise Forbidden(f"{text} lies outside the allowed directories")
    return path
