"""``augmentbn export``: a run's checkpoint as an inference file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..export import ExportError, export_model, load_exported, max_difference
from ..folding import fold as fold_model
from .engine import load_run

__all__ = ["export_checkpoint"]

CHECK_IMAGES = 32
"""How many test images the check runs (a batch size other than the example's 2, so that it
tests the dynamic batch axis too)."""


def _tolerance(reference: torch.Tensor) -> float:
    """What float32 rounding leaves between two implementations of the same network (and a
    folded one), relative to its outputs' scale."""
    return 1e-4 * max(1.0, reference.abs().max().item())


def export_checkpoint(
    path: str | Path,
    format: str,
    out: str | Path,
    *,
    fold: bool = False,
    check: bool = True,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Export the model of the checkpoint at ``path`` to ``out`` in ``format`` (see
    :data:`augmentbn.export.FORMATS`); return what was done.

    The run's test data (under ``data_root`` if given, else the run's own) gives the example
    batch (its first 2 images) and, unless ``check=False``, the check: the exported file run on
    the first :data:`CHECK_IMAGES` test images against the PyTorch model, whose largest
    difference is returned and must stay within float32 rounding. ``fold=True`` exports
    :func:`augmentbn.fold`'s copy (the check still compares with the unfolded model).
    Raises :class:`ExportError` (also for what ``fold`` refuses).
    """
    overrides: dict[str, Any] = {"device": "cpu"}
    if data_root is not None:
        overrides["data_root"] = data_root
    trainer, state = load_run(path, ("test",), **overrides)
    model = trainer.model.eval()
    images = _test_images(trainer)
    exported = model
    if fold:
        try:
            exported = fold_model(model)
        except ValueError as error:
            raise ExportError(f"--fold: {error}") from error
    export_model(exported, images[:2], out, format)
    result: dict[str, Any] = {
        "out": str(out),
        "format": format,
        "folded": fold,
        "epoch": state["epoch"],
    }
    if check:
        difference = max_difference(model, load_exported(out, format), images)
        with torch.no_grad():
            tolerance = _tolerance(model(images))
        result.update(checked_images=len(images), max_difference=difference, tolerance=tolerance)
        if not difference <= tolerance:
            raise ExportError(
                f"{out} differs from the PyTorch model by up to {difference:.3g} on "
                f"{len(images)} test images (tolerance {tolerance:.3g}); the file was written, "
                "but do not trust it"
            )
    return result


def _test_images(trainer) -> torch.Tensor:
    from ..data import build_loader

    dataset = trainer.datasets["test"]
    loader = build_loader(dataset, CHECK_IMAGES, train=False, device=torch.device("cpu"))
    images, _ = next(iter(loader))
    if images.shape[0] < 2:
        raise ExportError(
            f"the run's test split has {images.shape[0]} image(s); export needs at least 2"
        )
    return images
