"""MedMNIST 2D on small .npz files written with the official keys and file names."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.info import INFO

from augmentbn.data import (
    CorruptFileError,
    DatasetNotFoundError,
    DownloadError,
    TensorBatchLoader,
    build_dataset,
    build_loader,
)
from augmentbn.data import download as download_module
from augmentbn.data.loader import DeviceLoader

SIZES = {"train": 12, "val": 5, "test": 6}


def write_npz(root: Path, flag: str, size: int = 28, seed: int = 0) -> Path:
    """``root/<flag>[_<size>].npz`` with the official arrays, labels covering every class."""
    rng = np.random.default_rng(seed)
    info = INFO[flag]
    classes, chans = len(info["label"]), info["n_channels"]
    multi = info["task"].startswith("multi-label")
    arrays = {}
    for split, n in SIZES.items():
        shape = (n, size, size) if chans == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            rng.integers(0, 2, (n, classes), dtype=np.uint8)
            if multi
            else (np.arange(n) % classes).astype(np.uint8)[:, None]
        )
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def test_grayscale_dataset_items_and_info(tmp_path):
    path = write_npz(tmp_path, "octmnist")
    raw = np.load(path)
    for split, n in SIZES.items():
        ds = build_dataset("octmnist", tmp_path, split)
        assert len(ds) == n and ds.augment == (split == "train")
    info = ds.info
    assert (info.task, info.num_classes, info.in_chans, info.image_size) == (
        "classification",
        4,
        1,
        28,
    )
    assert info.class_names == tuple(INFO["octmnist"]["label"][str(k)] for k in range(4))
    assert info.mean == (0.5,) and info.std == (0.5,)
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and isinstance(label, int)
    assert label == int(raw["test_labels"][3, 0])
    expected = (torch.from_numpy(raw["test_images"][3]).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(image[0], expected)
    assert ds.augmentation.hflip and not ds.augmentation.vflip
    assert isinstance(build_loader(ds, 4, train=False), TensorBatchLoader)


def test_multi_label_chestmnist_at_64(tmp_path):
    path = write_npz(tmp_path, "chestmnist", 64)
    ds = build_dataset("chestmnist", tmp_path, "val", image_size=64)
    assert ds.info.task == "multi-label" and ds.info.num_classes == 14
    target = ds[2][1]
    assert target.dtype == torch.float32 and target.shape == (14,)
    assert target.tolist() == np.load(path)["val_labels"][2].astype(float).tolist()
    assert not ds.augmentation.hflip  # chest X-rays are not mirrored
    images, labels = next(iter(build_loader(ds, 5, train=False)))
    assert images.shape == (5, 1, 64, 64) and labels.shape == (5, 14)


def test_color_dataset_channels_resize_and_size_choice(tmp_path):
    write_npz(tmp_path, "pathmnist")
    write_npz(tmp_path, "pathmnist", 224)
    ds = build_dataset("pathmnist", tmp_path, "train")
    assert ds[0][0].shape == (3, 28, 28) and ds.augmentation.vflip
    gray = build_dataset("pathmnist", tmp_path, "train", in_chans=1, image_size=32)
    assert gray[0][0].shape == (1, 32, 32) and gray.info.in_chans == 1
    big = build_dataset("pathmnist", tmp_path, "test", image_size=224)
    assert big.info.image_size == 224 and big.images.shape == (6, 3, 224, 224)
    assert isinstance(build_loader(big, 4, train=False), DeviceLoader)  # no fast path at 224
    resized = build_dataset("pathmnist", tmp_path, "test", image_size=112, size=224)
    assert resized[0][0].shape == (3, 112, 112)
    with pytest.raises(ValueError, match="size must be one of"):
        build_dataset("pathmnist", tmp_path, "test", size=100)


def test_missing_file_shows_the_layout_and_the_download_hint(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("octmnist", tmp_path, "train", image_size=64)
    message = str(err.value)
    for text in ("octmnist_64.npz", "train_images", "test_labels", "--download"):
        assert text in message


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:300]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b"\x00" * 64), "truncated or corrupt"),
        (lambda p: np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8)), "lacks train_labels"),
        (
            lambda p: np.savez(
                p,
                train_images=np.zeros((2, 28, 28), np.uint8),
                train_labels=np.array([[0], [7]], np.uint8),
            ),
            r"labels must lie in 0..3",
        ),
        (
            lambda p: np.savez(
                p,
                train_images=np.zeros((2, 32, 32), np.uint8),
                train_labels=np.zeros((2, 1), np.uint8),
            ),
            "N×28×28 uint8",
        ),
    ],
)
def test_corrupt_npz_is_named(tmp_path, damage, match):
    path = write_npz(tmp_path, "octmnist")
    damage(path)
    with pytest.raises(CorruptFileError, match=match) as err:
        build_dataset("octmnist", tmp_path, "train")
    assert err.value.path == str(path)
    if "lacks" in match or "truncated" in match:
        assert "--download" in str(err.value)


def test_damaged_member_inside_the_archive_is_named(tmp_path):
    path = tmp_path / "breastmnist.npz"
    write_npz(tmp_path, "breastmnist")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("train_images.npy")
    start = member.header_offset + 30 + len(member.filename) + 10
    data[start : start + 20] = bytes(20)  # flip bytes of the compressed stream
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as err:
        build_dataset("breastmnist", tmp_path, "train")
    assert err.value.path == str(path)


def test_download_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(url, folder, filename, md5):
        (folder / filename).write_bytes(b"PK\x03\x04 partial")
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(download_module, "_fetch", offline)
    with pytest.raises(DownloadError) as err:
        build_dataset("dermamnist", tmp_path, "train", image_size=64, download=True)
    message = str(err.value)
    assert "Downloading dermamnist_64.npz failed" in message
    assert INFO["dermamnist"]["url_64"] in message and INFO["dermamnist"]["MD5_64"] in message
    assert f"put it at {tmp_path / 'dermamnist_64.npz'}" in message
    assert list(tmp_path.iterdir()) == []


def test_download_puts_the_file_in_root_and_is_skipped_when_present(tmp_path, monkeypatch):
    source = write_npz(tmp_path / "source", "bloodmnist")
    calls = []

    def fetch(url, folder, filename, md5):
        calls.append((url, filename, md5))
        (folder / filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(download_module, "_fetch", fetch)
    root = tmp_path / "data"
    assert len(build_dataset("bloodmnist", root, "val", download=True)) == SIZES["val"]
    assert calls == [(INFO["bloodmnist"]["url"], "bloodmnist.npz", INFO["bloodmnist"]["MD5"])]
    assert [p.name for p in root.iterdir()] == ["bloodmnist.npz"]
    build_dataset("bloodmnist", root, "test", download=True)
    assert len(calls) == 1
