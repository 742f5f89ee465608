"""The Decathlon layout (msd_<task>): loading, HU window, z-score, resampling, the volume-level
split, and every bad input, on tiny NIfTI volumes written here with nibabel."""

import json

import numpy as np
import pytest

from augmentbn.data import (
    CorruptFileError,
    DatasetLayoutError,
    DatasetNotFoundError,
    build_dataset,
)
from augmentbn.data.decathlon import held_out, split_cases

nib = pytest.importorskip("nibabel", reason="the Decathlon layout needs the seg extra")
pytest.importorskip("monai", reason="the Decathlon layout needs the seg extra")

SHAPE = (32, 32, 8)
TARGET = np.diag([1.0, 1.0, 3.0, 1.0])  # the protocol's spacing: no resampling


def _save(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_task(
    root,
    n=5,
    *,
    image=None,
    label=None,
    affine=TARGET,
    modality="CT",
    task="Task03_Liver",
):
    """A Decathlon task folder with ``n`` cases ``liver_<i>``; returns the folder."""
    folder = root / task
    entries = []
    for i in range(n):
        img = (
            image(i)
            if image
            else np.random.default_rng(i).uniform(-1000, 1000, SHAPE).astype(np.float32)
        )
        lab = label(i) if label else np.zeros(SHAPE, np.uint8)
        if not label:
            lab[8:16, 8:16, 2:5] = 1
            lab[10:12, 10:12, 3] = 2  # tumour inside the liver
        _save(folder / "imagesTr" / f"liver_{i}.nii.gz", img, affine)
        _save(folder / "labelsTr" / f"liver_{i}.nii.gz", lab, affine)
        entries.append(
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
        )
    description = {
        "name": "tiny",
        "modality": {"0": modality},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": n,
        "training": entries,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder


def load(root, split="train", **kwargs):
    return build_dataset("msd_liver", root, split, **kwargs).prepare(num_workers=1)


# -- the split --------------------------------------------------------------------------------


def test_held_out_rule_and_split_by_volume():
    assert held_out(131) == 30  # the paper: the last 60 of 131 cases, 30 val and 30 test
    assert [held_out(n) for n in (3, 5, 10, 20, 41, 200)] == [1, 1, 2, 5, 9, 30]
    names = [f"liver_{i}" for i in range(131)]
    parts = split_cases(list(reversed(names)))
    ordered = sorted(names)  # Python's string order: liver_0, liver_1, liver_10, liver_100, ...
    assert parts["train"] == ordered[:71]
    assert parts["val"] == ordered[71:101] and parts["test"] == ordered[101:]
    assert parts["test"][-1] == "liver_99" and "liver_130" in parts["train"]
    with pytest.raises(DatasetLayoutError, match="at least 3"):
        split_cases(["a", "b"])


def test_splits_are_disjoint_volumes_and_recorded(tmp_path):
    write_task(tmp_path, n=10)
    splits = {s: build_dataset("msd_liver", tmp_path, s) for s in ("train", "val", "test")}
    names = {s: ds.names for s, ds in splits.items()}
    assert names == {
        "train": [f"liver_{i}" for i in range(6)],
        "val": ["liver_6", "liver_7"],
        "test": ["liver_8", "liver_9"],
    }
    record = splits["train"].split_record
    assert {k: record[k] for k in ("train", "val", "test")} == names
    assert "k = min(30" in record["rule"] and record["task"] == "Task03_Liver"


# -- preprocessing ----------------------------------------------------------------------------


def test_loading_hu_window_and_foreground_merge(tmp_path):
    hu = np.array([-1000, -310, -100, 40, 390, 1000], np.float32)
    image = np.zeros(SHAPE, np.float32)
    image[: len(hu), 0, 0] = hu
    write_task(tmp_path, image=lambda i: image)
    ds = load(tmp_path)
    info = ds.info
    assert (info.task, info.num_classes, info.in_chans, info.image_size) == (
        "segmentation",
        2,
        1,
        256,
    )
    volume = ds.volume(0)
    assert volume["image"].shape == (1, *SHAPE) and volume["label"].shape == (1, *SHAPE)
    expected = np.clip((hu + 310) / 700, 0, 1)  # [-310, 390] HU to [0, 1], clipped
    np.testing.assert_allclose(volume["image"][0, : len(hu), 0, 0].numpy(), expected, atol=1e-6)
    label = volume["label"][0].numpy()
    reference = np.zeros(SHAPE, np.uint8)
    reference[8:16, 8:16, 2:5] = 1  # liver and the tumour inside it: one foreground
    np.testing.assert_array_equal(label, reference)


def test_mr_tasks_are_z_scored_per_volume(tmp_path):
    write_task(
        tmp_path,
        modality="MRI",
        image=lambda i: np.random.default_rng(i).normal(300 + 50 * i, 40, SHAPE).astype("f4"),
    )
    ds = load(tmp_path)
    for index in range(len(ds)):
        image = ds.volume(index)["image"].double()
        assert abs(image.mean().item()) < 1e-5 and abs(image.std(unbiased=False).item() - 1) < 1e-4


def test_resampling_to_1_1_3_mm(tmp_path):
    # A HU ramp along x at 2 mm: bilinear resampling to 1 mm gives the ramp at every mm, the
    # midpoints being averages (exact for a linear function). Voxel centres keep their extent:
    # 16 voxels at 2 mm (0..30 mm) become 31 at 1 mm, 4 slices at 6 mm (0..18 mm) 7 at 3 mm.
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None] * 10, (16, 16, 4))
    write_task(
        tmp_path,
        image=lambda i: np.ascontiguousarray(ramp),
        affine=np.diag([2, 2, 6, 1.0]),
        label=lambda i: np.zeros((16, 16, 4), np.uint8),
    )
    volume = load(tmp_path).volume(0)
    assert volume["image"].shape == (1, 31, 31, 7)
    hu = volume["image"][0].numpy() * 700 - 310
    np.testing.assert_allclose(
        hu, np.broadcast_to(np.arange(31.0)[:, None, None] * 5, hu.shape), atol=2e-4
    )


