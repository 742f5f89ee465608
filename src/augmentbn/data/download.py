"""Downloads with torchvision's utilities, all-or-nothing.

A file is fetched into a temporary folder beside its destination (and unpacked there) and only
moved into place once complete and checked, so a failed or interrupted download leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ._optional import import_optional
from .errors import DownloadError

__all__ = ["download"]


def _utils():
    return import_optional(
        "torchvision.datasets.utils",
        package="torchvision",
        extra="vision",
        purpose="Downloading datasets",
    )


def _fetch(url: str, folder: Path, filename: str, md5: str | None) -> None:
    """Download ``url`` to ``folder/filename`` and check its MD5 (the only network access)."""
    _utils().download_url(url, str(folder), filename=filename, md5=md5)


def _move_tree(src: Path, dst: Path) -> None:
    """Move the files under ``src`` to the same places under ``dst``, replacing what is there."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def download(
    url: str,
    root: Path,
    filename: str,
    md5: str | None,
    *,
    dataset: str,
    manual: str,
    extract: str | None = None,
) -> None:
    """Fetch ``url`` as ``root/filename``; or, with ``extract`` set, unpack the archive and move
    its folder ``extract`` into ``root`` (the archive itself is not kept).

    Raises:
        DownloadError: the download, the checksum or the unpacking failed. The message names the
            address and says how to put the files in place by hand (``manual``).
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            folder = Path(tmp)
            try:
                _fetch(url, folder, filename, md5)
                if extract is not None:
                    _utils().extract_archive(str(folder / filename), str(folder))
                    if not (folder / extract).is_dir():
                        raise FileNotFoundError(f"the archive holds no folder {extract}/")
            except Exception as err:
                checksum = f" (MD5 {md5})" if md5 else ""
                raise DownloadError(
                    f"Downloading {dataset} failed ({type(err).__name__}: {err}).\n"
                    f"Download {url}{checksum} by hand and {manual}."
                ) from err
            if extract is None:
                os.replace(folder / filename, root / filename)
            else:
                _move_tree(folder / extract, root / extract)
    except DownloadError:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
