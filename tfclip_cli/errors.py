"""User-caused failures: the CLI prints them as one line (plus a hint) and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix: bad input, a missing file, an impossible setting.

    Args:
        message: what was found and what was expected, naming the file or recipe key.
        hint: the next thing to try, shown on its own line.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = _unwrap_worker_traceback(message, type(self))
        super().__init__(message)
        self.message = message
        self.hint = hint


def _unwrap_worker_traceback(message: str, kind: type) -> str:
    """torch re-raises an error from a DataLoader worker as ``kind(<the worker's whole traceback>)``; keep only the
    original message, the text after the traceback's last ``module.Class: `` (the hint does not cross processes)."""
    if not (message.startswith("Caught ") and "DataLoader worker process" in message and "Traceback" in message):
        return message
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    start = message.rfind(marker)
    return message[start + len(marker):].strip() if start >= 0 else message


class DataError(UserError):
    """A dataset layout, manifest, image or video that cannot be read as expected."""


class RecipeError(UserError):
    """A recipe key that is unknown, of the wrong type or impossible."""


class CheckpointError(UserError):
    """A weight or checkpoint file that is missing, corrupt or does not fit the model."""


class GalleryError(UserError):
    """An embeddings table, FAISS index or sidecar that is missing, empty or inconsistent."""


class OutputError(UserError):
    """An output that cannot be written: no space left, a read-only file system, a file where a folder should be."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``docker stop``) handled like Ctrl-C, resumable checkpoint first; the CLI exits 143."""
