"""Segmentation in the engine: the 2D U-Net on slices, evaluated on whole volumes, with MONAI.

:class:`SegmentationTrainer` is the engine's :class:`~.engine.Trainer` with, for
``info.task == "segmentation"`` (:mod:`.tasks` chooses it):

- batches of random slices (:class:`~augmentbn.data.slice_loader.SliceLoader`) and MONAI's
  ``DiceLoss(softmax=True, to_onehot_y=True)`` over the 2 classes (background, foreground);
  the training score is the mean foreground Dice of the slices;
- evaluation of every volume of a split slice by slice through a sliding window of the training
  size (MONAI's ``SliceInferer`` over the axial axis, MONAI's default overlap 0.25), scored with
  MONAI's ``DiceMetric`` (foreground only; a volume whose truth and prediction are both empty
  scores 1, never NaN) and ``HausdorffDistanceMetric(percentile=95)`` in the data's voxel units
  (mm for scans; ``None`` where it is undefined, i.e. where the truth or the prediction is
  empty);
- ``metrics.json``'s ``dice`` (mean over volumes), ``dice_per_volume``, ``hd95`` (mean over the
  volumes where defined), ``hd95_per_volume``; the best epoch by val Dice; ``log.csv`` and
  ``curves.png`` with Dice; ``test_slices.png``: image, truth and prediction of a few test
  volumes, at the best epoch.

HD95 takes a distance transform per volume, so it is computed for the final metrics only, not at
every epoch's validation.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data._optional import import_optional
from .checkpoint import atomic_write
from .config import ConfigError
from .engine import EpochResult, Trainer
from .report import write_json

__all__ = ["SLICES_FILE", "SegEpochResult", "SegmentationTrainer", "write_slices"]

SLICES_FILE = "test_slices.png"
PICTURED_VOLUMES = 4


def _monai():
    return import_optional("monai", package="monai", extra="seg", purpose="Segmentation")


@dataclass
class SegEpochResult(EpochResult):
    """One split's evaluation: ``accuracy`` is the mean foreground Dice over volumes."""

    names: list[str] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    hd95: list[float | None] | None = None


