"""CAM grids of trained runs: ``augmentbn cam`` and the grids ``augmentbn compare`` writes.

Every run draws the same images of the same split: runs whose datasets, image sizes or splits
differ (digits' split depends on the run's seed) are refused with both named. A run is a run
folder (its ``best.pt``), a ``.pt`` checkpoint, or a ``compare`` output folder, which gives one
run per norm at one batch size and seed.

The object region of digits is its stroke: pixels of intensity ≥ 8 of 16, i.e. ≥ 0.5 in the
``[0, 1]`` image after the bilinear upscaling to the run's size.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cam import CamComparison, CamError, compare_cams, require_grad_cam
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig

__all__ = [
    "DIGITS_STROKE",
    "LoadedRun",
    "cam_grid",
    "choose_indices",
    "load_runs",
    "resolve_runs",
    "write_compare_cams",
]

DIGITS_STROKE = 0.5
"""Digits' stroke pixels: intensity ≥ 8 of 16 (the images are ``intensity / 16``)."""

_RUN_NAME = re.compile(r"^(?P<norm>.+)-bs(?P<batch>\d+)-seed(?P<seed>\d+)$")


@dataclass
class LoadedRun:
    """A trained model with the split it is compared on."""

    label: str
    checkpoint: Path
    config: TrainConfig
    model: nn.Module
    dataset: Any  # ImageDataset

    @property
    def folder(self) -> Path:
        return self.checkpoint.parent


# --- which runs ----------------------------------------------------------------------------


def _compare_cells(folder: Path) -> dict[tuple[str, int, int], Path]:
    runs = folder / "runs"
    cells = {}
    if runs.is_dir():
        for path in runs.iterdir():
            match = _RUN_NAME.match(path.name)
            if match and path.is_dir():
                cells[(match["norm"], int(match["batch"]), int(match["seed"]))] = path
    return cells


def _norm_order(folder: Path, norms: set[str]) -> list[str]:
    """Norms in the grid's order (``results.csv``), else BN first and the rest sorted."""
    order: list[str] = []
    results = folder / "results.csv"
    if results.is_file():
        with open(results, newline="") as f:
            order = list(dict.fromkeys(row["norm"] for row in csv.DictReader(f)))
    rest = sorted(norms - set(order), key=lambda n: (n != "bn", n))
    return [n for n in order if n in norms] + rest


def _compare_runs(
    folder: Path, cells: dict[tuple[str, int, int], Path], batch_size: int | None, seed: int | None
) -> list[Path]:
    sizes = sorted({b for _, b, _ in cells})
    if batch_size is None:
        batch_size = sizes[0]
    elif batch_size not in sizes:
        raise CamError(
            f"{folder} has no runs at --batch-size {batch_size}; "
            f"it has {', '.join(map(str, sizes))}"
        )
    seeds = sorted({s for _, b, s in cells if b == batch_size})
    if seed is None:
        seed = seeds[0]
    elif seed not in seeds:
        raise CamError(
            f"{folder} has no runs with --run-seed {seed} at batch size {batch_size}; "
            f"it has seeds {', '.join(map(str, seeds))}"
        )
    norms = {n for n, b, s in cells if (b, s) == (batch_size, seed)}
    return [cells[(n, batch_size, seed)] / "best.pt" for n in _norm_order(folder, norms)]


def resolve_runs(
    paths: Sequence[str | Path], *, batch_size: int | None = None, run_seed: int | None = None
) -> list[Path]:
    """The checkpoint files that ``paths`` name: a ``.pt`` file, a run folder's ``best.pt``,
    or one ``best.pt`` per norm of a ``compare`` folder at ``batch_size`` and ``run_seed``
    (default: the smallest of each)."""
    if not paths:
        raise CamError("name at least one run folder, checkpoint or compare folder")
    checkpoints = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            checkpoints.append(path)
        elif not path.is_dir():
            raise CamError(
                f"{path} does not exist; give a run folder, a .pt file or a compare folder"
            )
        elif (path / "best.pt").is_file():
            checkpoints.append(path / "best.pt")
        elif cells := _compare_cells(path):
            checkpoints += _compare_runs(path, cells, batch_size, run_seed)
        else:
            raise CamError(
                f"{path} holds no best.pt: it is not a finished run folder (nor a compare "
                "output folder with runs/<norm>-bs<B>-seed<S>); train it first, or name a .pt file"
            )
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise CamError(f"{checkpoint.parent} holds no best.pt; is its run finished?")
    return checkpoints


# --- loading and checking --------------------------------------------------------------------


def _load(path: Path, split: str, overrides: dict[str, Any]) -> tuple[TrainConfig, Any, nn.Module]:
    from .engine import Trainer

    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"], source=str(path)).replace(**overrides)
    trainer = Trainer.create(config, splits=(split,))
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not match the model its config describes: "
            f"{str(error).splitlines()[0]}"
        ) from error
    return config, trainer.datasets[split], trainer.model


def _fingerprint(dataset: Any) -> str:
    """A hash of the split's pictures and labels (before normalization)."""
    digest = hashlib.sha256()
    digest.update(dataset.targets.numpy().tobytes())
    if isinstance(getattr(dataset, "images", None), torch.Tensor):
        digest.update(dataset.images.contiguous().numpy().tobytes())
    for path in getattr(dataset, "files", ()):
        digest.update(str(path).encode())
    return digest.hexdigest()


