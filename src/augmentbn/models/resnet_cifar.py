"""ResNets for 32×32 images (CIFAR), in the layout of both references.

He et al. (2016) CIFAR ResNets as laid out by the IEBN reference (bearpaw's
"pytorch-classification") and the Jittor AugmentBN seed: a 3×3 stem of 16 channels, three stages
of widths 16/32/64 (strides 1/2/2), ``n`` blocks per stage, global average pooling and a linear
classifier. Basic blocks give depth ``6n + 2``; bottleneck blocks (expansion 4) give ``9n + 2``.
The shortcut is the identity, or a 1×1 convolution + BN where the shape changes.
Parameter counts with BN: ResNet-20 272,474, -32 466,906, -44 661,338, -56 855,770,
-110 1,730,714 (10 classes); ResNet-164 bottleneck 1,727,284 (100 classes).

The references pool with a fixed 8×8 window; here pooling is adaptive, which is the same on
32×32 inputs and also works on other sizes. Module names (``conv1``, ``bn1``, ``layer1.0.bn2``,
``downsample.1``, ``fc``) are those of the references and of torchvision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..methods import NormPlan, as_norm_plan
from .init import init_conv_weights
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "resnet_cifar"]

NormLayer = NormPlan | Callable[[int], nn.Module]
"""A :class:`~augmentbn.methods.NormPlan` (each site asks for its role), or a callable
``num_features -> nn.Module`` used at every site (torchvision's ``norm_layer``)."""


class BasicBlock(nn.Module):
    """Two 3×3 convolutions: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: NormLayer,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        norms = as_norm_plan(norm_layer, nn.BatchNorm2d)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norms(planes, "inner")
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norms(planes, "last")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, optionally grouped), 1×1 expand (×4), plus the shortcut.

    The inner width is ``int(planes · base_width / 64) · groups``: ``planes`` for a ResNet, and
    ``cardinality × bottleneck width`` for a ResNeXt (torchvision's convention).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm_layer: NormLayer,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        norms = as_norm_plan(norm_layer, nn.BatchNorm2d)
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norms(width, "inner")
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = norms(width, "inner")
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norms(planes * self.expansion, "last")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class CifarResNet(nn.Module):
    """Stem (3×3 conv, norm, ReLU), three stages (strides 1, 2, 2), average pool, linear.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the three stages.
        widths: ``planes`` of each stage (block output is ``planes × block.expansion``).
        stem_width: output channels of the stem (default ``widths[0]``).
        groups, base_width: grouped bottlenecks (ResNeXt); see :class:`Bottleneck`.
        norm_layer: a :class:`~augmentbn.methods.NormPlan`, whose sites are the stem BN
            (``stem``), a block's BNs (``inner``) but its last (``last``: ``bn2`` of a basic
            block, ``bn3`` of a bottleneck), and the shortcut BN (``shortcut``); or a callable
            ``num_features -> nn.Module`` for every site; default ``nn.BatchNorm2d``.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        stem_width: int | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 3 or len(widths) != 3:
            raise ValueError(f"a CIFAR ResNet has 3 stages; got layers={layers}, widths={widths}")
        norms = as_norm_plan(norm_layer, nn.BatchNorm2d)
        self.inplanes = stem_width or widths[0]
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = norms(self.inplanes, "stem")
        self.relu = nn.ReLU(inplace=True)
        stages = [
            self._make_stage(block, planes, blocks, stride, norms, groups, base_width)
            for planes, blocks, stride in zip(widths, layers, (1, 2, 2), strict=True)
        ]
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        init_conv_weights(self)

    def _make_stage(
        self,
        block: Block,
        planes: int,
        blocks: int,
        stride: int,
        norms: NormPlan,
        groups: int,
        base_width: int,
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride, bias=False),
                norms(out_planes, "shortcut"),
            )
        kwargs = {"norm_layer": norms, "groups": groups, "base_width": base_width}
        stage = [block(self.inplanes, planes, stride, downsample, **kwargs)]
        self.inplanes = out_planes
        stage += [block(out_planes, planes, **kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_BLOCKS: dict[str, tuple[Block, int, str]] = {
    "basic": (BasicBlock, 6, "20, 32, 44, 56, 110"),
    "bottleneck": (Bottleneck, 9, "47, 110, 164"),
}


def resnet_cifar(
    depth: int = 20,
    block: str = "basic",
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    norm_layer: NormLayer | None = None,
) -> CifarResNet:
    """CIFAR ResNet of any valid depth: ``6n + 2`` with basic blocks, ``9n + 2`` with bottlenecks.

    ``n`` blocks per stage, widths 16/32/64.
    """
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {tuple(_BLOCKS)}, got {block!r}")
    block_type, per_block, examples = _BLOCKS[block]
    n, rest = divmod(depth - 2, per_block)
    if n < 1 or rest:
        raise ValueError(
            f"depth must be {per_block}n+2 for {block} blocks, e.g. {examples}; got {depth}"
        )
    return CifarResNet(
        block_type, (n, n, n), num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer
    )


def _register_depth(depth: int, block: str) -> None:
    def builder(
        *, num_classes: int = 10, in_chans: int = 3, norm_layer: NormLayer | None = None
    ) -> CifarResNet:
        return resnet_cifar(
            depth, block, num_classes=num_classes, in_chans=in_chans, norm_layer=norm_layer
        )

    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} ({block} blocks)."
    register_model()(builder)


register_model("resnet_cifar")(resnet_cifar)  # any depth: model_kwargs={"depth", "block"}
for _depth in (20, 32, 44, 56, 110):
    _register_depth(_depth, "basic")
_register_depth(164, "bottleneck")
