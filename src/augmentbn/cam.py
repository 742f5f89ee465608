"""Class activation maps of several models on the same images, side by side (``grad-cam``).

:func:`compare_cams` runs one ``pytorch_grad_cam`` method (Grad-CAM by default) through each
model and returns a :class:`CamComparison`: per model the maps (``N×H×W``, in ``[0, 1]``), the
predictions and their softmax confidence, the share of CAM energy inside a known object region,
and a figure with one row per image: the input, then one column per model.

Share of energy in a region (the "energy-based pointing game" of Wang et al., Score-CAM,
CVPR Workshops 2020): for a map ``L ≥ 0`` and a region ``R``, ``Σ_{p∈R} L(p) / Σ_p L(p)``. A map
spread evenly over the image scores the region's share of the pixels; one inside it scores 1.

Needs the ``grad-cam`` package: ``pip install "augmentbn[cam]"``.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data._optional import import_optional

__all__ = [
    "METADATA_KEY",
    "CamColumn",
    "CamComparison",
    "CamError",
    "compare_cams",
    "compute_cams",
    "default_target_layer",
    "get_cam_method",
    "list_cam_methods",
    "plot_cam_grid",
    "predict",
    "read_grid_metadata",
    "region_energy",
    "require_grad_cam",
    "resolve_target_layer",
]

METADATA_KEY = "augmentbn-cam"
"""The PNG text chunk holding a grid's layout (rows, cols, labels, predictions, energies)."""

# ``--method gradcam++`` reads better than the class name ``GradCAMPlusPlus``.
_ALIASES = {"gradcam++": "gradcamplusplus"}

# The layer whose activations and gradients make the map: the last stage of the backbone
# (the last feature map before global pooling), by model class.
_TARGET_LAYERS = {
    "augmentbn.models.resnet_cifar.CifarResNet": "layer3",  # CIFAR ResNets and ResNeXt
    "torchvision.models.resnet.ResNet": "layer4",  # resnet18/34/50
}
_SEGMENTATION_MODELS = ("augmentbn.models.unet.UNet",)


class CamError(ValueError):
    """A CAM request that cannot be served; the message says what is valid."""


def require_grad_cam() -> Any:
    """The ``pytorch_grad_cam`` module, or ImportError naming ``pip install "augmentbn[cam]"``."""
    return import_optional(
        "pytorch_grad_cam", package="grad-cam", extra="cam", purpose="Grad-CAM comparison"
    )


def _methods() -> dict[str, type]:
    grad_cam = require_grad_cam()
    from pytorch_grad_cam.base_cam import BaseCAM

    return {
        name.lower(): cls
        for name, cls in vars(grad_cam).items()
        if isinstance(cls, type) and issubclass(cls, BaseCAM)
    }


def list_cam_methods() -> list[str]:
    """The ``pytorch_grad_cam`` methods by lower-cased class name (``gradcam``,
    ``gradcamplusplus`` also spelled ``gradcam++``, ``hirescam``, ``scorecam``, ...)."""
    return sorted(_methods())


def get_cam_method(name: str) -> type:
    """The ``pytorch_grad_cam`` class named ``name`` (lower case); CamError lists the valid ones."""
    methods = _methods()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in methods:
        raise CamError(
            f"unknown CAM method {name!r}; valid: {', '.join(sorted(methods))} "
            f"(also {', '.join(_ALIASES)})"
        )
    return methods[key]


