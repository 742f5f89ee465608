"""Which trainer runs a data set's task, and the options that belong to one task only.

The engine (:class:`~.engine.Trainer`) trains classification and multi-label tasks;
segmentation data sets (``info.task == "segmentation"``) are trained by
:class:`~.segmentation.SegmentationTrainer`, a subclass that changes the loss, the batches, the
evaluation and the metrics. :func:`trainer_class` chooses, after checking that the options fit
the task (a clear :class:`~.config.ConfigError` before anything trains).
"""

from __future__ import annotations

import dataclasses

from .config import ConfigError, TrainConfig

__all__ = ["SEGMENTATION_ARCHS", "UNET_MULTIPLE", "check_task_options", "trainer_class"]

SEGMENTATION_ARCHS = ("unet", "unet3d")
UNET_MULTIPLE = 16
"""The U-Net halves its input four times: slices must be a multiple of 16 px, at least 16."""

_RESNET_OPTIONS = ("depth", "block_name")


def _defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def check_task_options(config: TrainConfig, info) -> None:
    """Raise :class:`ConfigError` where ``config`` does not fit ``info.task``: a classifier
    on a segmentation data set or the reverse, an option of the other task's model, a U-Net
    window that its four downsamplings cannot take."""
    arch, defaults = config.resolved_arch, _defaults()
    if info.task != "segmentation":
        if arch in SEGMENTATION_ARCHS:
            raise ConfigError(
                f"-a {config.arch} is a segmentation network (one prediction per pixel) and "
                f"dataset {info.name!r} is a {info.task} task; train a classifier (resnet, "
                "resnet50, ...) on it, or the U-Net on a segmentation dataset (seg_demo, "
                "msd_liver, msd_<task>)"
            )
        if config.base_width is not None:
            raise ConfigError(
                f"base_width sets the U-Net's width, a segmentation option; dataset "
                f"{info.name!r} is a {info.task} task (remove --base-width)"
            )
        return
    if arch != "unet":
        hint = (
            "the 3D U-Net is not trained by the slice-wise engine yet"
            if arch == "unet3d"
            else f"-a {config.arch} is a classifier"
        )
        raise ConfigError(
            f"dataset {info.name!r} is a segmentation task, trained on 2D slices by -a unet; "
            f"{hint}. Use -a unet (e.g. --preset seg_demo or nabn_msd_liver_unet)"
        )
    changed = [k for k in _RESNET_OPTIONS if getattr(config, k) != defaults[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"{flags} set the CIFAR ResNet of classification runs and do not apply to the U-Net "
            f"of segmentation dataset {info.name!r}; its width is --base-width"
        )
    size = info.image_size
    if size < UNET_MULTIPLE or size % UNET_MULTIPLE:
        raise ConfigError(
            f"the U-Net halves its input four times, so its slices must be at least "
            f"{UNET_MULTIPLE}x{UNET_MULTIPLE} px and a multiple of {UNET_MULTIPLE}; image_size "
            f"is {size}. Use --image-size {max(UNET_MULTIPLE, size // UNET_MULTIPLE * 16)} "
            "(the paper uses 256)"
        )


def trainer_class(base: type, config: TrainConfig, info) -> type:
    """``base`` (the engine's trainer) or the segmentation trainer, for ``info.task``."""
    check_task_options(config, info)
    if info.task == "segmentation":
        from .segmentation import SegmentationTrainer

        return SegmentationTrainer
    return base
