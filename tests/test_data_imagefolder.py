"""imagefolder on a Kermany-style folder of small JPEGs written by the test."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augmentbn.data import (
    CorruptFileError,
    DatasetLayoutError,
    DatasetNotFoundError,
    build_dataset,
    build_loader,
)
from augmentbn.data.loader import DeviceLoader

SHADES = {"NORMAL": 40, "PNEUMONIA": 200}  # one flat gray level per class
COUNTS = {"train": {"NORMAL": 10, "PNEUMONIA": 20}, "test": {"NORMAL": 3, "PNEUMONIA": 4}}


def _jpeg(path: Path, shade: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = shade if mode == "L" else (shade, shade // 2, 255 - shade)
    Image.new(mode, (24, 20), color).save(path, "JPEG")


def write_kermany(root: Path, counts=COUNTS, mode: str = "L") -> Path:
    for split, classes in counts.items():
        for cls, n in classes.items():
            for i in range(n):
                _jpeg(root / split / cls / f"{cls}-{i:03d}.jpeg", SHADES[cls], mode)
    return root


def test_classes_labels_pixels_and_channels(tmp_path):
    root = write_kermany(tmp_path)
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "train" / ".DS_Store").write_text("hidden")
    ds = build_dataset("imagefolder", root, "test", image_size=16)
    assert ds.info.class_names == ("NORMAL", "PNEUMONIA") and ds.info.in_chans == 1
    assert (ds.info.task, ds.info.num_classes, ds.info.image_size) == ("classification", 2, 16)
    assert ds.targets.tolist() == [0] * 3 + [1] * 4 and ds.split_record is None
    for i, cls in ((0, "NORMAL"), (5, "PNEUMONIA")):
        image, label = ds.load(i)
        assert image.shape == (1, 16, 16) and label == ds.info.class_names.index(cls)
        assert torch.allclose(image, torch.full_like(image, SHADES[cls] / 255), atol=2 / 255)
        torch.testing.assert_close(ds[i][0], (image - 0.5) / 0.5)
    rgb = build_dataset("imagefolder", root, "test", image_size=16, in_chans=3)
    image = rgb[0][0]
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[2])
    loader = build_loader(ds, 4, train=False)
    assert isinstance(loader, DeviceLoader) and len(loader) == 2
    images, labels = next(iter(loader))
    assert images.shape == (4, 1, 16, 16) and labels.tolist() == [0, 0, 0, 1]


def test_color_images_give_three_channels_by_default(tmp_path):
    root = write_kermany(tmp_path, mode="RGB")
    ds = build_dataset("imagefolder", root, "test", image_size=8)
    assert ds.info.in_chans == 3 and ds[0][0].shape == (3, 8, 8)
    assert build_dataset("imagefolder", root, "test", image_size=8, in_chans=1)[0][0].shape == (
        1,
        8,
        8,
    )


def test_missing_val_gives_a_seeded_stratified_split_and_its_record(tmp_path):
    root = write_kermany(tmp_path)
    train = build_dataset("imagefolder", root, "train", image_size=8, seed=4, val_fraction=0.2)
    val = build_dataset("imagefolder", root, "val", image_size=8, seed=4, val_fraction=0.2)
    assert (len(train), len(val)) == (24, 6)
    assert np.bincount(val.targets.numpy()).tolist() == [2, 4]
    record = train.split_record
    assert record == val.split_record
    assert record["classes"] == ["NORMAL", "PNEUMONIA"] and record["seed"] == 4
    everything = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.jpeg"))
    assert sorted(record["train"] + record["val"]) == everything
    assert not set(record["train"]) & set(record["val"])
    assert [root / p for p in record["val"]] == val.files
    again = build_dataset("imagefolder", root, "val", image_size=8, seed=4, val_fraction=0.2)
    other = build_dataset("imagefolder", root, "val", image_size=8, seed=5, val_fraction=0.2)
    assert again.split_record == record and other.split_record["val"] != record["val"]
    assert train.augment and not val.augment and train.augmentation.padding == 0


def test_existing_val_folder_is_used_as_it_is(tmp_path):
    root = write_kermany(tmp_path, {**COUNTS, "val": {"NORMAL": 2, "PNEUMONIA": 2}})
    val = build_dataset("imagefolder", root, "val", image_size=8)
    train = build_dataset("imagefolder", root, "train", image_size=8)
    assert len(val) == 4 and len(train) == 30
    assert val.split_record is None and train.split_record is None
    assert all("val" in p.parts for p in val.files)


@pytest.mark.parametrize(
    ("make", "split", "text"),
    [
        (lambda root: None, "train", "not found"),
        (lambda root: write_kermany(root, {"test": COUNTS["test"]}), "test", "train not found"),
        (lambda root: write_kermany(root, {"train": COUNTS["train"]}), "test", "test not found"),
    ],
)
def test_missing_root_or_split_shows_the_layout(tmp_path, make, split, text):
    root = tmp_path / "kermany"
    make(root)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("imagefolder", root, split, download=True)
    message = str(err.value)
    assert text in message and "train/" in message and "<CLASS_A>/*.jpeg" in message
    assert "cannot be downloaded" in message
    with pytest.raises(DatasetNotFoundError, match="no root given"):
        build_dataset("imagefolder", None, split)


def test_empty_class_folder_is_an_error(tmp_path):
    root = write_kermany(tmp_path)
    (root / "test" / "EMPTY").mkdir()
    (root / "test" / "EMPTY" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match=r"class folder .*EMPTY holds no images"):
        build_dataset("imagefolder", root, "test")


def test_class_in_test_but_not_in_train_is_an_error(tmp_path):
    root = write_kermany(tmp_path)
    _jpeg(root / "test" / "COVID" / "a.jpeg", 100)
    with pytest.raises(DatasetLayoutError, match=r"COVID in .*test have no folder in .*train"):
        build_dataset("imagefolder", root, "test")


def _damage(root: Path) -> tuple[Path, Path]:
    garbage = root / "test" / "NORMAL" / "garbage.jpeg"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    truncated = root / "test" / "PNEUMONIA" / "truncated.jpeg"
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, "JPEG")  # big enough that half of it is pixel data
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return garbage, truncated


def test_unreadable_image_stops_by_default_with_its_path(tmp_path):
    root = write_kermany(tmp_path)
    garbage, truncated = _damage(root)
    with pytest.raises(CorruptFileError, match="is not a readable image") as err:
        build_dataset("imagefolder", root, "test", image_size=8)
    assert err.value.path == str(garbage)
    garbage.unlink()
    ds = build_dataset("imagefolder", root, "test", image_size=8)  # its header is fine
    index = ds.files.index(truncated)
    with pytest.raises(CorruptFileError, match="cannot be decoded") as err:
        ds[index]
    assert err.value.path == str(truncated)
    loader = build_loader(ds, len(ds), train=False, num_workers=1)  # raised in a worker
    with pytest.raises(CorruptFileError, match=f"{truncated}: cannot be decoded"):
        next(iter(loader))


def test_skip_leaves_unreadable_images_out(tmp_path):
    root = write_kermany(tmp_path)
    garbage, truncated = _damage(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("imagefolder", root, "test", image_size=8, on_bad_image="skip")
    assert sorted(ds.skipped) == sorted([str(garbage), str(truncated)])
    assert any("skipped 2 unreadable" in str(w.message) for w in caught)
    assert len(ds) == 7 and all(ds[i][0].shape == (1, 8, 8) for i in range(len(ds)))
