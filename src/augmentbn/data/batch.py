"""Crop and flip a whole batch at once: the vectorized twin of :class:`~.transforms.CropFlip`.

With ``P`` an image zero-padded by ``p`` (side ``S + 2p``) and offsets ``(t, l)``, torchvision's
``RandomCrop(S, padding=p)`` followed by the flips gives::

    out[c, i, j] = P[c, t + i', l + j'],   i' = S-1-i if vflip else i,   j' = S-1-j if hflip else j

Flipping the crop is cropping the flipped image at the mirrored offset: with ``P_h`` the
left-right mirror of ``P``, ``P[c, r, l + S-1-j] = P_h[c, r, (2p - l) + j]`` (likewise rows).
So the padded dataset is kept once per flip combination the recipe uses (1, 2 or 4 copies), and
a batch is one gather of ``S × S`` windows (``Tensor.unfold`` views, no copy) indexed by
``(flip variant, image, top, left)``. Offsets are uniform on ``0..2p`` and each flip has
probability 1/2, as in torchvision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .transforms import CropFlip

__all__ = ["CropFlipParams", "crop_flip", "flip_variants", "sample_crop_flip"]


class CropFlipParams(NamedTuple):
    """Per-image crop offsets (rows, columns) and flips; ``None`` where the recipe has none."""

    top: Tensor
    left: Tensor
    hflip: Tensor | None
    vflip: Tensor | None

    def to(self, device: torch.device) -> CropFlipParams:
        return CropFlipParams(*(None if t is None else t.to(device) for t in self))

    def select(self, key: slice | Tensor) -> CropFlipParams:
        """The parameters of the images ``key`` selects."""
        return CropFlipParams(*(None if t is None else t[key] for t in self))


def sample_crop_flip(
    n: int, spec: CropFlip, generator: torch.Generator | None = None
) -> CropFlipParams:
    """Draw the crop offsets and flips of ``n`` images from ``generator`` (on its device)."""
    device = generator.device if generator is not None else None
    span = 2 * spec.padding + 1
    top = torch.randint(span, (n,), generator=generator, device=device)
    left = torch.randint(span, (n,), generator=generator, device=device)
    hflip = torch.rand(n, generator=generator, device=device) < 0.5 if spec.hflip else None
    vflip = torch.rand(n, generator=generator, device=device) < 0.5 if spec.vflip else None
    return CropFlipParams(top, left, hflip, vflip)


def flip_variants(padded: Tensor, spec: CropFlip) -> Tensor:
    """``V×M×C×H×W``: the padded images ``M×C×H×W``, then (with ``hflip``) their left-right
    mirrors, then (with ``vflip``) the upside-down versions of those; ``V`` is 1, 2 or 4."""
    variants = [padded]
    if spec.hflip:
        variants.append(padded.flip(-1))
    if spec.vflip:
        variants += [v.flip(-2) for v in variants]
    return torch.stack(variants)


def crop_flip(variants: Tensor, index: Tensor, params: CropFlipParams, size: int) -> Tensor:
    """Images ``index`` of :func:`flip_variants` output, cropped to ``size`` and flipped by
    ``params``: a ``B×C×size×size`` tensor of ``variants``' dtype."""
    span = variants.shape[-1] - size  # 2p
    top, left = params.top, params.left
    variant = torch.zeros_like(index)
    if params.hflip is not None:
        variant = variant + params.hflip
        left = torch.where(params.hflip, span - left, left)
    if params.vflip is not None:
        variant = variant + params.vflip * (2 if params.hflip is not None else 1)
        top = torch.where(params.vflip, span - top, top)
    windows = variants.unfold(3, size, 1).unfold(4, size, 1)  # V×M×C×(2p+1)×(2p+1)×S×S
    return windows[variant, index, :, top, left]