def test_label_resampling_is_nearest(tmp_path):
    # 0.5 x 0.5 x 1.5 mm to 1 x 1 x 3 mm: the output voxels fall on every other input voxel, so
    # nearest-neighbour resampling is label[::2, ::2, ::2] exactly (no new values, no blur).
    label = np.random.default_rng(0).integers(0, 3, (16, 16, 8)).astype(np.uint8)
    write_task(
        tmp_path,
        image=lambda i: np.zeros((16, 16, 8), np.float32),
        label=lambda i: label,
        affine=np.diag([0.5, 0.5, 1.5, 1.0]),
    )
    volume = load(tmp_path).volume(0)
    np.testing.assert_array_equal(volume["label"][0].numpy(), (label[::2, ::2, ::2] > 0))


def test_training_slices_have_the_window_size_and_both_classes(tmp_path):
    write_task(tmp_path)
    ds = build_dataset("msd_liver", tmp_path, "train", image_size=16).prepare(num_workers=1)
    images, labels = ds.sample(0, seed=7)
    assert images.shape == (4, 1, 16, 16) and labels.shape == (4, 1, 16, 16)
    assert set(labels.unique().tolist()) <= {0, 1}
    # pos:neg = 1:1: two slices centred on foreground hold foreground at their centre
    centres = labels[:, 0, 8, 8].tolist()
    assert sum(centres) >= 2
    again = ds.sample(0, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((images, labels), again, strict=True))


# -- the folder ----------------------------------------------------------------------------------


def test_root_may_be_the_task_folder_or_its_parent(tmp_path):
    folder = write_task(tmp_path)
    assert build_dataset("msd_liver", folder, "test").names == ["liver_4"]
    assert build_dataset("msd_liver", tmp_path, "test").names == ["liver_4"]


def test_missing_folder_names_both_accepted_places(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("msd_liver", tmp_path / "nothing", "train")
    message = str(error.value)
    assert "no dataset.json in" in message and "Task03_Liver" in message
    assert "imagesTr" in message and "labelsTr" in message and "--download" in message


def test_missing_image_file(tmp_path):
    folder = write_task(tmp_path)
    (folder / "imagesTr/liver_2.nii.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"liver_2.nii.gz.*is missing(.|\n)*imagesTr"):
        build_dataset("msd_liver", tmp_path, "train")


def test_image_without_label(tmp_path):
    folder = write_task(tmp_path)
    (folder / "labelsTr/liver_3.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match=r"imagesTr/liver_3.nii.gz has no label"):
        build_dataset("msd_liver", tmp_path, "val")
    description = json.loads((folder / "dataset.json").read_text())
    del description["training"][1]["label"]
    (folder / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DatasetLayoutError, match=r"liver_1.nii.gz has no label"):
        build_dataset("msd_liver", tmp_path, "train")


def test_bad_dataset_json(tmp_path):
    folder = write_task(tmp_path)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="dataset.json: not a readable JSON"):
        build_dataset("msd_liver", tmp_path, "train")
    (folder / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetLayoutError, match="lacks the Decathlon keys"):
        build_dataset("msd_liver", tmp_path, "train")


def test_corrupt_volume_names_the_file(tmp_path):
    folder = write_task(tmp_path)
    broken = folder / "imagesTr/liver_1.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    ds = build_dataset("msd_liver", tmp_path, "train")
    with pytest.raises(CorruptFileError, match=r"liver_1.nii.gz: cannot read this image"):
        ds.prepare(num_workers=1)


def test_label_of_another_shape(tmp_path):
    write_task(tmp_path, label=lambda i: np.zeros((32, 32, 7) if i == 0 else SHAPE, np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"liver_0.nii.gz and label .*do not match"):
        load(tmp_path)


def test_label_with_another_affine(tmp_path):
    folder = write_task(tmp_path)
    shifted = TARGET.copy()
    shifted[0, 3] = 5.0  # moved 5 mm
    _save(folder / "labelsTr/liver_0.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(DatasetLayoutError, match=r"liver_0.nii.gz have different affines"):
        load(tmp_path)


def test_label_values_outside_the_classes(tmp_path):
    def label(i):
        lab = np.zeros(SHAPE, np.uint8)
        lab[0, 0, 0] = 7 if i == 2 else 1
        return lab

    write_task(tmp_path, label=label)
    with pytest.raises(DatasetLayoutError, match=r"liver_2.nii.gz holds values \[7\] outside"):
        load(tmp_path)


def test_failed_download_says_what_to_do_and_leaves_nothing(tmp_path, monkeypatch):
    import monai.apps

    from augmentbn.data import DownloadError

    def offline(url, filepath, output_dir, hash_val):
        raise OSError("network unreachable")

    monkeypatch.setattr(monai.apps, "download_and_extract", offline)
    with pytest.raises(DownloadError, match=r"Downloading Task03_Liver failed(.|\n)*by hand"):
        build_dataset("msd_liver", tmp_path, "train", download=True)
    assert list(tmp_path.iterdir()) == []