class SegmentationTrainer(Trainer):
    """The engine's trainer for segmentation data sets (see the module's docstring)."""

    score_name = "dice"

    def __post_init__(self) -> None:
        super().__post_init__()
        _monai()
        self.full_metrics = True  # HD95 too; off during the epochs' validation
        self.pictured: list[dict[str, Any]] = []
        for dataset in self.datasets.values():  # load and check every volume before training
            dataset.prepare(num_workers=self.config.workers or None)

    # -- the engine's hooks ----------------------------------------------------------------

    def _loss_fn(self, train: bool = False) -> nn.Module:
        from monai.losses import DiceLoss

        return DiceLoss(softmax=True, to_onehot_y=True)

    def _loader(self, split: str, *, train: bool):
        from ..data.slice_loader import SliceLoader

        if self.dist.enabled:
            raise ConfigError(
                "segmentation trains in one process for now: its slice loader does not shard "
                "volumes across ranks; run it without torchrun (classification runs distributed)"
            )

        if not train:
            raise ValueError("segmentation evaluates whole volumes, not batches of slices")
        return SliceLoader(
            self.datasets[split],
            self.config.train_batch,
            generator=self.generators["data"],
            device=self.device,
            num_workers=self.config.workers,
        )

    @staticmethod
    def _correct(logits: torch.Tensor, targets: torch.Tensor, task: str) -> float:
        """The sum over the batch's slices of their foreground Dice (1 where truth and
        prediction are both empty)."""
        from monai.metrics import compute_dice

        predicted, truth = _one_hot(logits.argmax(1, keepdim=True)), _one_hot(targets)
        dice = compute_dice(predicted, truth, include_background=False, ignore_empty=False)
        return dice.sum().item()

    def fit(self) -> dict[str, Any]:
        self.full_metrics = False
        return super().fit()  # which calls finish(), with full metrics

    def finish(self) -> dict[str, Any]:
        self.full_metrics = True
        result = super().finish()
        # The last test evaluation in finish() is the best epoch's model.
        train = self.datasets.get("train")
        synthetic = bool(getattr(train, "synthetic", False))
        write_slices(self.out / SLICES_FILE, self.pictured, self.info.name, synthetic)
        if synthetic:
            result["synthetic"] = True
            write_json(self.out / "metrics.json", result)
        return result

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> SegEpochResult:
        from monai.inferers import SliceInferer
        from monai.metrics import DiceMetric, HausdorffDistanceMetric

        model = model or self.network
        model.eval()
        dataset = self.datasets[split]
        roi = self.info.image_size
        inferer = SliceInferer(
            spatial_dim=2, roi_size=(roi, roi), sw_batch_size=self.config.test_batch
        )
        loss_fn = self._loss_fn()
        dice_metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        hd95_metric = HausdorffDistanceMetric(
            include_background=False, percentile=95, reduction="none"
        )
        losses, hd95 = [], []
        pictured = []
        for index in range(len(dataset)):
            volume = dataset.volume(index)
            image = volume["image"][None].to(self.device)
            truth = volume["label"][None].to(self.device).long()
            with self._autocast():
                logits = inferer(image, lambda x: model(self._prepare(x))).float()
            losses.append(loss_fn(logits, truth).item())
            predicted = logits.argmax(1, keepdim=True)
            one_hot_pred, one_hot_truth = _one_hot(predicted), _one_hot(truth)
            dice_metric(y_pred=one_hot_pred, y=one_hot_truth)
            if self.full_metrics:
                with _quiet_undefined_distance():
                    value = hd95_metric(
                        y_pred=one_hot_pred, y=one_hot_truth, spacing=dataset.spacing
                    )
                value = float(value.flatten()[0])
                hd95.append(value if math.isfinite(value) else None)
            if split == "test" and index < PICTURED_VOLUMES:
                pictured.append(_pictured_slice(volume, predicted[0, 0].cpu()))
        dice = dice_metric.aggregate().flatten().cpu().tolist()
        if split == "test":
            self.pictured = pictured
        return SegEpochResult(
            loss=float(np.mean(losses)),
            accuracy=float(np.mean(dice)),
            names=dataset.names,
            dice=dice,
            hd95=hd95 if self.full_metrics else None,
        )

    def metrics(self, result: SegEpochResult) -> dict[str, Any]:
        defined = [v for v in result.hd95 or () if v is not None]
        metrics: dict[str, Any] = {
            "loss": result.loss,
            "dice": result.accuracy,
            "dice_per_volume": dict(zip(result.names, result.dice, strict=True)),
            "volumes": len(result.names),
        }
        if result.hd95 is not None:
            metrics["hd95"] = float(np.mean(defined)) if defined else None
            metrics["hd95_per_volume"] = dict(zip(result.names, result.hd95, strict=True))
        return metrics


def _one_hot(labels: torch.Tensor) -> torch.Tensor:
    from monai.networks.utils import one_hot

    return one_hot(labels, num_classes=2, dim=1)


@contextlib.contextmanager
def _quiet_undefined_distance():
    """MONAI warns for every empty truth or prediction (HD95 undefined, returned as inf/NaN;
    the metrics say ``null`` instead), and about a deprecated argument of its own internals."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf")
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        yield


def _pictured_slice(volume: dict[str, Any], predicted: torch.Tensor) -> dict[str, Any]:
    """The axial slice of ``volume`` with the most foreground (the middle one if none)."""
    truth = volume["label"][0]
    area = truth.flatten(0, 1).sum(0)
    z = int(area.argmax()) if area.max() > 0 else truth.shape[-1] // 2
    return {
        "name": volume["name"],
        "z": z,
        "image": volume["image"][0, :, :, z].numpy(),
        "truth": truth[:, :, z].numpy(),
        "predicted": predicted[:, :, z].numpy(),
    }


def write_slices(path, pictured: list[dict[str, Any]], dataset: str, synthetic: bool) -> None:
    """A grid with one row per pictured volume: image, ground truth, prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(pictured))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, item in zip(axes, pictured):
        panels = (item["image"], item["truth"], item["predicted"])
        titles = (f"{item['name']} z={item['z']}", "ground truth", "prediction")
        for ax, panel, title in zip(row, panels, titles):
            mask = panel is not item["image"]
            ax.imshow(
                panel.T,
                cmap="viridis" if mask else "gray",
                vmin=0 if mask else None,
                vmax=1 if mask else None,
                origin="lower",
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    kind = " (SYNTHETIC data)" if synthetic else ""
    height = fig.get_figheight()
    fig.suptitle(f"{dataset}{kind}: test volumes, best epoch", fontsize=10, y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.65 / height, hspace=0.25)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
