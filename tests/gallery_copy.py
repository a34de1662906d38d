"""Copy a gallery with the files beside it that its base names (index file, append log, ids cache)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tfclip_cli.index import gallery_files, lock_path


def copy_gallery(source: Path, destination: Path) -> Path:
    """Copy the gallery at ``source`` to ``destination``, each file of it renamed after the destination."""
    for file in gallery_files(source):
        if file != lock_path(source):
            shutil.copy(file, destination.with_name(destination.name + file.name[len(source.name):]))
    return destination