def _check_same_images(runs: Sequence[LoadedRun], split: str) -> None:
    first = runs[0]
    a_info = first.dataset.info
    for run in runs[1:]:
        b_info = run.dataset.info
        a, b = first.folder, run.folder
        if a_info.name != b_info.name:
            raise CamError(
                f"{a} was trained on {a_info.name} and {b} on {b_info.name}; a CAM comparison "
                "draws the same images through every run"
            )
        if a_info.image_size != b_info.image_size:
            raise CamError(
                f"{a} works at {a_info.image_size} px and {b} at {b_info.image_size} px; "
                "a CAM comparison draws the same images through every run"
            )
        if _fingerprint(first.dataset) != _fingerprint(run.dataset):
            why = ""
            if first.config.seed != run.config.seed:
                why = (
                    f" ({a_info.name}'s {split} split may depend on the run's seed: "
                    f"seed {first.config.seed} vs {run.config.seed})"
                )
            raise CamError(
                f"{a} and {b} have different {split} splits{why}; compare runs trained on the "
                "same split (same dataset, data root and seed)"
            )


def _labels(checkpoints: Sequence[Path], configs: Sequence[TrainConfig]) -> list[str]:
    """Each run's norm; where two runs share one, the norm and the run's folder name."""
    norms = [c.resolved_norm for c in configs]
    return [
        norm if norms.count(norm) == 1 else f"{norm} ({path.parent.name})"
        for norm, path in zip(norms, checkpoints)
    ]


def load_runs(
    checkpoints: Sequence[Path], *, split: str = "test", **overrides: Any
) -> list[LoadedRun]:
    """Load every checkpoint with its ``split``, and check that they all show the same
    images. ``overrides`` change config fields that do not touch the model (``data_root``,
    ``device``)."""
    loaded = [_load(Path(path), split, overrides) for path in checkpoints]
    labels = _labels(checkpoints, [config for config, _, _ in loaded])
    runs = [
        LoadedRun(label, Path(path), config, model, dataset)
        for label, path, (config, dataset, model) in zip(labels, checkpoints, loaded)
    ]
    for run in runs:
        info = run.dataset.info
        if info.task != "classification":
            raise CamError(
                f"{run.folder} is a {info.task} run ({info.name}); CAM comparisons support "
                "single-label classification runs for now"
            )
    _check_same_images(runs, split)
    return runs


# --- the grid --------------------------------------------------------------------------------


def choose_indices(size: int, n: int, seed: int, indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (checked against ``size``), else ``n`` distinct indices drawn with ``seed``."""
    if indices:
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise CamError(f"--indices {bad} out of range; the split has images 0..{size - 1}")
        return list(indices)
    if not 1 <= n <= size:
        raise CamError(f"--n must be between 1 and {size} (the split's size), got {n}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n].tolist()


def _region(dataset: Any, display: torch.Tensor) -> tuple[np.ndarray | None, str, str]:
    """The object region of each image where the data define one, its name and a short
    label for the grid."""
    if dataset.info.name == "digits":
        return (display[:, 0] >= DIGITS_STROKE).numpy(), "the digit's strokes", "on stroke"
    return None, "", ""


def cam_grid(
    runs: Sequence[LoadedRun],
    *,
    n: int = 8,
    indices: Sequence[int] | None = None,
    seed: int = 0,
    method: str = "gradcam",
    predicted: bool = False,
    target_layer: str | None = None,
    context: str = "",
) -> tuple[CamComparison, list[int]]:
    """The CAM grid of ``runs`` on the same images (``context`` ends the title's first line);
    also returns the image indices."""
    require_grad_cam()
    first = runs[0].dataset
    chosen = choose_indices(len(first), n, seed, indices)
    raw = [first.load(i) for i in chosen]
    display = torch.stack([image for image, _ in raw])
    targets = [int(target) for _, target in raw]
    batches = {}
    for run in runs:
        images = torch.stack([run.dataset.transform(image, augment=False) for image, _ in raw])
        device = next(run.model.parameters()).device
        batches[run.label] = images.to(device)
    info = first.info
    regions, region_name, region_label = _region(first, display)
    title = (
        f"{method}, {info.name} {first.split} images {', '.join(map(str, chosen))}{context}; "
        f"map of the {'predicted' if predicted else 'true'} class"
    )
    if regions is not None:
        title += (
            f"\nnumber under a map: share of CAM energy on {region_name} (they cover "
            f"{regions.mean():.0%} of the pixels: what an even map scores)"
        )
    comparison = compare_cams(
        {run.label: run.model for run in runs},
        batches,
        method=method,
        target_layer=target_layer,
        targets=targets,
        predicted=predicted,
        regions=regions,
        display=display.numpy(),
        class_names=info.class_names,
        title=title,
        region_name=region_label,
    )
    comparison.metadata.update(
        indices=chosen,
        split=first.split,
        dataset=info.name,
        region=region_name or None,
        region_share=None if regions is None else float(regions.mean()),
        runs=[str(run.checkpoint) for run in runs],
    )
    return comparison, chosen


def write_compare_cams(
    out: str | Path,
    norms: Sequence[str],
    batch_sizes: Sequence[int],
    seed: int,
    *,
    n: int = 8,
    device: str = "cpu",
) -> list[Path]:
    """``compare``'s grids: for each batch size, one column per norm (the runs of ``seed``),
    written to ``out/cams-bs<B>-seed<S>.png``."""
    from .compare import run_dir

    require_grad_cam()
    out = Path(out)
    paths = []
    for batch_size in batch_sizes:
        checkpoints = [run_dir(out, norm, batch_size, seed) / "best.pt" for norm in norms]
        runs = load_runs(checkpoints, device=device)
        comparison, _ = cam_grid(runs, n=n, context=f"; batch {batch_size}, seed {seed}")
        paths.append(comparison.save(out / f"cams-bs{batch_size}-seed{seed}.png"))
    return paths
