"""Normalization layers by name and dimensionality (as timm's ``create_norm_layer`` and MONAI's
``Norm[name, spatial_dims]``), so that a network takes its normalization as an argument.

The names, aliases, classes and argument checks all come from the method registry
(:mod:`augmentbn.methods`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from torch import nn

from ..methods import get_method, list_methods

__all__ = [
    "NORM_LAYERS",
    "create_norm_layer",
    "default_num_groups",
    "get_norm_layer",
    "group_norm",
    "list_norm_layers",
]

NormLayer = Callable[[int], nn.Module]

NORM_LAYERS = tuple(list_methods(backend="torch"))
"""The canonical names: BatchNorm, AugmentBN (NABN), IEBN, GroupNorm, InstanceNorm."""


def list_norm_layers() -> list[str]:
    return list_methods(backend="torch")


def default_num_groups(num_channels: int, max_groups: int = 32) -> int:
    """``gcd(num_channels, 32)``: 32 groups (Wu & He's default) where the channels allow it."""
    return math.gcd(num_channels, max_groups)


def group_norm(num_features: int, num_groups: int | None = None, **kwargs) -> nn.GroupNorm:
    """``nn.GroupNorm`` taking the channels first, as every other norm layer does."""
    return nn.GroupNorm(num_groups or default_num_groups(num_features), num_features, **kwargs)


def get_norm_layer(name: str | NormLayer, spatial_dims: int = 2, **kwargs) -> NormLayer:
    """Return a callable ``f(num_features) -> nn.Module`` for the normalization ``name``.

    ``name`` is a registered method (:func:`augmentbn.methods.list_methods`, or an alias such as
    ``"augmentbn"``), or a class or callable, which is returned with ``kwargs`` bound.
    ``spatial_dims`` picks the 1d/2d/3d class. ``kwargs`` reach the layer, checked by the
    registry: ``theta``/``noise`` for NABN, ``num_groups`` for GroupNorm, ``eps``, ...
    InstanceNorm is created with ``affine=True`` unless told otherwise, to stand in for BatchNorm.
    """
    if not isinstance(name, str):
        return functools.partial(name, **kwargs) if kwargs else name
    return get_method(name).layer("torch", spatial_dims, **kwargs)


def create_norm_layer(
    name: str | NormLayer, num_features: int, spatial_dims: int = 2, **kwargs
) -> nn.Module:
    """``get_norm_layer(name, spatial_dims, **kwargs)(num_features)``."""
    return get_norm_layer(name, spatial_dims, **kwargs)(num_features)
