"""ResNeXt for 32×32 images (CIFAR), as shipped by the IEBN reference.

Xie et al. (2017), CIFAR variant: a 3×3 stem of 64 channels, three stages of grouped bottleneck
blocks (outputs 256/512/1024, strides 1/2/2) with ``(depth - 2) / 9`` blocks each, global average
pooling and a linear classifier. Block ``i`` of a stage with output ``4·planes`` has inner width
``cardinality · base_width · planes / 64`` (512, 1024, 2048 for 8×64d). ResNeXt-29 8×64d has
34.4M parameters (10 classes), as in the ResNeXt paper.
"""

from __future__ import annotations

from .registry import register_model
from .resnet_cifar import Bottleneck, CifarResNet, NormLayer

__all__ = ["resnext29_8x64d", "resnext_cifar"]


def resnext_cifar(
    depth: int = 29,
    cardinality: int = 8,
    base_width: int = 64,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    norm_layer: NormLayer | None = None,
) -> CifarResNet:
    """CIFAR ResNeXt of depth ``9n + 2`` with ``cardinality`` groups of ``base_width`` channels."""
    n, rest = divmod(depth - 2, 9)
    if n < 1 or rest:
        raise ValueError(f"depth must be 9n+2 for a CIFAR ResNeXt, e.g. 29; got {depth}")
    return CifarResNet(
        Bottleneck,
        (n, n, n),
        num_classes=num_classes,
        in_chans=in_chans,
        widths=(64, 128, 256),
        stem_width=64,
        groups=cardinality,
        base_width=base_width,
        norm_layer=norm_layer,
    )


@register_model()
def resnext29_8x64d(
    *, num_classes: int = 10, in_chans: int = 3, norm_layer: NormLayer | None = None
) -> CifarResNet:
    """ResNeXt-29 (8×64d) for CIFAR."""
    return resnext_cifar(
        29, 8, 64, num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer
    )
