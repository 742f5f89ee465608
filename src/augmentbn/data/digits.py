"""``digits``: scikit-learn's bundled 8×8 handwritten digits (UCI), the offline default.

1,797 grayscale images, values 0..16 (scaled to ``[0, 1]``), 10 classes. Split per class into
60% train, 20% val, 20% test (:func:`~.splits.stratified_split`, seeded by ``seed``): 1,078 /
362 / 357 images. ``image_size`` upscales bilinearly (e.g. to 32 for the CIFAR networks).
Normalization: the per-channel mean and std of the training split at the final size.
Augmentation: random crop with padding ``image_size / 8`` (1 px at 8, 4 px at 32), no flip
(digits are not mirror-symmetric).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._optional import import_optional
from .base import TensorImageDataset
from .info import SPLITS, DatasetInfo
from .registry import register_dataset
from .splits import stratified_split
from .transforms import CropFlip, adapt_channels, channel_stats, resize_images, scaled_padding

__all__ = ["DIGITS_FRACTIONS", "build_digits"]

DIGITS_FRACTIONS = (0.6, 0.2, 0.2)
"""Train, val and test shares of every class."""


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    datasets = import_optional(
        "sklearn.datasets", package="scikit-learn", extra="train", purpose="The digits dataset"
    )
    bunch = datasets.load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    images.flags.writeable = False
    return images, bunch.target.astype(np.int64)


@register_dataset("digits")
def build_digits(
    *,
    name: str,
    split: str,
    image_size: int | None,
    seed: int,
    in_chans: int | None,
    augment: bool,
    root: object = None,
    download: bool = False,
    on_bad_image: str = "raise",
) -> TensorImageDataset:
    """The digits split ``split``; ``root``, ``download`` and ``on_bad_image`` play no part."""
    raw, labels = _load()
    size = image_size or raw.shape[-1]
    images = resize_images(torch.from_numpy(raw.copy()), size)
    parts = stratified_split(labels, DIGITS_FRACTIONS, seed)
    mean, std = channel_stats(images[torch.from_numpy(parts[0])])
    chans = in_chans or 1
    index = torch.from_numpy(parts[SPLITS.index(split)])
    info = DatasetInfo(
        name=name,
        task="classification",
        num_classes=10,
        in_chans=chans,
        image_size=size,
        mean=mean * chans,
        std=std * chans,
        class_names=tuple(str(d) for d in range(10)),
    )
    return TensorImageDataset(
        adapt_channels(images[index], chans),
        torch.from_numpy(labels[parts[SPLITS.index(split)]]),
        info,
        split,
        CropFlip(padding=scaled_padding(size, 1 / 8)),
        augment,
    )
