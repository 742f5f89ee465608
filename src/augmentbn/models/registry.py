"""Models by name: ``register_model``, ``list_models`` and ``create_model`` (timm-style).

A builder is a function ``builder(*, num_classes, in_chans, norm_layer, **model_kwargs)`` that
returns an ``nn.Module``; ``norm_layer`` is a :class:`~augmentbn.methods.NormPlan` (each norm
site asks for its role) or, for builders registered with ``norm_roles=False`` (torchvision's,
which call ``norm_layer(num_features)``), a callable ``num_features -> nn.Module``.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..convert import convert_norm
from ..methods import NormPlan, resolve_placement

__all__ = ["create_model", "list_models", "register_model"]

NormSpec = str | type[nn.Module] | Callable[[int], nn.Module]
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    spatial_dims: int
    norm_roles: bool


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str | None = None, *, spatial_dims: int = 2, norm_roles: bool = True
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` (default: the function's name).

    ``spatial_dims`` is the dimensionality of the model's feature maps (2 for images, 3 for
    volumes); ``create_model`` asks for norm layers of that dimensionality. ``norm_roles``: the
    builder takes a :class:`~augmentbn.methods.NormPlan` and declares each site's role; without
    it, a paper placement is applied by :func:`~augmentbn.convert_norm` after building with
    BatchNorm (the blocks must be registered with :func:`~augmentbn.register_block`).
    """

    def decorator(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"a model named {key!r} is already registered")
        _REGISTRY[key] = _Entry(builder, spatial_dims, norm_roles)
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
        norm: a registered method (:func:`augmentbn.methods.list_methods`: ``"bn"``,
            ``"nabn"``, ``"iebn"``, ``"gn"``, ``"in"``, or an alias), or a layer class or callable
            ``num_features -> nn.Module`` used for every normalization layer.
        num_classes: number of output classes (segmentation: output channels).
        in_chans: number of input channels (1 for grayscale scans).
        placement: ``"paper"`` (the default for methods with a paper placement; NABN: stem BN,
            last BN of each block, shortcut BNs and the U-Net's BNs; IEBN: every BN except the
            shortcut's, the others plain BatchNorm) or ``"all"`` (every norm site).
        model_kwargs: extra arguments of the model's builder (e.g. ``{"base_width": 32}`` for
            the U-Net, ``{"weights": ...}`` for torchvision's ResNets).
        **norm_kwargs: arguments of the normalization layer (``theta``, ``noise``,
            ``num_groups``, ``eps``, ``momentum``, ...), checked by the method registry.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    model_kwargs = dict(model_kwargs or {})
    spatial_dims = model_kwargs.get("spatial_dims", entry.spatial_dims)
    if isinstance(norm, str):
        plan = NormPlan(norm, placement, spatial_dims, **norm_kwargs)
    else:
        if resolve_placement("bn", placement) != "all":
            raise ValueError("placement='paper' needs a norm given by name, not a layer class")
        plan = NormPlan.from_layer(functools.partial(norm, **norm_kwargs) if norm_kwargs else norm)

    def build(norm_layer: Any) -> nn.Module:
        return entry.builder(
            num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer, **model_kwargs
        )

    if entry.norm_roles:
        return build(plan)
    if plan.placement == "paper":  # a third-party builder: BatchNorm, then the paper's sites
        model = build(None)
        return convert_norm(model, plan.method.name, placement="paper", **plan.norm_kwargs)
    return build(plan)
