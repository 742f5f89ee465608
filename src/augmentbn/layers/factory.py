"""Normalization layers by name and dimensionality (as timm's ``create_norm`` and MONAI's
``Norm[name, spatial_dims]``), so that a network takes its normalization as an argument."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from torch import nn

from .augment import AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d
from .instance_enhance import IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d

__all__ = ["NORM_LAYERS", "create_norm_layer", "get_norm_layer", "list_norm_layers"]

NormLayer = Callable[[int], nn.Module]

_BY_DIMS: dict[str, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "nabn": (AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d),
    "iebn": (IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d),
    "in": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
}
_ALIASES = {
    "batchnorm": "bn",
    "batch": "bn",
    "augmentbn": "nabn",
    "augment": "nabn",
    "gaubatchnorm": "nabn",
    "ban": "iebn",
    "instancenorm": "in",
    "instance": "in",
    "groupnorm": "gn",
    "group": "gn",
}
NORM_LAYERS = ("bn", "nabn", "iebn", "gn", "in")
"""The canonical names: BatchNorm, AugmentBN (NABN), IEBN, GroupNorm, InstanceNorm."""


def list_norm_layers() -> list[str]:
    return list(NORM_LAYERS)


def default_num_groups(num_channels: int, max_groups: int = 32) -> int:
    """``gcd(num_channels, 32)``: 32 groups (Wu & He's default) where the channels allow it."""
    return math.gcd(num_channels, max_groups)


def _group_norm(num_features: int, num_groups: int | None = None, **kwargs) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups or default_num_groups(num_features), num_features, **kwargs)


def get_norm_layer(name: str | NormLayer, spatial_dims: int = 2, **kwargs) -> NormLayer:
    """Return a callable ``f(num_features) -> nn.Module`` for the normalization ``name``.

    ``name`` is one of :data:`NORM_LAYERS` (or an alias such as ``"augmentbn"``), or a class or
    callable, which is returned with ``kwargs`` bound. ``spatial_dims`` picks the 1d/2d/3d class.
    ``kwargs`` reach the layer, e.g. ``theta``/``noise`` for NABN, ``num_groups`` for GroupNorm.
    InstanceNorm is created with ``affine=True`` unless told otherwise, to stand in for BatchNorm.
    """
    if not isinstance(name, str):
        return functools.partial(name, **kwargs) if kwargs else name
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NORM_LAYERS:
        raise ValueError(f"unknown norm {name!r}; expected one of {NORM_LAYERS} or a layer class")
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if key == "gn":
        return functools.partial(_group_norm, **kwargs)
    if key == "in":
        kwargs.setdefault("affine", True)
    return functools.partial(_BY_DIMS[key][spatial_dims - 1], **kwargs)


def create_norm_layer(
    name: str | NormLayer, num_features: int, spatial_dims: int = 2, **kwargs
) -> nn.Module:
    """``get_norm_layer(name, spatial_dims, **kwargs)(num_features)``."""
    return get_norm_layer(name, spatial_dims, **kwargs)(num_features)
