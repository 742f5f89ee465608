"""``build_loader``: batches on the device, from the fast path or a torch ``DataLoader``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import ImageDataset
from .shard import batch_plan, check_shard
from .tensor_loader import TensorBatchLoader

__all__ = ["FAST_PATH_MAX_BYTES", "DeviceLoader", "build_loader"]

FAST_PATH_MAX_BYTES = 4 * 2**30
"""On the CPU, the fast path is the default for datasets whose padded tensor takes at most this
many bytes; on a GPU, at most half of its free memory."""


class _SeededBatchSampler(Sampler[list[tuple[int, int | None]]]):
    """Batches of ``(index, seed)``: each epoch draws its order and one augmentation seed per
    image from ``generator`` when iteration starts (``seed`` is ``None`` without augmentation).
    With ``world_size`` processes, this process's share of each batch (:mod:`.shard`); the
    order and seeds are drawn for every image, so they do not depend on the world size."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        drop_last: bool,
        generator: torch.Generator | None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.generator = generator
        self.rank, self.world_size = rank, world_size

    def _plan(self) -> list[tuple[int, int]]:
        return batch_plan(
            self.n,
            self.batch_size,
            train=self.shuffle,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        order = (
            torch.randperm(self.n, generator=self.generator).tolist()
            if self.shuffle
            else range(self.n)
        )
        seeds: list[int | None] = (
            torch.randint(2**62, (self.n,), generator=self.generator).tolist()
            if self.augment
            else [None] * self.n
        )
        for lo, hi in self._plan():
            yield [(order[k], seeds[k]) for k in range(lo, hi)]


class _SeededItems(Dataset):
    """``dataset`` addressed by ``(index, seed)``: the image's torchvision augmentation runs on
    torch's global generator seeded with ``seed`` (its state is restored afterwards), so the
    result does not depend on worker processes or on other users of the global generator."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[Tensor, Any]:
        index, seed = key
        image, target = self.dataset.load(index)
        if seed is None:
            return self.dataset.transform(image, augment=False), target
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset.transform(image, augment=True), target


class _Unseeded(Dataset):
    """Any dataset addressed by ``(index, seed)`` (the seed unused)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int | None]) -> Any:
        return self.dataset[key[0]]


class DeviceLoader:
    """A ``DataLoader`` whose batches are moved to ``device``."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        blocking = self.device.type != "cuda"
        for images, targets in self.loader:
            yield (
                images.to(self.device, non_blocking=not blocking),
                targets.to(self.device, non_blocking=not blocking),
            )


def _fast_path_fits(nbytes: int, device: torch.device) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    return nbytes <= FAST_PATH_MAX_BYTES


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    fast: bool | None = None,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches ``(images, targets)`` of ``dataset``, already on ``device``.

    ``train=True`` shuffles and, when ``dataset.augment`` is true, augments; ``train=False``
    keeps the order and never augments. All randomness (order, crops, flips) comes from
    ``generator``, drawn once per epoch when iteration starts: restoring ``generator``'s state
    repeats an epoch exactly. Without a generator a training loader makes one, seeded from torch's
    global generator.

    Args:
        fast: ``None`` uses the batch-tensor fast path (:class:`TensorBatchLoader`) when the
            dataset supports it and it fits in memory, else a torch ``DataLoader`` with
            torchvision's per-sample transforms; ``True`` insists on the fast path, ``False``
            refuses it.
        drop_last: ``None`` drops the final batch only in training and only when it would hold
            a single image (BatchNorm cannot train on one sample).
        num_workers: worker processes of the ``DataLoader`` path (ignored by the fast path).
        rank, world_size: this process's share when ``world_size`` processes share the epoch
            (:mod:`augmentbn.data.shard`): in training ``batch_size`` is the global batch and
            each process gets its contiguous slice of every batch (a final batch with fewer
            images than processes is dropped); in evaluation whole batches are dealt
            round-robin, so that every image is seen once. Every process must be given the
            same generator state.

    ``len(loader)`` is the number of batches (this process's).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_shard(rank, world_size)
    shard = {"rank": rank, "world_size": world_size}
    device = torch.device(device)
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last is None:
        drop_last = train and n % batch_size == 1
    if generator is None and train:
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))

    if not isinstance(dataset, ImageDataset):
        if fast:
            raise ValueError("fast=True needs a dataset from augmentbn.data.build_dataset")
        if world_size > 1:
            sampler = _SeededBatchSampler(
                n,
                batch_size,
                shuffle=train,
                augment=False,
                drop_last=drop_last,
                generator=generator,
                **shard,
            )
            loader = DataLoader(
                _Unseeded(dataset),
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            return DeviceLoader(loader, device)
        plain = DataLoader(
            dataset,
            batch_size,
            shuffle=train,
            generator=generator,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        return DeviceLoader(plain, device)

    augment = train and dataset.augment
    tensors = dataset.fast_tensors() if fast is not False else None
    if fast and tensors is None:
        raise ValueError(
            f"{dataset.info.name!r} ({dataset.split}, {dataset.info.image_size} px) has no "
            "batch-tensor fast path; use fast=None or fast=False"
        )
    if tensors is not None:
        images, targets = tensors
        pad = dataset.augmentation.padding if augment else 0
        count, chans, height, width = images.shape
        nbytes = images.element_size() * count * chans * (height + 2 * pad) * (width + 2 * pad)
        nbytes *= dataset.augmentation.variants if augment else 1
        if fast or _fast_path_fits(nbytes, device):
            return TensorBatchLoader(
                images,
                targets,
                batch_size=batch_size,
                shuffle=train,
                augmentation=dataset.augmentation if augment else None,
                mean=dataset.info.mean,
                std=dataset.info.std,
                device=device,
                generator=generator,
                drop_last=drop_last,
                cache=getattr(dataset, "fast_cache", None),
                **shard,
            )

    sampler = _SeededBatchSampler(
        n,
        batch_size,
        shuffle=train,
        augment=augment,
        drop_last=drop_last,
        generator=generator,
        **shard,
    )
    plain = DataLoader(
        _SeededItems(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    return DeviceLoader(plain, device)