def _class_key(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _layer_choices(model: nn.Module) -> list[str]:
    """Module names two levels deep (``layer3``, ``layer3.2``), for error messages."""
    return [name for name, _ in model.named_modules() if name and name.count(".") <= 1]


def default_target_layer(model: nn.Module) -> str:
    """The name of the layer Grad-CAM reads in ``model``: the backbone's last stage.

    Every classifier of :func:`augmentbn.models.create_model` has one (``layer3`` for the CIFAR
    ResNets and ResNeXt, ``layer4`` for torchvision's); the U-Net raises CamError until
    segmentation CAMs exist; other models need an explicit ``target_layer``.
    """
    key = _class_key(model)
    if key in _TARGET_LAYERS:
        return _TARGET_LAYERS[key]
    if key in _SEGMENTATION_MODELS:
        raise CamError(
            f"{type(model).__name__} is a segmentation model; CAMs for segmentation are not "
            "supported yet (they come with the segmentation task)"
        )
    raise CamError(
        f"no default target layer for {type(model).__name__}; pass target_layer "
        f"(--target-layer), e.g. one of: {', '.join(_layer_choices(model))}"
    )


def resolve_target_layer(
    model: nn.Module, target_layer: str | nn.Module | None = None
) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``target_layer`` (a dotted module name or a submodule of
    ``model``), or of :func:`default_target_layer` when it is None."""
    if isinstance(target_layer, nn.Module):
        for name, module in model.named_modules():
            if module is target_layer:
                return name, module
        raise CamError(f"target_layer is not a submodule of {type(model).__name__}")
    name = target_layer or default_target_layer(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise CamError(
            f"{type(model).__name__} has no layer {name!r}; valid: "
            f"{', '.join(_layer_choices(model))} (or any deeper name of model.named_modules())"
        ) from None


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and their softmax probabilities, with ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        probs = torch.softmax(model(images.to(device)).float(), dim=1).cpu()
    finally:
        model.train(was_training)
    conf, pred = probs.max(dim=1)
    return pred.numpy(), conf.numpy()


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int],
    *,
    method: str = "gradcam",
    target_layer: str | nn.Module | None = None,
) -> np.ndarray:
    """CAMs of ``model`` (in eval mode) for ``classes[i]`` on ``images[i]``: ``N×H×W`` float32
    in ``[0, 1]`` (each map scaled by its maximum, as ``pytorch_grad_cam`` does).

    ``model`` is left in the mode it was in, with its parameters' ``.grad`` set to None.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = get_cam_method(method)
    _, layer = resolve_target_layer(model, target_layer)
    if len(classes) != len(images):
        raise CamError(f"{len(images)} images but {len(classes)} target classes")
    was_training = model.training
    cam = cam_class(model=model, target_layers=[layer])  # sets eval mode
    try:
        maps = cam(images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def region_energy(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share of each map's energy inside its region: ``Σ_R L / Σ L`` per image.

    ``maps`` is ``N×H×W`` (non-negative), ``regions`` a boolean ``N×H×W``; a map that is zero
    everywhere has no energy to share and gives NaN.
    """
    maps = np.asarray(maps, dtype=np.float64)
    regions = np.asarray(regions, dtype=bool)
    if maps.shape != regions.shape:
        raise CamError(f"maps {maps.shape} and regions {regions.shape} differ in shape")
    if (maps < 0).any():
        raise CamError("CAM maps must be non-negative to share out their energy")
    axes = tuple(range(1, maps.ndim))
    total = maps.sum(axis=axes)
    inside = np.where(regions, maps, 0.0).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


@dataclass
class CamColumn:
    """One model's column of a grid."""

    label: str
    maps: np.ndarray  # N×H×W in [0, 1]
    predictions: np.ndarray  # N
    confidences: np.ndarray  # N, softmax probability of the prediction
    energy: np.ndarray | None = None  # N, share of CAM energy in the region

    @property
    def mean_energy(self) -> float | None:
        return None if self.energy is None else float(np.nanmean(self.energy))


@dataclass
class CamComparison:
    """What :func:`compare_cams` returns: the columns, the figure and its metadata."""

    columns: list[CamColumn]
    figure: Any  # a matplotlib Figure (made without pyplot; a notebook shows it as a value)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        return {c.label: c.maps for c in self.columns}

    @property
    def energy(self) -> dict[str, np.ndarray | None]:
        return {c.label: c.energy for c in self.columns}

    def save(self, path: str | Path, *, dpi: int = 100) -> Path:
        """Write the figure as PNG (atomically), with :attr:`metadata` in a text chunk."""
        from .train.checkpoint import atomic_write

        path = Path(path)
        text = {METADATA_KEY: json.dumps(self.metadata)}
        atomic_write(
            path, lambda tmp: self.figure.savefig(tmp, format="png", dpi=dpi, metadata=text)
        )
        return path


def read_grid_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :meth:`CamComparison.save` wrote into the PNG at ``path``."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(METADATA_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise CamError(f"{path} holds no {METADATA_KEY!r} metadata; was it written by augmentbn?")
    return json.loads(text)


def _display(images: torch.Tensor) -> np.ndarray:
    """Each image scaled to ``[0, 1]`` by its own range, for drawing."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12)).numpy()


def plot_cam_grid(
    display: np.ndarray,
    columns: Sequence[CamColumn],
    *,
    targets: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    region_name: str = "region",
) -> Any:
    """The grid figure: one row per image; the input, then one column per model.

    ``display`` is ``N×C×H×W`` in ``[0, 1]``; one channel is drawn in gray under the map. A cell
    is titled with the prediction and its confidence, in red with ✗ where it differs from
    ``targets``; the share of energy in the region, where known, is written under it.
    """
    from matplotlib.figure import Figure  # not pyplot: no backend, nothing to close

    n, cols = len(display), 1 + len(columns)
    name = (lambda k: class_names[k]) if class_names else str
    fig = Figure(figsize=(1.75 * cols, 1.75 * n + 0.9), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for row in range(n):
        image = display[row]
        base = image[0] if image.shape[0] != 3 else image.transpose(1, 2, 0)
        gray = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.shape[0] != 3 else {}
        axes[row, 0].imshow(base, **gray)
        if targets is not None:
            axes[row, 0].set_title(f"true {name(int(targets[row]))}", fontsize=9)
        for col, column in enumerate(columns, 1):
            ax = axes[row, col]
            ax.imshow(base, **gray)
            ax.imshow(column.maps[row], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            pred = int(column.predictions[row])
            wrong = targets is not None and pred != int(targets[row])
            text = f"{name(pred)} ({column.confidences[row]:.0%})" + (" ✗" if wrong else "")
            ax.set_title(text, fontsize=9, color="red" if wrong else "black")
            if wrong:
                for spine in ax.spines.values():
                    spine.set(color="red", linewidth=2)
            if column.energy is not None:
                share = column.energy[row]
                value = "— (empty map)" if np.isnan(share) else f"{share:.2f}"
                ax.set_xlabel(f"{region_name} {value}", fontsize=8)
    for row_axes in axes:
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    headers = ["input"] + [
        c.label if c.energy is None else f"{c.label}\n{region_name} {c.mean_energy:.2f}"
        for c in columns
    ]
    for ax, header in zip(axes[0], headers):
        ax.annotate(
            header,
            (0.5, 1.0),
            xycoords="axes fraction",
            xytext=(0, 18),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
        )
    if title:
        width = max(30, int(1.75 * cols * 11))  # characters per line at 10 pt
        lines = [textwrap.fill(line, width) for line in title.splitlines()]
        fig.suptitle("\n".join(lines), fontsize=10)
    return fig


def compare_cams(
    models: Mapping[str, nn.Module],
    images: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    method: str = "gradcam",
    target_layer: str | nn.Module | Mapping[str, str | nn.Module] | None = None,
    targets: Sequence[int] | torch.Tensor | None = None,
    predicted: bool = False,
    regions: np.ndarray | torch.Tensor | None = None,
    display: np.ndarray | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    region_name: str = "in region",
) -> CamComparison:
    """CAMs of every model on the same images, and the grid figure.

    Args:
        models: label → model (e.g. ``{"bn": bn_model, "nabn": nabn_model}``).
        images: the ``N×C×H×W`` batch the models take (normalized), or label → batch where the
            models normalize differently (the same pictures).
        method: a ``pytorch_grad_cam`` class name in lower case (:func:`list_cam_methods`).
        target_layer: a module name or module (or label → one); default
            :func:`default_target_layer`.
        targets: the true classes. The map explains the true class, or the predicted one when
            ``predicted`` is true or ``targets`` is None; wrong predictions are marked.
        regions: boolean ``N×H×W`` object regions (a mask, digits' strokes); gives each model's
            share of CAM energy inside them (:func:`region_energy`).
        display: ``N×C×H×W`` in ``[0, 1]`` to draw under the maps (default: ``images`` rescaled
            per image); one channel is drawn in gray.
    """
    if not models:
        raise CamError("compare_cams needs at least one model")
    batches = dict(images) if isinstance(images, Mapping) else dict.fromkeys(models, images)
    missing = [label for label in models if label not in batches]
    if missing:
        raise CamError(f"no images for {', '.join(missing)}")
    first = next(iter(batches.values()))
    if targets is not None:
        targets = [int(t) for t in targets]
        if len(targets) != len(first):
            raise CamError(f"{len(first)} images but {len(targets)} targets")
    if regions is not None:
        regions = np.asarray(regions, dtype=bool)
    layers = (
        dict(target_layer)
        if isinstance(target_layer, Mapping)
        else dict.fromkeys(models, target_layer)
    )
    columns = []
    for label, model in models.items():
        batch = batches[label]
        predictions, confidences = predict(model, batch)
        classes = predictions if predicted or targets is None else targets
        maps = compute_cams(model, batch, classes, method=method, target_layer=layers.get(label))
        energy = None if regions is None else region_energy(maps, regions)
        columns.append(CamColumn(label, maps, predictions, confidences, energy))
    display = _display(first) if display is None else np.asarray(display, dtype=np.float32)
    figure = plot_cam_grid(
        display,
        columns,
        targets=targets,
        class_names=class_names,
        title=title,
        region_name=region_name,
    )
    metadata = {
        "rows": len(first),
        "cols": 1 + len(columns),
        "labels": ["input"] + [c.label for c in columns],
        "method": method,
        "target_class": "predicted" if predicted or targets is None else "true",
        "targets": targets,
        "predictions": {c.label: c.predictions.tolist() for c in columns},
        "confidences": {c.label: c.confidences.tolist() for c in columns},
        "energy": {c.label: None if c.energy is None else c.energy.tolist() for c in columns},
        "energy_mean": {c.label: c.mean_energy for c in columns},
    }
    return CamComparison(columns, figure, metadata)
