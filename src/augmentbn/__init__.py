"""augmentbn: normalization layers that regulate batch noise, for small-batch image training.

- AugmentBN / NABN (noise-assisted batch normalization): :class:`AugmentBatchNorm2d` & co.
- IEBN (instance enhancement batch normalization): :class:`IEBatchNorm2d` & co.
- :func:`convert_norm` swaps the BatchNorm layers of any model, with the papers' placement.
- :mod:`augmentbn.methods` is the registry every name, factory and placement derives from.
- :func:`fold` folds them for inference; ``augmentbn.export`` writes ONNX, pt2, TorchScript.
- :func:`convert_sync_norm` synchronizes them across processes (:func:`revert_sync_norm` undoes
  it).

The subpackages (``models``, ``data``, ``train``, ``integrations``, ``export``, ``jittor``)
load on first use: ``augmentbn.models.create_model(...)`` works after ``import augmentbn``.
"""

import importlib
from typing import Any

from . import functional, methods
from .convert import convert_norm, register_block, register_stem
from .convert_sync import convert_sync_norm, revert_sync_norm
from .folding import fold
from .layers import (
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    BAN2d,
    GauBatchNorm2d,
    IEBatchNorm1d,
    IEBatchNorm2d,
    IEBatchNorm3d,
    SyncAugmentBatchNorm1d,
    SyncAugmentBatchNorm2d,
    SyncAugmentBatchNorm3d,
    SyncIEBatchNorm1d,
    SyncIEBatchNorm2d,
    SyncIEBatchNorm3d,
    create_norm_layer,
    get_norm_layer,
)

__version__ = "0.1.0"

_LAZY = ("data", "export", "integrations", "jittor", "models", "train")


def __getattr__(name: str) -> Any:
    """Import a subpackage on first attribute access (PEP 562)."""
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "BAN2d",
    "GauBatchNorm2d",
    "IEBatchNorm1d",
    "IEBatchNorm2d",
    "IEBatchNorm3d",
    "SyncAugmentBatchNorm1d",
    "SyncAugmentBatchNorm2d",
    "SyncAugmentBatchNorm3d",
    "SyncIEBatchNorm1d",
    "SyncIEBatchNorm2d",
    "SyncIEBatchNorm3d",
    "__version__",
    "convert_norm",
    "convert_sync_norm",
    "create_norm_layer",
    "fold",
    "functional",
    "get_norm_layer",
    "methods",
    "register_block",
    "register_stem",
    "revert_sync_norm",
]
