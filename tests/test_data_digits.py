"""digits: scikit-learn's 8×8 handwritten digits, split 60/20/20 per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from augmentbn.data import TensorBatchLoader, build_dataset, build_loader, stratified_split
from augmentbn.data.digits import DIGITS_FRACTIONS

REFERENCE = load_digits()


def test_splits_are_stratified_disjoint_and_cover_the_dataset():
    parts = {s: build_dataset("digits", split=s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 1078, "val": 362, "test": 357}
    seen = []
    for ds in parts.values():
        counts = np.bincount(ds.targets.numpy(), minlength=10)
        share = len(ds) / len(REFERENCE.target)
        assert np.all(np.abs(counts - share * np.bincount(REFERENCE.target)) <= 1)
        seen += [int(t) for t in ds.targets]
    assert sorted(seen) == sorted(REFERENCE.target.tolist())
    expected = stratified_split(REFERENCE.target, DIGITS_FRACTIONS, 0)
    for part, ds in zip(expected, parts.values(), strict=True):
        assert torch.equal(ds.targets, torch.from_numpy(REFERENCE.target[part]))
        assert torch.equal(ds.images[:, 0] * 16, torch.from_numpy(REFERENCE.images[part]).float())


def test_split_is_reproducible_from_the_seed():
    a, b = (build_dataset("digits", split="val", seed=3) for _ in range(2))
    c = build_dataset("digits", split="val", seed=4)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    members = [{bytes(x.numpy()) for x in ds.images} for ds in (a, c)]
    assert members[0] != members[1]  # other images, not just another order


def test_upscaled_items_info_and_normalization():
    train = build_dataset("digits", image_size=32)
    info = train.info
    assert (info.name, info.task, info.num_classes, info.in_chans, info.image_size) == (
        "digits",
        "classification",
        10,
        1,
        32,
    )
    assert info.class_names == tuple("0123456789")
    assert train.augment and train.augmentation.padding == 4 and not train.augmentation.hflip
    test = build_dataset("digits", split="test", image_size=32)
    assert not test.augment and test.split_record is None
    image, label = test[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label <= 9
    assert torch.equal(test[0][0], test[0][0])  # no augmentation outside train
    # the training split is normalized to mean 0, std 1 (ds[i] of the unaugmented train set)
    train.augment = False
    pixels = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(pixels.mean())) < 1e-4 and abs(float(pixels.std()) - 1) < 1e-3
    # the upscaling is bilinear: PIL's BILINEAR resize of the 8×8 image is the reference
    small = build_dataset("digits", split="test")
    for i in range(0, len(small), 50):
        pil = Image.fromarray(small.images[i, 0].numpy(), mode="F").resize((32, 32), Image.BILINEAR)
        np.testing.assert_allclose(test.images[i, 0].numpy(), np.asarray(pil), atol=1e-6)


def test_three_channels_repeat_the_gray_image():
    ds = build_dataset("digits", split="val", image_size=16, in_chans=3)
    image, _ = ds[5]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert len(ds.info.mean) == len(ds.info.std) == 3


def test_digits_use_the_fast_path_by_default():
    ds = build_dataset("digits", image_size=32)
    loader = build_loader(ds, 32, train=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(loader, TensorBatchLoader) and len(loader) == 34  # 1078 = 33·32 + 22
    images, labels = next(iter(loader))
    assert images.shape == (32, 1, 32, 32) and labels.dtype == torch.int64


def test_stratified_split_properties_and_errors():
    labels = np.repeat([0, 1, 2], [10, 7, 1])
    parts = stratified_split(labels, (0.5, 0.3, 0.2), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(18))
    assert [np.bincount(labels[p], minlength=3).tolist() for p in parts] == [
        [5, 4, 1],
        [3, 2, 0],
        [2, 1, 0],
    ]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(parts, stratified_split(labels, (0.5, 0.3, 0.2), seed=0), strict=True)
    )
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.4), seed=0)
