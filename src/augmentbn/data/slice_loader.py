"""Training batches of 2D slices from a :class:`~.volumes.VolumeDataset`, reproducibly.

Each epoch draws, when iteration starts, the order of the volumes and one seed per volume from
one ``torch.Generator``; volume ``i`` gives its ``K`` slices with seed ``s_i``
(:meth:`~.volumes.VolumeDataset.sample`), and the slices, in that order, are cut into batches
of ``batch_size``. With ``K = 4`` and a batch of 4, a batch is one volume's four slices, two
centred on foreground and two on background, as MONAI's ``DataLoader`` with ``batch_size=1``
gives them. Restoring the generator's state repeats an epoch exactly, with or without worker
processes (which only compute the samples; the order and seeds come from the main process).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["SliceLoader"]


class _Samples(Dataset):
    """``dataset`` addressed by ``(volume index, seed)``."""

    def __init__(self, dataset: Any, keys: list[tuple[int, int]]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        return self.dataset.sample(*self.keys[position])


class SliceLoader:
    """Batches ``(images B×C×roi×roi, labels B×1×roi×roi int64)`` on ``device``.

    ``drop_last=None`` drops the final batch only when it would hold a single slice
    (BatchNorm cannot train on one sample). ``len(loader)`` is the number of batches.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        drop_last: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.generator, self.device = generator, torch.device(device)
        self.num_workers = num_workers
        slices = len(dataset) * dataset.num_samples
        self.drop_last = slices % batch_size == 1 if drop_last is None else drop_last
        self.slices = slices

    def __len__(self) -> int:
        if self.drop_last:
            return self.slices // self.batch_size
        return math.ceil(self.slices / self.batch_size)

    def _samples(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator).tolist()
        seeds = torch.randint(2**31 - 1, (n,), generator=self.generator).tolist()
        keys = list(zip(order, seeds))
        if self.num_workers == 0:
            return (self.dataset.sample(i, s) for i, s in keys)
        loader = DataLoader(
            _Samples(self.dataset, keys), batch_size=None, num_workers=self.num_workers
        )
        return iter(loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        images: list[Tensor] = []
        labels: list[Tensor] = []
        held = 0
        emitted = 0
        for image, label in self._samples():
            images.append(image)
            labels.append(label)
            held += len(image)
            while held >= self.batch_size:
                batch_images, batch_labels = torch.cat(images), torch.cat(labels)
                yield self._to_device(
                    batch_images[: self.batch_size], batch_labels[: self.batch_size]
                )
                emitted += 1
                images, labels = (
                    [batch_images[self.batch_size :]],
                    [batch_labels[self.batch_size :]],
                )
                held -= self.batch_size
        if held and emitted < len(self):
            yield self._to_device(torch.cat(images), torch.cat(labels))

    def _to_device(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        blocking = self.device.type != "cuda"
        return (
            images.to(self.device, non_blocking=not blocking),
            labels.to(self.device, non_blocking=not blocking),
        )
