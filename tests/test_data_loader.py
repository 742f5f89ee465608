"""build_loader: the batch-tensor fast path against torchvision's per-sample transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import TensorDataset
from torchvision.transforms.v2 import functional as TF

from augmentbn.data import (
    CropFlip,
    CropFlipParams,
    DatasetInfo,
    TensorBatchLoader,
    TensorImageDataset,
    build_loader,
    crop_flip,
    flip_variants,
)
from augmentbn.data.loader import DeviceLoader

SIZE, PAD = 8, 2


def _info(chans: int = 2, size: int = SIZE, task: str = "classification", classes: int = 3):
    return DatasetInfo(
        "toy",
        task,
        classes,
        chans,
        size,
        (0.0,) * chans,
        (1.0,) * chans,
        tuple(map(str, range(classes))),
    )


def _coordinate_image() -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1: a crop tells its offsets and flips."""
    r = torch.arange(1, SIZE + 1, dtype=torch.float32)
    return torch.stack([r[:, None].expand(SIZE, SIZE), r[None, :].expand(SIZE, SIZE)])


def _decode(out: torch.Tensor, pad: int) -> tuple[int, int, bool, bool]:
    """(top, left, hflip, vflip) of a crop of the padded coordinate image."""
    result = []
    for axis_values in (out[0, :, SIZE // 2], out[1, SIZE // 2, :]):
        inside = torch.nonzero(axis_values).squeeze(1)
        i0, v0 = int(inside[0]), int(axis_values[inside[0]])
        flipped = bool(axis_values[inside[1]] < v0)
        # unflipped: v = offset + i - pad + 1; flipped: v = offset + SIZE - 1 - i - pad + 1
        offset = v0 - 1 + pad - (SIZE - 1 - i0 if flipped else i0)
        result.append((offset, flipped))
    (top, vflip), (left, hflip) = result
    return top, left, hflip, vflip


def _copies(n: int, spec: CropFlip) -> TensorImageDataset:
    images = _coordinate_image().expand(n, 2, SIZE, SIZE)
    return TensorImageDataset(images, torch.zeros(n), _info(), "train", spec, True)


@pytest.mark.parametrize(
    "spec", [CropFlip(PAD, hflip=True, vflip=True), CropFlip(PAD, hflip=True), CropFlip(PAD)]
)
def test_crop_flip_matches_torchvision_functional_exactly(spec):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, SIZE, SIZE, generator=gen)
    variants = flip_variants(torch.nn.functional.pad(images, (PAD,) * 4), spec)
    assert variants.shape == (spec.variants, 6, 3, SIZE + 2 * PAD, SIZE + 2 * PAD)
    top = torch.tensor([0, 4, 2, 1, 3, 0])
    left = torch.tensor([4, 0, 2, 3, 1, 0])
    hflip = torch.tensor([False, True, True, False, True, False]) if spec.hflip else None
    vflip = torch.tensor([True, False, True, False, True, False]) if spec.vflip else None
    index = torch.tensor([5, 0, 3, 1, 2, 4])
    out = crop_flip(variants, index, CropFlipParams(top, left, hflip, vflip), SIZE)
    assert out.shape == (6, 3, SIZE, SIZE)
    for b, i in enumerate(index.tolist()):
        ref = TF.crop(TF.pad(images[i], [PAD]), int(top[b]), int(left[b]), SIZE, SIZE)
        ref = TF.horizontal_flip(ref) if hflip is not None and hflip[b] else ref
        ref = TF.vertical_flip(ref) if vflip is not None and vflip[b] else ref
        assert torch.equal(out[b], ref)


@pytest.mark.parametrize(
    "spec", [CropFlip(PAD, hflip=True), CropFlip(1, vflip=True), CropFlip(1, True, True)]
)
def test_fast_path_draws_the_torchvision_distribution(spec):
    n = 3000
    dataset = _copies(n, spec)
    torch.manual_seed(0)
    reference = [
        _decode(dataset.transform(dataset.load(0)[0], augment=True), spec.padding) for _ in range(n)
    ]
    loader = build_loader(
        dataset, 500, train=True, fast=True, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(loader, TensorBatchLoader)
    fast = [_decode(x, spec.padding) for batch, _ in loader for x in batch]
    span = 2 * spec.padding + 1
    for draws in (reference, fast):
        top, left, hflip, vflip = map(np.array, zip(*draws, strict=True))
        for offsets in (top, left):  # uniform on 0..2p
            assert stats.chisquare(np.bincount(offsets, minlength=span)).pvalue > 1e-3
        assert hflip.any() == spec.hflip and vflip.any() == spec.vflip
        for flips in (hflip, vflip):
            if flips.any():
                assert stats.binomtest(int(flips.sum()), n, 0.5).pvalue > 1e-3
    # the two joint distributions of (top, left, hflip, vflip) agree
    cells = sorted(set(reference) | set(fast))
    table = np.array([[draws.count(c) for c in cells] for draws in (reference, fast)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _toy_uint8(n: int = 23, classes: int = 3) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    info = DatasetInfo(
        "toy",
        "classification",
        classes,
        3,
        SIZE,
        (0.4, 0.5, 0.6),
        (0.2, 0.25, 0.3),
        tuple(map(str, range(classes))),
    )
    labels = torch.arange(n) % classes
    return TensorImageDataset(images, labels, info, "train", CropFlip(PAD, hflip=True), True)


@pytest.mark.parametrize("fast", [True, False])
def test_eval_loader_keeps_order_and_equals_dataset_items(fast):
    dataset = _toy_uint8()
    dataset.augment = False
    expected = torch.stack([dataset[i][0] for i in range(len(dataset))])
    loader = build_loader(dataset, 5, train=False, fast=fast)
    assert isinstance(loader, TensorBatchLoader if fast else DeviceLoader)
    assert len(loader) == 5
    batches = _epoch(loader)
    assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 3]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, expected)
    assert torch.equal(labels, dataset.targets)


@pytest.mark.parametrize("augmentation", [None, CropFlip(PAD, hflip=True, vflip=True)])
def test_uint8_store_converts_each_chunk_like_the_float_store(augmentation):
    dataset = _toy_uint8()
    common = dict(
        batch_size=4,
        shuffle=augmentation is not None,
        augmentation=augmentation,
        mean=dataset.info.mean,
        std=dataset.info.std,
    )
    epochs = []
    for max_bytes in (2**30, 0):
        loader = TensorBatchLoader(
            dataset.images,
            dataset.targets,
            float_store_max_bytes=max_bytes,
            generator=torch.Generator().manual_seed(0),
            **common,
        )
        assert loader._store.dtype == (torch.uint8 if max_bytes == 0 else torch.float32)
        epochs.append(torch.cat([x for x, _ in loader]))
    torch.testing.assert_close(epochs[1], epochs[0])


@pytest.mark.parametrize("fast", [True, False])
def test_training_epoch_is_a_permutation_and_resumes_from_generator_state(fast):
    dataset = _toy_uint8()
    gen = torch.Generator().manual_seed(7)
    loader = build_loader(dataset, 4, train=True, fast=fast, generator=gen)
    first = _epoch(loader)
    state = gen.get_state()
    second = _epoch(loader)
    gen.set_state(state)
    again = _epoch(loader)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(second, again, strict=True)
    )
    assert not torch.equal(first[0][0], second[0][0])
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(dataset.targets.tolist())
    # augmented: padding shows up as the normalized value of a black pixel somewhere
    images = torch.cat([x for x, _ in first])
    black = (-torch.tensor(dataset.info.mean) / torch.tensor(dataset.info.std)).view(1, 3, 1, 1)
    assert torch.isclose(images, black.expand_as(images)).any()


def test_dataloader_path_does_not_depend_on_worker_processes():
    dataset = _toy_uint8()
    runs = [
        _epoch(
            build_loader(
                dataset,
                4,
                train=True,
                fast=False,
                num_workers=workers,
                generator=torch.Generator().manual_seed(5),
            )
        )
        for workers in (0, 2)
    ]
    for (x0, y0), (x2, y2) in zip(*runs, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_train_without_dataset_augmentation_only_shuffles():
    dataset = _toy_uint8()
    dataset.augment = False
    items = torch.stack([dataset[i][0] for i in range(len(dataset))])
    loader = build_loader(dataset, 23, train=True, generator=torch.Generator().manual_seed(0))
    ((images, labels),) = _epoch(loader)
    order = [int((items == image).flatten(1).all(1).nonzero()) for image in images]
    assert sorted(order) == list(range(len(dataset))) and order != sorted(order)
    assert torch.equal(labels, dataset.targets[order])


@pytest.mark.parametrize(
    ("n", "batch", "train", "expected"),
    [(9, 4, True, 2), (9, 4, False, 3), (9, 3, True, 3), (10, 4, True, 3)],
)
def test_default_drop_last_drops_only_a_single_image_training_batch(n, batch, train, expected):
    dataset = _toy_uint8(n)
    for fast in (True, False):
        loader = build_loader(dataset, batch, train=train, fast=fast)
        assert len(loader) == expected == len(_epoch(loader))
        assert all(len(x) > 1 for x, _ in _epoch(loader)) or not train


def test_multi_label_targets_are_float_multi_hot():
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.uint8)
    dataset = TensorImageDataset(
        torch.rand(4, 1, SIZE, SIZE), targets, _info(1, task="multi-label"), "val"
    )
    assert dataset[0][1].dtype == torch.float32 and dataset[0][1].tolist() == [1.0, 0.0, 1.0]
    for fast in (True, False):
        _, labels = next(iter(build_loader(dataset, 4, train=False, fast=fast)))
        assert labels.dtype == torch.float32 and torch.equal(labels, targets.float())


def test_fast_true_without_fast_path_raises():
    dataset = _toy_uint8()
    dataset.fast_path = False
    with pytest.raises(ValueError, match="fast path"):
        build_loader(dataset, 4, train=True, fast=True)
    assert isinstance(build_loader(dataset, 4, train=True), DeviceLoader)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(dataset, 0, train=True)


def test_any_torch_dataset_gets_a_device_loader():
    data = TensorDataset(torch.arange(10.0).view(10, 1), torch.arange(10))
    loader = build_loader(data, 4, train=False)
    assert len(loader) == 3
    assert torch.cat([y for _, y in loader]).tolist() == list(range(10))


def test_fast_path_keeps_the_prepared_tensor_between_epochs():
    dataset = _toy_uint8()
    first = build_loader(dataset, 4, train=True)
    second = build_loader(dataset, 4, train=True)
    assert second._store is first._store
    assert build_loader(dataset, 4, train=False)._store is not first._store  # unpadded
    dataset.images[0] = 0  # an in-place change prepares the tensor again
    third = build_loader(dataset, 4, train=True)
    assert third._store is not first._store and len(dataset.fast_cache) == 2
