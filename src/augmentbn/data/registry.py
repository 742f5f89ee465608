"""Datasets by name: ``build_dataset`` and ``list_datasets``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import ImageDataset
from .info import SPLITS

__all__ = [
    "BAD_IMAGE_POLICIES",
    "build_dataset",
    "default_root",
    "list_datasets",
    "register_dataset",
]

Builder = Callable[..., ImageDataset]
_BUILDERS: dict[str, Builder] = {}

BAD_IMAGE_POLICIES = ("raise", "skip")
ROOT_ENV = "AUGMENTBN_DATA"


def register_dataset(*names: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``names``.

    A builder takes keyword arguments ``name, root, split, download, image_size, seed, in_chans,
    augment, on_bad_image`` (as :func:`build_dataset` resolves them) plus its own options.
    """

    def decorate(builder: Builder) -> Builder:
        for name in names:
            if name in _BUILDERS:
                raise ValueError(f"dataset {name!r} is already registered")
            _BUILDERS[name] = builder
        return builder

    return decorate


def list_datasets() -> list[str]:
    """Names :func:`build_dataset` accepts, sorted."""
    return sorted(_BUILDERS)


def default_root() -> Path:
    """Where datasets live when no ``root`` is given: ``$AUGMENTBN_DATA``, else
    ``~/.augmentbn/data``."""
    return Path(os.environ.get(ROOT_ENV, "~/.augmentbn/data")).expanduser()


def build_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    download: bool = False,
    image_size: int | None = None,
    seed: int = 0,
    in_chans: int | None = None,
    augment: bool | None = None,
    on_bad_image: str = "raise",
    **kwargs: Any,
) -> ImageDataset:
    """Build dataset ``name``'s ``split`` (``"train"``, ``"val"`` or ``"test"``).

    Args:
        root: the dataset's folder (default :func:`default_root`; ``imagefolder`` needs one).
        download: fetch missing files (CIFAR, MedMNIST); files already in ``root`` are used
            without network.
        image_size: side of the square images produced (default: the dataset's own).
        seed: seeds the splits this library makes (digits; CIFAR's and an image folder's
            validation split).
        in_chans: 1 or 3 channels (grayscale repeated to 3; color to luma); default native.
        augment: augment this split; ``None`` means only ``"train"`` augments.
        on_bad_image: ``"raise"`` or ``"skip"`` an unreadable image (image folders).
        **kwargs: the dataset's own options (see its builder).

    Returns:
        An :class:`ImageDataset` with ``info`` and ``split_record``.

    Raises:
        ValueError: unknown name or bad argument (the message lists the valid ones).
        DatasetNotFoundError, DownloadError, CorruptFileError, DatasetLayoutError: see
            :mod:`augmentbn.data.errors`.
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(
            f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {on_bad_image!r}"
        )
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None; got {image_size!r}")
    if in_chans not in (None, 1, 3):
        raise ValueError(f"in_chans must be 1, 3 or None; got {in_chans!r}")
    return _BUILDERS[key](
        name=key,
        root=Path(root).expanduser() if root is not None else None,
        split=split,
        download=download,
        image_size=image_size,
        seed=seed,
        in_chans=in_chans,
        augment=split == "train" if augment is None else augment,
        on_bad_image=on_bad_image,
        **kwargs,
    )
