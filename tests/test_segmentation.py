"""Segmentation in the engine: seg_demo end to end, Dice and HD95 against formulas, exact
resume, compare, the paper's preset, and the errors of options that do not fit the task."""

import csv
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from augmentbn.cli import main
from augmentbn.data import DatasetInfo
from augmentbn.layers import AugmentBatchNorm2d
from augmentbn.train import TrainConfig, evaluate_checkpoint, load_preset, train
from augmentbn.train.checkpoint import load_checkpoint

pytest.importorskip("sklearn", reason="training needs the train extra")
pytest.importorskip("monai", reason="segmentation needs the seg extra")
ndimage = pytest.importorskip("scipy.ndimage")

from augmentbn.data.volumes import VolumeDataset, array_preprocessing  # noqa: E402
from augmentbn.train.segmentation import SegmentationTrainer  # noqa: E402


def seg_config(tmp_path, name="run", **changes):
    """A U-Net of width 4 on 16 px slices of the synthetic volumes: a real run in seconds."""
    values = dict(
        arch="unet",
        base_width=4,
        dataset="seg_demo",
        image_size=16,
        epochs=1,
        train_batch=4,
        test_batch=64,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        checkpoint=str(tmp_path / name),
        device="cpu",
    )
    values.update(changes)
    return TrainConfig(**values)


SMALL = ["--base-width", "4", "--image-size", "16", "--device", "cpu"]


