"""cifar10 / cifar100 on small files written in the official python-pickle format."""

from __future__ import annotations

import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from augmentbn.data import (
    CorruptFileError,
    DatasetNotFoundError,
    DownloadError,
    TensorBatchLoader,
    build_dataset,
    build_loader,
)
from augmentbn.data import download as download_module
from augmentbn.data.cifar import CIFAR_STATS

PER_BATCH = 20


def _batch(seed: int, n: int, classes: int, label_key: str) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(k) for k in np.arange(n) % classes],
        "filenames": [f"img{seed}_{i}.png" for i in range(n)],
    }


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k in range(1, 6):
        _dump(_batch(k, PER_BATCH, 10, "labels"), folder / f"data_batch_{k}")
    _dump(_batch(0, PER_BATCH, 10, "labels"), folder / "test_batch")
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(
        {"num_cases_per_batch": PER_BATCH, "label_names": names, "num_vis": 3072},
        folder / "batches.meta",
    )
    return folder


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", 300, 1), ("test", 100, 2)):
        entry = _batch(seed, n, 100, "fine_labels")
        entry["coarse_labels"] = [k // 5 for k in entry["fine_labels"]]
        _dump(entry, folder / name)
    _dump(
        {
            "fine_label_names": [f"fine{k:02d}" for k in range(100)],
            "coarse_label_names": [f"coarse{k:02d}" for k in range(20)],
        },
        folder / "meta",
    )
    return folder


def _unpickled(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_cifar10_test_split_matches_the_files(tmp_path):
    folder = write_cifar10(tmp_path)
    ds = build_dataset("cifar10", tmp_path, "test")
    raw = _unpickled(folder / "test_batch")
    assert len(ds) == PER_BATCH
    assert ds.info.class_names[:3] == ("airplane", "automobile", "bird")
    assert (ds.info.num_classes, ds.info.in_chans, ds.info.image_size) == (10, 3, 32)
    assert ds.info.mean == CIFAR_STATS["cifar10"][0]
    assert torch.equal(ds.images, torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32)))
    image, label = ds[7]
    assert label == raw["labels"][7] and isinstance(label, int)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR_STATS["cifar10"])
    expected = (torch.from_numpy(raw["data"][7].reshape(3, 32, 32)).float() / 255 - mean) / std
    torch.testing.assert_close(image, expected)
    assert ds.augmentation.padding == 4 and ds.augmentation.hflip


def test_cifar10_val_is_a_seeded_stratified_part_of_train(tmp_path):
    write_cifar10(tmp_path)
    train = build_dataset("cifar10", tmp_path, "train", seed=1)
    val = build_dataset("cifar10", tmp_path, "val", seed=1)
    assert (len(train), len(val)) == (90, 10)
    assert np.bincount(val.targets.numpy(), minlength=10).tolist() == [1] * 10
    everything = build_dataset("cifar10", tmp_path, "train", val_fraction=0)
    assert len(everything) == 100
    rows = {bytes(x.numpy()) for x in everything.images}
    split = [bytes(x.numpy()) for x in torch.cat([train.images, val.images])]
    assert set(split) == rows and len(split) == len(rows)
    assert torch.equal(val.images, build_dataset("cifar10", tmp_path, "val", seed=1).images)
    assert not torch.equal(val.images, build_dataset("cifar10", tmp_path, "val", seed=2).images)
    with pytest.raises(ValueError, match="no val split"):
        build_dataset("cifar10", tmp_path, "val", val_fraction=0)


def test_cifar100_fine_labels_resize_and_fast_path(tmp_path):
    write_cifar100(tmp_path)
    ds = build_dataset("cifar100", tmp_path, "test", image_size=40)
    raw = _unpickled(tmp_path / "cifar-100-python" / "test")
    assert ds.info.num_classes == 100 and ds.info.class_names[99] == "fine99"
    assert ds.targets.tolist() == raw["fine_labels"]
    assert ds[0][0].shape == (3, 40, 40) and ds.images.dtype == torch.uint8
    loader = build_loader(ds, 16, train=False)
    assert isinstance(loader, TensorBatchLoader) and len(loader) == 7
    with pytest.raises(ValueError, match="in_chans must be 3"):
        build_dataset("cifar100", tmp_path, "test", in_chans=1)


def test_missing_files_show_the_layout_and_the_download_hint(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("cifar10", tmp_path / "nowhere", "train")
    message = str(err.value)
    for text in (
        "cifar-10-batches-py/",
        "data_batch_5",
        "test_batch",
        "batches.meta",
        "--download",
        "download=True",
    ):
        assert text in message
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3 not found"):
        build_dataset("cifar10", tmp_path, "train")
    build_dataset("cifar10", tmp_path, "test")  # the test split needs no training batch


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(b"not a pickle at all"), "truncated or corrupt"),
        (
            lambda p: _dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, p),
            "N×3072 uint8",
        ),
        (
            lambda p: _dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, p),
            "labels must lie in 0..9",
        ),
        (lambda p: _dump([1, 2, 3], p), "not a CIFAR dict"),
    ],
)
def test_corrupt_batch_is_named(tmp_path, damage, match):
    folder = write_cifar10(tmp_path)
    damage(folder / "data_batch_2")
    with pytest.raises(CorruptFileError, match=match) as err:
        build_dataset("cifar10", tmp_path, "train")
    assert err.value.path == str(folder / "data_batch_2")
    assert str(folder / "data_batch_2") in str(err.value)


def test_corrupt_meta_is_named(tmp_path):
    folder = write_cifar10(tmp_path)
    _dump({"label_names": ["a", "b"]}, folder / "batches.meta")
    with pytest.raises(CorruptFileError, match="batches.meta.*10 class names"):
        build_dataset("cifar10", tmp_path, "test")


def _offline(url, folder, filename, md5):
    (folder / filename).write_bytes(b"partial download")  # what a dropped connection leaves
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_download_without_network_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "_fetch", _offline)
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        build_dataset("cifar10", root, "train", download=True)
    message = str(err.value)
    assert "Downloading cifar10 failed" in message and "name resolution" in message
    assert "cifar-10-python.tar.gz" in message and "by hand" in message
    assert f"unpack it in {root}" in message
    assert not root.exists()  # nothing half-written is left behind
    root.mkdir()
    with pytest.raises(DownloadError):
        build_dataset("cifar100", root, "test", download=True)
    assert list(root.iterdir()) == []


def test_download_unpacks_the_archive_into_root(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_cifar10(source)

    def fetch(url, folder, filename, md5):
        assert filename == "cifar-10-python.tar.gz"
        with tarfile.open(folder / filename, "w:gz") as tar:
            tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    monkeypatch.setattr(download_module, "_fetch", fetch)
    root = tmp_path / "data"
    ds = build_dataset("cifar10", root, "test", download=True)
    assert len(ds) == PER_BATCH
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]
    monkeypatch.setattr(download_module, "_fetch", _offline)  # files present: no network needed
    assert len(build_dataset("cifar10", root, "train", download=True)) == 90
