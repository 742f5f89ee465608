"""Models by name: ``register_model``, ``list_models`` and ``create_model`` (timm-style).

A builder is a function ``builder(*, num_classes, in_chans, norm_layer, **model_kwargs)`` that
returns an ``nn.Module``; ``norm_layer`` is a callable ``num_features -> nn.Module`` or ``None``
for plain BatchNorm of the model's dimensionality.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..convert import PLACEMENTS, convert_norm
from ..layers import get_norm_layer

__all__ = ["create_model", "list_models", "register_model"]

NormSpec = str | type[nn.Module] | Callable[[int], nn.Module]
Builder = Callable[..., nn.Module]

_CONVERTED_NORMS = ("nabn", "iebn")  # built with BatchNorm, then converted (placement applies)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    spatial_dims: int


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str | None = None, *, spatial_dims: int = 2
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` (default: the function's name).

    ``spatial_dims`` is the dimensionality of the model's feature maps (2 for images, 3 for
    volumes); ``create_model`` asks ``get_norm_layer`` for layers of that dimensionality.
    """

    def decorator(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"a model named {key!r} is already registered")
        _REGISTRY[key] = _Entry(builder, spatial_dims)
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern."""
    names = sorted(_REGISTRY)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(
    name: str,
    *,
    norm: NormSpec = "bn",
    num_classes: int,
    in_chans: int = 3,
    placement: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    **norm_kwargs: Any,
) -> nn.Module:
    """Build the model ``name`` with the normalization ``norm``.

    Args:
        name: one of :func:`list_models`.
        norm: ``"bn"``, ``"nabn"``, ``"iebn"``, ``"gn"``, ``"in"``, or a layer class or callable
            ``num_features -> nn.Module`` used for every normalization layer.
        num_classes: number of output classes (segmentation: output channels).
        in_chans: number of input channels (1 for grayscale scans).
        placement: for ``"nabn"`` and ``"iebn"``, where the layer goes: ``"paper"`` (default;
            NABN: stem BN, last BN of each block and shortcut BNs; IEBN: every BN except the
            shortcut's) or ``"all"``. Other norms replace every layer; only ``"all"`` applies.
        model_kwargs: extra arguments of the model's builder (e.g. ``{"base_width": 32}`` for
            the U-Net, ``{"weights": ...}`` for torchvision's ResNets).
        **norm_kwargs: arguments of the normalization layer (``theta``, ``noise``,
            ``num_groups``, ``eps``, ``momentum``, ...).
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    model_kwargs = dict(model_kwargs or {})
    spatial_dims = model_kwargs.get("spatial_dims", entry.spatial_dims)
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS} or None, got {placement!r}")

    key = norm.lower() if isinstance(norm, str) else None
    if key in _CONVERTED_NORMS:
        model = entry.builder(
            num_classes=num_classes, in_chans=in_chans, norm_layer=None, **model_kwargs
        )
        return convert_norm(model, key, placement=placement or "paper", **norm_kwargs)
    if placement == "paper":
        raise ValueError(
            f"placement='paper' applies to norm='nabn' or 'iebn' only, got norm={norm!r}; "
            "use placement=None or 'all'"
        )
    norm_layer = get_norm_layer(norm, spatial_dims=spatial_dims, **norm_kwargs)
    return entry.builder(
        num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer, **model_kwargs
    )