def test_seg_demo_writes_every_output_and_eval_reproduces(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "seg_demo", "--epochs", "1", *SMALL, "-c", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"dice [01]\.\d{4}", printed)  # per epoch: train and val Dice
    assert re.search(r"test Dice \(synthetic data\): final [01]\.\d{4}", printed)
    for name in (
        "config.yaml",
        "log.csv",
        "curves.png",
        "metrics.json",
        "last.pt",
        "best.pt",
        "split.json",
        "test_slices.png",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    for png in ("curves.png", "test_slices.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,train_loss,train_dice,val_loss,val_dice,time" and len(log) == 2
    split = json.loads((out / "split.json").read_text())
    assert split["synthetic"] is True and "SYNTHETIC" in split["source"]
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and metrics["synthetic"] is True
    assert metrics["best_epoch"] == 1
    for which in ("best", "final"):
        for part in ("val", "test"):
            m = metrics[which][part]
            assert list(m["dice_per_volume"]) == split[part]
            dice = list(m["dice_per_volume"].values())
            assert all(0.0 <= d <= 1.0 for d in dice)
            assert m["dice"] == pytest.approx(statistics.fmean(dice), abs=1e-12)
            defined = [h for h in m["hd95_per_volume"].values() if h is not None]
            assert m["hd95"] == (pytest.approx(statistics.fmean(defined)) if defined else None)
    assert metrics["final"]["val"]["dice"] == pytest.approx(float(log[1].split(",")[5]))

    again = evaluate_checkpoint(out / "best.pt", "test")
    assert again["dice"] == metrics["best"]["test"]["dice"]
    assert again["dice_per_volume"] == metrics["best"]["test"]["dice_per_volume"]
    assert main(["eval", str(out / "best.pt")]) == 0
    assert f"test Dice: {again['dice']:.4f}" in capsys.readouterr().out


# -- Dice and HD95 against their formulas ------------------------------------------------------


class Sign(nn.Module):
    """Predicts foreground where the (z-scored) image is positive."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1)


def _cube(shift=0):
    mask = np.zeros((16, 16, 6), np.uint8)
    mask[4 + shift : 10 + shift, 5:11, 1:4] = 1
    return mask


def _hd95(a, b, spacing):
    """Symmetric 95th-percentile surface distance: surfaces are the voxels that erosion
    removes, distances Euclidean in mm."""

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask)

    sa, sb = surface(a.astype(bool)), surface(b.astype(bool))
    ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return max(np.percentile(ab, 95), np.percentile(ba, 95))


def test_dice_and_hd95_per_volume_match_their_formulas(tmp_path):
    empty = np.zeros((16, 16, 6), np.uint8)
    items = [  # image = what Sign predicts, label = the truth
        {"image": _cube(), "label": _cube(), "name": "perfect"},
        {"image": _cube(2), "label": _cube(), "name": "shifted"},
        {"image": empty, "label": empty, "name": "both_empty"},
        {"image": empty, "label": _cube(), "name": "missed"},
    ]
    info = DatasetInfo("cubes", "segmentation", 2, 1, 16, (0.0,), (1.0,), ("bg", "fg"))
    spacing = (1.0, 1.0, 3.0)
    dataset = VolumeDataset(
        [{**i, "image": i["image"].astype(np.float32)} for i in items],
        info=info,
        split="test",
        preprocess=array_preprocessing(),
        spacing=spacing,
    )
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    trainer = SegmentationTrainer(
        config=TrainConfig(arch="unet", dataset="cubes", device="cpu", test_batch=4),
        out=tmp_path,
        device=torch.device("cpu"),
        datasets={"test": dataset},
        model=Sign(),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, []),
        generators={"data": torch.Generator()},
    )
    metrics = trainer.metrics(trainer.evaluate("test"))
    a, b = _cube(2), _cube()
    shifted = 2 * (a & b).sum() / (a.sum() + b.sum())  # 2|A∩B| / (|A| + |B|) = 2/3
    expected = {"perfect": 1.0, "shifted": shifted, "both_empty": 1.0, "missed": 0.0}
    assert metrics["dice_per_volume"] == pytest.approx(expected, abs=1e-6)
    assert metrics["dice"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    hd = metrics["hd95_per_volume"]
    assert hd["perfect"] == 0.0
    assert hd["shifted"] == pytest.approx(_hd95(a, b, spacing), abs=1e-5)
    assert hd["both_empty"] is None and hd["missed"] is None  # undefined: null, not NaN
    assert metrics["hd95"] == pytest.approx((0.0 + hd["shifted"]) / 2)
    assert len(trainer.pictured) == 4  # the test slices of the picture


def test_training_score_is_the_mean_slice_dice():
    truth = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    truth[0, 0, :2] = 1  # 8 pixels
    truth[2, 0, 0, 0] = 1
    predicted = truth.clone()
    predicted[0, 0, 0] = 0  # 4 of the 8 found: Dice 2*4 / (4 + 8)
    predicted[2, 0, 0, 0] = 0  # missed: Dice 0; slice 1: both empty, Dice 1
    logits = torch.cat([1 - predicted, predicted], 1).float()
    score = SegmentationTrainer._correct(logits, truth, "segmentation")
    assert score == pytest.approx(8 / 12 + 1 + 0)


def test_slice_batches_repeat_from_the_generator_with_or_without_workers():
    from augmentbn.data import build_dataset
    from augmentbn.data.slice_loader import SliceLoader

    dataset = build_dataset("seg_demo", split="val", image_size=16).prepare(num_workers=1)

    def epoch(workers):
        loader = SliceLoader(
            dataset, 3, generator=torch.Generator().manual_seed(5), num_workers=workers
        )
        return list(loader), len(loader)

    batches, length = epoch(0)
    # 4 volumes x 4 slices = 16 = 5 x 3 + 1: a last batch of one slice is dropped (BatchNorm)
    assert length == len(batches) == 5
    assert all(images.shape == (3, 1, 16, 16) for images, _ in batches)
    for (images, labels), (again_images, again_labels) in zip(batches, epoch(2)[0], strict=True):
        assert torch.equal(images, again_images) and torch.equal(labels, again_labels)


# -- resume, compare ---------------------------------------------------------------------------


def test_resume_is_exact(tmp_path):
    common = dict(norm="nabn", placement="paper", noise="uniform", theta=0.3)
    train(seg_config(tmp_path, "straight", epochs=2, **common))
    train(seg_config(tmp_path, "resumed", epochs=1, **common))
    train(seg_config(tmp_path, "resumed", epochs=2, **common), resume=True)
    straight = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed/last.pt")["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    metrics = [
        json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("straight", "resumed")
    ]
    assert metrics[0]["final"] == metrics[1]["final"]


def _summary_cells(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[1].isdigit():
            mean, std = (float(v) for v in cells[3].split("±"))
            rows[cells[0]] = (int(cells[2]), mean, std, cells)
    return rows


def test_compare_reports_mean_dice_with_paired_intervals(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "seg_demo", "--epochs", "1", *SMALL]
    argv += ["--norms", "bn", "nabn", "--seeds", "0", "1", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"test_dice", "test_hd95", "val_dice"} <= set(rows[0])
    for row in rows:
        run = json.loads(Path(row["run_dir"], "metrics.json").read_text())
        assert float(row["test_dice"]) == pytest.approx(run["final"]["test"]["dice"])
    text = (out / "summary.md").read_text()
    assert "| test Dice |" in text and "Δ Dice vs BN" in text and "SYNTHETIC" in text
    summary = _summary_cells(text)
    dice = {
        norm: {r["seed"]: float(r["test_dice"]) for r in rows if r["norm"] == norm}
        for norm in ("bn", "nabn")
    }
    for norm in ("bn", "nabn"):
        n, mean, std, cells = summary[norm]
        assert n == 2
        assert mean == pytest.approx(statistics.fmean(dice[norm].values()), abs=5e-5)
        assert std == pytest.approx(statistics.stdev(dice[norm].values()), abs=5e-5)
    diffs = [dice["nabn"][s] - dice["bn"][s] for s in ("0", "1")]
    cells = summary["nabn"][3]
    mean_diff, low, high = (float(v) for v in re.findall(r"[-+]\d\.\d{4}", cells[-4]))
    assert mean_diff == pytest.approx(statistics.fmean(diffs), abs=5e-5)
    half = 12.706205 * statistics.stdev(diffs) / 2**0.5  # t(0.975, 1) · sd / sqrt(2)
    assert (low, high) == pytest.approx((mean_diff - half, mean_diff + half), abs=1e-4)
    assert (out / "comparison.png").is_file()
    capsys.readouterr()


# -- the paper's preset ------------------------------------------------------------------------


def test_paper_preset_builds_the_unet_with_uniform_nabn_in_every_batchnorm():
    from augmentbn.train.engine import build_model
    from augmentbn.train.tasks import check_task_options

    values = load_preset("nabn_msd_liver_unet")
    config = TrainConfig.from_dict(values).validate()
    assert (config.dataset, config.optimizer, config.lr, config.train_batch, config.epochs) == (
        "msd_liver",
        "adam",
        1e-4,
        4,
        200,
    )
    assert (config.norm, config.noise, config.theta, config.image_size) == (
        "nabn",
        "uniform",
        0.3,
        256,
    )
    info = DatasetInfo("msd_liver", "segmentation", 2, 1, 256, (0.0,), (1.0,), ("bg", "fg"))
    check_task_options(config, info)
    model = build_model(config, info)
    plain = build_model(TrainConfig.from_dict(load_preset("bn_msd_liver_unet")), info)
    batch_norms = [n for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 18  # two per double convolution, nine double convolutions
    layers = dict(model.named_modules())
    for name in batch_norms:
        layer = layers[name]
        assert type(layer) is AugmentBatchNorm2d, name
        assert (layer.noise, layer.theta) == ("uniform", 0.3), name
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.inc.conv1.out_channels == 64 and model.outc.out_channels == 2


# -- options that do not fit the task -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "-a", "unet"], r"-a unet is a segmentation network .*'digits' is a classif"),
        (["train", "--dataset", "seg_demo"], r"'seg_demo' is a segmentation task.*-a unet"),
        (["train", "--preset", "seg_demo", "--image-size", "8"], r"at least 16x16 px.*is 8"),
        (["train", "--preset", "seg_demo", "--image-size", "24"], r"multiple of 16.*is 24"),
        (["train", "--base-width", "8"], r"base_width sets the U-Net's width"),
        (["train", "--preset", "seg_demo", "--depth", "56"], r"--depth set the CIFAR ResNet"),
    ],
)
def test_options_of_the_other_task_are_refused_before_training(argv, match, tmp_path, capsys):
    assert main([*argv, "--device", "cpu", "-c", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err
    assert not (tmp_path / "x" / "last.pt").exists()


def test_missing_monai_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")]:
        monkeypatch.setitem(sys.modules, name, None)
    argv = ["train", "--preset", "seg_demo", "--device", "cpu", "-c", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install 'augmentbn[seg]'" in err and "Traceback" not in err
