"""Loaders shared by several processes: each global batch from one seeded order, cut into
contiguous per-rank slices in training; whole batches dealt round-robin in evaluation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from augmentbn.data import CropFlip, DatasetInfo, TensorImageDataset, build_loader
from augmentbn.data.shard import batch_plan

SIZE = 8


def _dataset(n: int, augment: bool = True) -> TensorImageDataset:
    info = DatasetInfo(
        "toy", "classification", 5, 2, SIZE, (0.5, 0.5), (0.25, 0.25), tuple("abcde")
    )
    images = torch.rand(n, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(n))
    targets = torch.arange(n) % 5
    return TensorImageDataset(images, targets, info, "train", CropFlip(2, hflip=True), augment)


def test_batch_plan_by_hand():
    assert batch_plan(22, 8, train=True, drop_last=False) == [(0, 8), (8, 16), (16, 22)]
    # 22 = 8 + 8 + 6: every batch cut in two contiguous halves.
    assert batch_plan(22, 8, train=True, drop_last=False, rank=0, world_size=2) == [
        (0, 4),
        (8, 12),
        (16, 19),
    ]
    assert batch_plan(22, 8, train=True, drop_last=False, rank=1, world_size=2) == [
        (4, 8),
        (12, 16),
        (19, 22),
    ]
    # A final batch of 3 across 2 ranks: the first rank takes the larger share.
    assert batch_plan(11, 8, train=True, drop_last=False, rank=0, world_size=2)[-1] == (8, 10)
    assert batch_plan(11, 8, train=True, drop_last=False, rank=1, world_size=2)[-1] == (10, 11)
    # A final batch of 1 cannot be shared by 4 ranks: dropped.
    assert batch_plan(17, 8, train=True, drop_last=False, rank=3, world_size=4) == [
        (6, 8),
        (14, 16),
    ]
    # Evaluation: whole batches round-robin.
    assert batch_plan(22, 8, train=False, drop_last=False, rank=1, world_size=2) == [(8, 16)]
    assert batch_plan(22, 8, train=False, drop_last=False, rank=0, world_size=2) == [
        (0, 8),
        (16, 22),
    ]
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank 2 of 2"):
        batch_plan(22, 8, train=True, drop_last=False, rank=2, world_size=2)


def _batches(dataset, batch, *, train, fast, rank=0, world=1, seed=3):
    loader = build_loader(
        dataset,
        batch,
        train=train,
        generator=torch.Generator().manual_seed(seed),
        fast=fast,
        rank=rank,
        world_size=world,
    )
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("world", [2, 3])
def test_training_slices_concatenate_to_the_single_process_batches(fast, world):
    dataset = _dataset(40)  # batches of 12: 12, 12, 12, 4
    whole = _batches(dataset, 12, train=True, fast=fast)
    shares = [
        _batches(dataset, 12, train=True, fast=fast, rank=r, world=world) for r in range(world)
    ]
    assert all(len(s) == len(whole) for s in shares)
    for step, (images, targets) in enumerate(whole):
        joined = torch.cat([shares[r][step][0] for r in range(world)])
        assert torch.equal(joined, images), f"step {step}"
        assert torch.equal(torch.cat([shares[r][step][1] for r in range(world)]), targets)
        sizes = [shares[r][step][0].shape[0] for r in range(world)]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("fast", [True, False])
def test_evaluation_sees_every_image_once_in_its_single_process_batch(fast):
    dataset = _dataset(29, augment=False)
    whole = _batches(dataset, 8, train=False, fast=fast)
    shares = [_batches(dataset, 8, train=False, fast=fast, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shares] == [2, 1, 1]
    dealt = [shares[b % 3][b // 3] for b in range(len(whole))]
    for (x, y), (xs, ys) in zip(whole, dealt):
        assert torch.equal(x, xs) and torch.equal(y, ys)


def test_a_final_batch_smaller_than_the_world_is_dropped():
    dataset = _dataset(26)  # batches of 8: 8, 8, 8, 2
    assert len(_batches(dataset, 8, train=True, fast=True)) == 4
    shares = [_batches(dataset, 8, train=True, fast=True, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]


def test_any_torch_dataset_is_sharded_too():
    data = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    shares = [
        list(
            build_loader(
                data,
                4,
                train=True,
                generator=torch.Generator().manual_seed(0),
                rank=r,
                world_size=2,
            )
        )
        for r in range(2)
    ]
    assert [len(s) for s in shares] == [3, 3]
    seen = torch.cat([t for s in shares for _, t in s])
    assert sorted(seen.tolist()) == list(range(10))
    # Rank 0's first slice and rank 1's follow each other in one seeded permutation.
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert shares[0][0][1].tolist() == order[:2] and shares[1][0][1].tolist() == order[2:4]
