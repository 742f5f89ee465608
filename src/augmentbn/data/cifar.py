"""``cifar10`` and ``cifar100`` (Krizhevsky 2009), in torchvision's on-disk format.

Files (as torchvision's ``CIFAR10``/``CIFAR100`` download and unpack them)::

    root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    root/cifar-100-python/{train, test, meta}

each a Python pickle: ``data`` (``N×3072`` uint8, channel-major 32×32), ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100), and in the meta file ``label_names`` / ``fine_label_names``. They
are read with :mod:`.safe_pickle`, which builds plain data and NumPy arrays and refuses anything
else, so a planted file cannot run code.
The address, archive name and checksum are torchvision's.

``val`` is ``val_fraction`` (default 10%: 5,000 images) of the training batches, stratified and
seeded by ``seed``; ``train`` is the rest. With ``val_fraction=0`` ``train`` is all 50,000 images
and there is no ``val``. ``test`` is the official test batch. Normalization: the training set's
per-channel mean and std. Augmentation: random crop with padding 4 (``image_size / 8``) and
horizontal flip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._optional import import_optional
from .base import TensorImageDataset
from .download import download as fetch
from .errors import REDOWNLOAD_HINT, CorruptFileError, not_found
from .info import DatasetInfo
from .registry import default_root, register_dataset
from .safe_pickle import load_plain
from .splits import stratified_split
from .transforms import CropFlip, resize_images, scaled_padding

__all__ = ["CIFAR_STATS", "build_cifar"]

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""Per-channel mean and (population) std of the 50,000 training images, in ``[0, 1]``."""

_CLASSES = {"cifar10": 10, "cifar100": 100}
_LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}


def _torchvision_class(name: str) -> Any:
    datasets = import_optional(
        "torchvision.datasets", package="torchvision", extra="vision", purpose=f"{name}"
    )
    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def _layout(root: Path, cls: Any) -> str:
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return f"{root}/\n    {cls.base_folder}/\n" + "".join(f"        {f}\n" for f in names)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = load_plain(f, encoding="latin1")
    except Exception as err:
        raise CorruptFileError(
            path,
            f"cannot be read as a CIFAR python pickle, it may be truncated or corrupt "
            f"({type(err).__name__}: {err}); {REDOWNLOAD_HINT}",
        ) from err
    if not isinstance(entry, dict):
        raise CorruptFileError(path, f"holds a {type(entry).__name__}, not a CIFAR dict")
    return entry


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    if "data" not in entry or label_key not in entry:
        raise CorruptFileError(
            path, f"lacks the keys 'data' and {label_key!r} of a CIFAR batch (has {sorted(entry)})"
        )
    data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptFileError(path, f"'data' must be N×3072 uint8, got {data.shape} {data.dtype}")
    if labels.shape != (len(data),):
        raise CorruptFileError(path, f"{len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptFileError(path, f"labels must lie in 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_class_names(path: Path, key: str, num_classes: int) -> tuple[str, ...]:
    entry = _unpickle(path)
    names = entry.get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise CorruptFileError(path, f"{key!r} must list {num_classes} class names")
    return tuple(str(n) for n in names)


@register_dataset("cifar10", "cifar100")
def build_cifar(
    *,
    name: str,
    root: Path | None,
    split: str,
    download: bool,
    image_size: int | None,
    seed: int,
    in_chans: int | None,
    augment: bool,
    on_bad_image: str = "raise",
    val_fraction: float = 0.1,
) -> TensorImageDataset:
    """CIFAR-10 or CIFAR-100 ``split``; ``val_fraction`` of the training set becomes ``val``."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if in_chans not in (None, 3):
        raise ValueError(f"{name} images are in color: in_chans must be 3 (or None)")
    if split == "val" and val_fraction == 0:
        raise ValueError(f"{name} has no val split with val_fraction=0")
    cls = _torchvision_class(name)
    root = root if root is not None else default_root()
    folder = root / cls.base_folder
    batches = [f for f, _ in (cls.test_list if split == "test" else cls.train_list)]
    needed = [folder / f for f in [*batches, cls.meta["filename"]]]
    if download and not all(p.is_file() for p in needed):
        fetch(
            cls.url,
            root,
            cls.filename,
            cls.tgz_md5,
            dataset=name,
            extract=cls.base_folder,
            manual=f"unpack it in {root} (giving {folder}/)",
        )
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise not_found(f"{name}: {', '.join(missing)} not found in {folder}", _layout(root, cls))

    num_classes = _CLASSES[name]
    class_names = _read_class_names(folder / cls.meta["filename"], cls.meta["key"], num_classes)
    parts = [_read_batch(folder / f, _LABEL_KEYS[name], num_classes) for f in batches]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if split != "test" and val_fraction > 0:
        train_idx, val_idx = stratified_split(labels, (1 - val_fraction, val_fraction), seed)
        keep = train_idx if split == "train" else val_idx
        images, labels = images[keep], labels[keep]

    size = image_size or 32
    mean, std = CIFAR_STATS[name]
    info = DatasetInfo(name, "classification", num_classes, 3, size, mean, std, class_names)
    return TensorImageDataset(
        resize_images(torch.from_numpy(images), size),
        torch.from_numpy(labels),
        info,
        split,
        CropFlip(padding=scaled_padding(size, 1 / 8), hflip=True),
        augment,
    )
