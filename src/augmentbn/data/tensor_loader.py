"""The batch-tensor fast path: a whole dataset as one tensor on the device, augmented by the batch.

As in airbench (Keller Jordan's fast CIFAR-10 training): no worker processes, no per-image Python.
The dataset is padded, kept once per flip combination (:func:`~.batch.flip_variants`) and (when
it fits, see ``float_store_max_bytes``) normalized, once; an epoch then draws its permutation,
crop offsets and flips from the generator in one go, and each chunk of batches is one gather
(:func:`~.batch.crop_flip`). Batches are views of that chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import crop_flip, flip_variants, sample_crop_flip
from .shard import batch_plan
from .transforms import CropFlip

__all__ = ["FLOAT_STORE_MAX_BYTES", "TensorBatchLoader"]

FLOAT_STORE_MAX_BYTES = 512 * 2**20
"""A ``uint8`` dataset is kept as normalized ``float32`` when that takes at most this many bytes;
larger ones stay ``uint8`` and each chunk is converted on the fly."""

CHUNK_ELEMENTS = 2**22
"""Batches are produced in chunks of about this many values (16 MiB of float32)."""


CACHE_ENTRIES = 2
"""Prepared tensors a cache keeps (a training and an evaluation one)."""


class _Store(NamedTuple):
    images: Tensor  # N×C×S×S, or V×N×C×(S+2p)×(S+2p) flip variants when augmenting
    affine: tuple[Tensor, Tensor] | None  # (scale, shift) when ``images`` is still uint8
    targets: Tensor


def _prepare(
    images: Tensor,
    targets: Tensor,
    augmentation: CropFlip | None,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    float_store_max_bytes: int,
) -> _Store:
    """Move to ``device``, pad and flip (when augmenting) and normalize (or keep ``uint8``)."""
    x = images.to(device)
    if augmentation is not None:
        pad = augmentation.padding
        x = flip_variants(F.pad(x, (pad, pad, pad, pad)), augmentation)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    targets = targets.to(device)
    if x.is_floating_point() or x.numel() * 4 <= float_store_max_bytes:
        # The same operations as load() + torchvision's Normalize: identical values.
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return _Store((x - mean_t) / std_t, None, targets)
    return _Store(x, (1 / (255 * std_t), -mean_t / std_t), targets)


class TensorBatchLoader:
    """Iterate over ``(images, targets)`` batches of an in-memory dataset, on ``device``.

    Args:
        images: ``N×C×S×S``, ``uint8`` (0..255) or float in ``[0, 1]``.
        targets: ``(N,)`` or ``(N, K)``.
        batch_size: images per batch.
        shuffle: draw a new order every epoch (from ``generator``).
        augmentation: the crop/flip recipe, or ``None`` for none.
        mean, std: per-channel normalization of the ``[0, 1]`` images.
        device: where the data lives and batches are made.
        generator: the source of all randomness (on the CPU or ``device``); each epoch draws from
            it once, when iteration starts, so saving and restoring its state repeats an epoch.
        drop_last: drop the final incomplete batch.
        cache: where to keep the prepared (padded, normalized, moved) tensor for the next loader
            over the same images, e.g. the next epoch's (the dataset's ``fast_cache``).
        rank, world_size: this process's share of the epoch when ``world_size`` processes
            share it (:func:`~.shard.batch_plan`; ``shuffle`` cuts every batch, else whole
            batches are dealt round-robin). Every process draws the epoch's order, crops and
            flips for all images, so the images of a batch do not depend on the world size.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        augmentation: CropFlip | None,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        float_store_max_bytes: int = FLOAT_STORE_MAX_BYTES,
        cache: dict[Any, _Store] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        if augmentation is not None and augmentation.is_identity:
            augmentation = None
        self.augmentation = augmentation
        self.device = torch.device(device)
        self.generator = generator
        self.drop_last = drop_last
        self.image_size = images.shape[-1]

        self._count = len(images)
        key = (
            str(self.device),
            self.augmentation,
            tuple(mean),
            tuple(std),
            float_store_max_bytes,
            images.data_ptr(),
            images._version,
            targets.data_ptr(),
            targets._version,
        )
        store = cache.get(key) if cache is not None else None
        if store is None:
            store = _prepare(
                images, targets, self.augmentation, mean, std, self.device, float_store_max_bytes
            )
            if cache is not None:
                while len(cache) >= CACHE_ENTRIES:
                    cache.pop(next(iter(cache)))
                cache[key] = store
        self._store, self._affine, self._targets = store

    def _plan(self) -> list[tuple[int, int]]:
        return batch_plan(
            self._count,
            self.batch_size,
            train=self.shuffle,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, size, batch = self._count, self.image_size, self.batch_size
        gen = self.generator
        order = params = None
        if self.shuffle:
            gen_device = gen.device if gen is not None else None
            order = torch.randperm(n, generator=gen, device=gen_device).to(self.device)
        if self.augmentation is not None:
            params = sample_crop_flip(n, self.augmentation, gen).to(self.device)
        if order is None and (params is not None or self.world_size > 1):
            order = torch.arange(n, device=self.device)
        per_image = self._store.shape[-3] * size * size
        chunk = batch * max(1, CHUNK_ELEMENTS // (batch * per_image))
        for group in _chunks(self._plan(), chunk):
            start, stop = group[0][0], group[-1][1]
            if order is None:  # one process: its batches are contiguous
                # Copies, so that a caller writing into a batch cannot change the dataset.
                x, y = self._store[start:stop], self._targets[start:stop].clone()
                x = x.clone() if self._affine is None else x
            else:
                positions = _positions(group, self.device)
                index = order[positions]
                y = self._targets[index]
                if params is None:
                    x = self._store[index]
                else:
                    x = crop_flip(self._store, index, params.select(positions), size)
            if self._affine is not None:
                scale, shift = self._affine
                x = torch.addcmul(shift, x.float(), scale)
            offset = 0
            for lo, hi in group:
                yield x[offset : offset + hi - lo], y[offset : offset + hi - lo]
                offset += hi - lo


def _chunks(plan: list[tuple[int, int]], limit: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive batches of ``plan`` in groups of at most ``limit`` images (at least one)."""
    group: list[tuple[int, int]] = []
    total = 0
    for lo, hi in plan:
        if group and total + hi - lo > limit:
            yield group
            group, total = [], 0
        group.append((lo, hi))
        total += hi - lo
    if group:
        yield group


def _positions(group: list[tuple[int, int]], device: torch.device) -> slice | Tensor:
    """The positions of ``group``'s batches: a slice where they are contiguous."""
    if all(a[1] == b[0] for a, b in itertools.pairwise(group)):
        return slice(group[0][0], group[-1][1])
    return torch.cat([torch.arange(lo, hi, device=device) for lo, hi in group])
