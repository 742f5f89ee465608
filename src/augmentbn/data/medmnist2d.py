"""MedMNIST v2 / MedMNIST+ 2D datasets (Yang et al., *Scientific Data* 2023) via ``medmnist``.

One ``.npz`` per dataset and size in ``root``, named as the ``medmnist`` package names them::

    root/octmnist.npz        28 px
    root/octmnist_64.npz     64 px (also _128, _224)

with arrays ``{train,val,test}_images`` (``N×S×S`` uint8, or ``N×S×S×3`` for color) and
``{train,val,test}_labels`` (``N×1``, or ``N×14`` multi-hot for ``chestmnist``). The official
splits are used as they are. Names, classes, addresses and checksums come from ``medmnist.INFO``
(``pip install 'augmentbn[medical]'``).

``size`` picks the file (default: ``image_size`` when it is one of 28/64/128/224, else 28);
``image_size`` other than ``size`` resizes. Normalization: mean 0.5, std 0.5 per channel, as in
the MedMNIST authors' own training code. ``retinamnist`` (ordinal) is treated as 5-class
classification. Augmentation, light and anatomy-aware: random crop with padding ``S / 16`` plus
the flips in ``FLIPS`` (none for chest X-ray and abdominal CT, whose left and right differ).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._optional import import_optional
from .base import TensorImageDataset
from .download import download as fetch
from .errors import REDOWNLOAD_HINT, CorruptFileError, not_found
from .info import SPLITS, DatasetInfo
from .registry import default_root, register_dataset
from .transforms import CropFlip, adapt_channels, resize_images, scaled_padding

__all__ = ["FAST_PATH_SIZES", "FLIPS", "MEDMNIST_2D", "MEDMNIST_SIZES", "build_medmnist"]

MEDMNIST_2D = (
    "bloodmnist",
    "breastmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
    "pathmnist",
    "pneumoniamnist",
    "retinamnist",
    "tissuemnist",
)
"""The 2D flags of ``medmnist.INFO``."""

MEDMNIST_SIZES = (28, 64, 128, 224)
FAST_PATH_SIZES = (28, 64)
_KEYS = ", ".join(f"{s}_images, {s}_labels" for s in SPLITS)

FLIPS: dict[str, tuple[bool, bool]] = {
    "bloodmnist": (True, True),  # blood cell microscopy: any orientation
    "breastmnist": (True, False),  # breast ultrasound
    "chestmnist": (False, False),  # chest X-ray: the heart is on the left
    "dermamnist": (True, True),  # dermatoscopy: any orientation
    "octmnist": (True, False),  # retinal OCT B-scans: left/right eyes mirror
    "organamnist": (False, False),  # abdominal CT: the liver is on the right
    "organcmnist": (False, False),
    "organsmnist": (False, False),
    "pathmnist": (True, True),  # histology: any orientation
    "pneumoniamnist": (False, False),  # chest X-ray
    "retinamnist": (True, False),  # fundus photographs: left/right eyes mirror
    "tissuemnist": (True, True),  # kidney cortex microscopy
}
"""(horizontal, vertical) flips of each dataset's training augmentation."""


def _info(flag: str) -> dict[str, Any]:
    info = import_optional(
        "medmnist.info", package="medmnist", extra="medical", purpose=f"{flag}", quiet=True
    )
    return info.INFO[flag]


_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error)


def _corrupt(path: Path, err: Exception) -> CorruptFileError:
    return CorruptFileError(
        path,
        f"cannot be read as a MedMNIST .npz, it may be truncated or corrupt "
        f"({type(err).__name__}: {err}); {REDOWNLOAD_HINT}",
    )


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"{split}_images", f"{split}_labels")
    # The file is opened here, not by np.load, so that it is closed whatever fails.
    with open(path, "rb") as file:
        try:
            npz = np.load(file)
        except _READ_ERRORS as err:
            raise _corrupt(path, err) from err
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CorruptFileError(path, "holds a single array, not a MedMNIST .npz archive")
        with npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                held = ", ".join(npz.files) or "nothing"
                raise CorruptFileError(
                    path,
                    f"lacks {', '.join(missing)} (holds {held}); a MedMNIST file has "
                    f"{_KEYS}: {REDOWNLOAD_HINT}",
                )
            try:
                return npz[keys[0]], npz[keys[1]]
            except _READ_ERRORS as err:
                raise _corrupt(path, err) from err


def _check(
    path: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    info: dict[str, Any],
    size: int,
    multi_label: bool,
) -> None:
    chans = info["n_channels"]
    shape = (size, size) if chans == 1 else (size, size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != shape:
        raise CorruptFileError(
            path,
            f"{split}_images must be N×{'×'.join(map(str, shape))} uint8, "
            f"got {images.shape} {images.dtype}",
        )
    width = len(info["label"]) if multi_label else 1
    if labels.shape != (len(images), width):
        raise CorruptFileError(
            path,
            f"{split}_labels must be {len(images)}×{width} for {len(images)} images, "
            f"got {labels.shape}",
        )
    top = 1 if multi_label else len(info["label"]) - 1
    if labels.size and (labels.min() < 0 or labels.max() > top):
        raise CorruptFileError(path, f"{split}_labels must lie in 0..{top}")


@register_dataset(*MEDMNIST_2D)
def build_medmnist(
    *,
    name: str,
    root: Path | None,
    split: str,
    download: bool,
    image_size: int | None,
    seed: int = 0,
    in_chans: int | None,
    augment: bool,
    on_bad_image: str = "raise",
    size: int | None = None,
) -> TensorImageDataset:
    """MedMNIST 2D dataset ``name`` (a flag), ``split``, from the file of ``size`` px."""
    if size is None:
        size = image_size if image_size in MEDMNIST_SIZES else 28
    if size not in MEDMNIST_SIZES:
        raise ValueError(f"MedMNIST size must be one of {MEDMNIST_SIZES}, got {size}")
    info = _info(name)
    suffix = "" if size == 28 else f"_{size}"
    root = root if root is not None else default_root()
    path = root / f"{name}{suffix}.npz"
    if download and not path.is_file():
        fetch(
            info[f"url{suffix}"],
            root,
            path.name,
            info[f"MD5{suffix}"],
            dataset=path.name,
            manual=f"put it at {path}",
        )
    if not path.is_file():
        layout = f"{root}/\n    {path.name}    (arrays {_KEYS})"
        raise not_found(f"{name}: {path} not found", layout)

    multi_label = info["task"].startswith("multi-label")
    images, labels = _read_npz(path, split)
    _check(path, split, images, labels, info, size, multi_label)
    tensor = torch.from_numpy(images)
    tensor = tensor.unsqueeze(1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)
    out_size = image_size or size
    chans = in_chans or info["n_channels"]
    targets = torch.from_numpy(labels if multi_label else labels[:, 0].astype(np.int64))
    names = tuple(info["label"][str(k)] for k in range(len(info["label"])))
    dataset_info = DatasetInfo(
        name=name,
        task="multi-label" if multi_label else "classification",
        num_classes=len(names),
        in_chans=chans,
        image_size=out_size,
        mean=(0.5,) * chans,
        std=(0.5,) * chans,
        class_names=names,
    )
    hflip, vflip = FLIPS[name]
    return TensorImageDataset(
        adapt_channels(resize_images(tensor, out_size), chans),
        targets,
        dataset_info,
        split,
        CropFlip(padding=scaled_padding(out_size, 1 / 16), hflip=hflip, vflip=vflip),
        augment,
        fast_path=size in FAST_PATH_SIZES and out_size <= max(FAST_PATH_SIZES),
    )
