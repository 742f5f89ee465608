"""Augmentation recipes and whole-tensor image operations.

Every augmentation here is a :class:`CropFlip`: pad by ``padding`` zero pixels on each side, take
a random ``size × size`` crop (offsets uniform on ``0..2·padding``), then flip left-right and/or
upside-down, each with probability 1/2. That is the standard CIFAR recipe (He et al. 2016:
padding 4 on 32 px, horizontal flip). The per-sample pipeline uses torchvision's
``RandomCrop``/``RandomHorizontalFlip``/``RandomVerticalFlip``; the batch-tensor fast path
(:mod:`.batch`) draws the same offsets and flips for a whole batch at once.

Padding is in the ``[0, 1]`` pixel scale (black), before normalization, as with torchvision's
transforms applied before ``Normalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._optional import import_optional

__all__ = [
    "CropFlip",
    "adapt_channels",
    "build_eval_transform",
    "build_train_transform",
    "channel_stats",
    "resize_images",
    "scaled_padding",
]

# ITU-R BT.601 luma weights, as PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the padded image plus random flips (probability 1/2 each)."""

    padding: int = 0
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")

    @property
    def variants(self) -> int:
        """How many flip combinations the recipe produces: 1, 2 or 4."""
        return (2 if self.hflip else 1) * (2 if self.vflip else 1)

    @property
    def is_identity(self) -> bool:
        """True when the recipe never changes an image."""
        return self.padding == 0 and not self.hflip and not self.vflip


def scaled_padding(image_size: int, fraction: float) -> int:
    """Crop padding as a fraction of the image side, e.g. ``1/8`` gives CIFAR's 4 px at 32 px."""
    return round(image_size * fraction)


def _v2():
    return import_optional(
        "torchvision.transforms.v2",
        package="torchvision",
        extra="vision",
        purpose="The per-sample augmentation pipeline",
    )


def build_train_transform(
    spec: CropFlip, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Tensor], Tensor]:
    """torchvision pipeline for a ``C×H×W`` float image in ``[0, 1]``: ``spec``, then normalize."""
    v2 = _v2()
    steps = []
    if spec.padding:
        steps.append(v2.RandomCrop(image_size, padding=spec.padding))
    if spec.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.vflip:
        steps.append(v2.RandomVerticalFlip())
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """torchvision pipeline for evaluation: normalization only."""
    return _v2().Normalize(list(mean), list(std))


def adapt_channels(images: Tensor, in_chans: int) -> Tensor:
    """Give images (channels at dim -3) ``in_chans`` channels.

    One channel to ``k``: repeated (a view, no copy). Three to one: BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` (rounded for ``uint8``).
    """
    chans = images.shape[-3]
    if in_chans == chans:
        return images
    if chans == 1:
        return images.expand(*images.shape[:-3], in_chans, *images.shape[-2:])
    if chans == 3 and in_chans == 1:
        weights = torch.tensor(_LUMA).view(3, 1, 1)
        gray = (images.float() * weights).sum(dim=-3, keepdim=True)
        if images.dtype == torch.uint8:
            return gray.round_().clamp_(0, 255).to(torch.uint8)
        return gray
    raise ValueError(f"cannot turn {chans}-channel images into {in_chans} channels (use 1 or 3)")


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize ``N×C×H×W`` images to ``size × size``: bilinear, antialiased when shrinking.

    ``uint8`` stays ``uint8`` (rounded). Works in chunks of ``chunk`` images to bound memory.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    shrink = size < max(images.shape[-2:])
    out = []
    for part in images.split(chunk):
        x = F.interpolate(
            part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
        out.append(x.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else x)
    return torch.cat(out)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (biased) standard deviation of ``N×C×H×W`` images in ``[0, 1]``."""
    x = images.double().transpose(0, 1).flatten(1)
    if images.dtype == torch.uint8:
        x = x / 255.0
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).tolist())
