"""The networks of both papers for Jittor, by name, as :mod:`augmentbn.models`.

``create_model("resnet20", norm="nabn", num_classes=10)`` builds the Jittor twin of the PyTorch
model of the same name and arguments: same module names and shapes, so
:func:`augmentbn.jittor.from_torch_state_dict` and :func:`~augmentbn.jittor.to_torch_state_dict`
carry weights across. Models: ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``,
``resnet110`` (basic blocks), ``resnet164`` (bottlenecks) and ``unet`` (2D).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jittor as jt

from ...methods import PLACEMENTS, ROLES, NormPlan
from .resnet_cifar import BasicBlock, Bottleneck, CifarResNet, resnet_cifar
from .unet import DoubleConv, UNet

__all__ = [
    "PLACEMENTS",
    "ROLES",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "DoubleConv",
    "NormPlan",
    "UNet",
    "create_model",
    "list_models",
    "resnet_cifar",
]

_MODELS: dict[str, Callable[..., jt.nn.Module]] = {
    **{f"resnet{d}": functools.partial(resnet_cifar, d, "basic") for d in (20, 32, 44, 56, 110)},
    "resnet164": functools.partial(resnet_cifar, 164, "bottleneck"),
    "unet": UNet,
}


def list_models() -> list[str]:
    """Sorted names of the Jittor models."""
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    norm: str = "bn",
    num_classes: int,
    in_chans: int = 3,
    placement: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    **norm_kwargs: Any,
) -> jt.nn.Module:
    """Build the Jittor model ``name`` with the normalization ``norm``.

    The arguments are those of :func:`augmentbn.models.create_model`: ``norm`` is a registered
    method with a Jittor layer (``"bn"``, ``"nabn"``, ``"iebn"`` or an alias; the others are
    refused with where they exist); ``placement`` ``"paper"`` (the default for NABN and IEBN) or
    ``"all"``; ``model_kwargs`` reach the model (``base_width``, ``upsampling`` for the U-Net);
    ``norm_kwargs`` reach the NABN/IEBN layers (``theta``, ``noise``, ``eps``, ...).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    norms = NormPlan(norm, placement, 2, backend="jittor", **norm_kwargs)
    return _MODELS[name](
        num_classes=num_classes, in_chans=in_chans, norms=norms, **dict(model_kwargs or {})
    )
