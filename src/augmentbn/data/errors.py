"""The errors a dataset raises on bad input; every message says what to do about it."""

from __future__ import annotations

from os import PathLike

__all__ = [
    "REDOWNLOAD_HINT",
    "CorruptFileError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DownloadError",
    "not_found",
]

REDOWNLOAD_HINT = "delete it and download again (download=True, `--download` on the command line)"

DOWNLOAD_HINT = (
    "Pass download=True (`--download` on the command line) to fetch it, "
    "or put the files there by hand."
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's folder, file or split is missing. The message shows the expected layout."""


class DownloadError(RuntimeError):
    """A download failed (no network, bad checksum, ...). The message says where to put the files
    by hand."""


class CorruptFileError(ValueError):
    """A file exists but cannot be read (truncated, corrupt, wrong content). ``path`` names it.

    ``CorruptFileError(message)`` (one argument, ``path`` then ``None``) is how a ``DataLoader``
    worker's error is raised again in the main process.
    """

    def __init__(self, path: str | PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            self.path = None
            super().__init__(str(path))
        else:
            self.path = str(path)
            super().__init__(f"{self.path}: {reason}")


class DatasetLayoutError(ValueError):
    """The files are there but organized wrongly (an empty class folder, a class missing from
    the training folder, ...)."""


def not_found(what: str, layout: str, *, hint: str = DOWNLOAD_HINT) -> DatasetNotFoundError:
    """A :class:`DatasetNotFoundError` saying ``what`` is missing, the expected ``layout`` and
    ``hint`` (by default: how to download)."""
    return DatasetNotFoundError(f"{what}.\nExpected layout:\n{layout.rstrip()}\n{hint}")
