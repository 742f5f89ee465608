"""ResNet-18/34/50 for 224×224 images, built by torchvision through its ``norm_layer`` argument.

The models are torchvision's own (same module names, so torchvision checkpoints load), with two
additions: ``in_chans`` other than 3 replaces the stem convolution (grayscale scans), and
``weights`` with ``num_classes`` other than 1000 loads the ImageNet weights and then replaces the
classifier. Needs torchvision: ``pip install augmentbn[vision]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .init import init_conv_weights
from .registry import register_model
from .resnet_cifar import NormLayer

__all__: list[str] = []

_IMAGENET_CLASSES = 1000


def _torchvision_models() -> Any:
    try:
        from torchvision import models
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ResNet-18/34/50 are built by torchvision; install it with "
            "`pip install augmentbn[vision]`"
        ) from err
    return models


def _adapt_stem(conv: nn.Conv2d, in_chans: int, pretrained: bool) -> nn.Conv2d:
    """A copy of the stem convolution taking ``in_chans`` channels.

    Untrained filters are re-initialized (He-normal). Pretrained ones become the summed RGB
    filter divided by ``in_chans`` on every channel, so an image whose channels are all equal
    gets the pretrained model's response to the same gray image.
    """
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    init_conv_weights(new)
    if pretrained:
        with torch.no_grad():
            summed = conv.weight.sum(dim=1, keepdim=True) / in_chans
            new.weight.copy_(summed.expand_as(new.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def _build(
    arch: str,
    *,
    num_classes: int,
    in_chans: int,
    norm_layer: NormLayer | None,
    weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    pretrained = weights is not None
    builder = getattr(_torchvision_models(), arch)
    model = builder(
        weights=weights,
        norm_layer=norm_layer,
        num_classes=_IMAGENET_CLASSES if pretrained else num_classes,
        **kwargs,
    )
    if in_chans != model.conv1.in_channels:
        model.conv1 = _adapt_stem(model.conv1, in_chans, pretrained)
    if num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _register(arch: str, description: str) -> None:
    def builder(
        *,
        num_classes: int = _IMAGENET_CLASSES,
        in_chans: int = 3,
        norm_layer: NormLayer | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        return _build(
            arch, num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer, **kwargs
        )

    builder.__name__ = builder.__qualname__ = arch
    builder.__doc__ = (
        f"torchvision {description}; ``kwargs`` (e.g. ``weights``) reach "
        f"``torchvision.models.{arch}``."
    )
    register_model(norm_roles=False)(builder)


_register("resnet18", "ResNet-18 (basic blocks 2-2-2-2)")
_register("resnet34", "ResNet-34 (basic blocks 3-4-6-3)")
_register("resnet50", "ResNet-50 (bottleneck blocks 3-4-6-3), the paper's OCT and X-ray model")
