"""CIFAR ResNets for Jittor, the twins of :mod:`augmentbn.models.resnet_cifar`.

He et al. (2016) CIFAR ResNets as in the IEBN reference and the Jittor AugmentBN seed: a 3×3 stem
of 16 channels, three stages of widths 16/32/64 (strides 1/2/2), ``n`` blocks per stage, global
average pooling and a linear classifier; basic blocks give depth ``6n + 2``, bottlenecks
(expansion 4) ``9n + 2``. The shortcut is the identity, or a 1×1 convolution + norm where the
shape changes. Module names (``conv1``, ``bn1``, ``layer1.0.bn2``, ``downsample.1``, ``fc``) and
shapes are the PyTorch model's, so weights convert with a straight key mapping.

Norm sites and their roles (:mod:`augmentbn.methods.placement`): the stem BN is ``stem``,
``bn2`` of a basic block and ``bn3`` of a bottleneck are ``last``, the other block BNs
``inner``, and ``downsample.1`` is ``shortcut``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jittor as jt
from jittor import nn

from ...methods import NormPlan

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "init_conv_weights", "resnet_cifar"]


def init_conv_weights(module: jt.nn.Module) -> jt.nn.Module:
    """He-normal (fan-out, ReLU) init of every convolution, zero biases (as the PyTorch models)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv, nn.Conv3d, nn.ConvTranspose, nn.ConvTranspose3d)):
            jt.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                jt.init.zero_(m.bias)
    return module


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
        norms: NormPlan,
    ) -> None:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norms(planes, "inner")
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norms(planes, "last")
        self.relu = nn.ReLU()
        self.downsample = downsample

    def execute(self, x: jt.Var) -> jt.Var:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand (×4), plus the shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norms: NormPlan,
    ) -> None:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norms(planes, "inner")
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norms(planes, "inner")
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norms(planes * self.expansion, "last")
        self.relu = nn.ReLU()
        self.downsample = downsample

    def execute(self, x: jt.Var) -> jt.Var:
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
        num_classes, in_chans: classifier outputs and input channels.
        widths: ``planes`` of each stage (block output is ``planes × block.expansion``).
        norms: the :class:`NormPlan` of the network (default: plain BatchNorm).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        norms: NormPlan | None = None,
    ) -> None:
        if len(layers) != 3 or len(widths) != 3:
            raise ValueError(f"a CIFAR ResNet has 3 stages; got layers={layers}, widths={widths}")
        norms = norms or NormPlan("bn", backend="jittor")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = norms(self.inplanes, "stem")
        self.relu = nn.ReLU()
        self.layer1, self.layer2, self.layer3 = (
            self._make_stage(block, planes, blocks, stride, norms)
            for planes, blocks, stride in zip(widths, layers, (1, 2, 2), strict=True)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        init_conv_weights(self)

    def _make_stage(
        self, block: Block, planes: int, blocks: int, stride: int, norms: NormPlan
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride, bias=False),
                norms(out_planes, "shortcut"),
            )
        stage = [block(self.inplanes, planes, stride, downsample, norms=norms)]
        self.inplanes = out_planes
        stage += [block(out_planes, planes, norms=norms) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def execute(self, x: jt.Var) -> jt.Var:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(jt.flatten(self.avgpool(x), 1))


_BLOCKS: dict[str, tuple[Block, int, str]] = {
    "basic": (BasicBlock, 6, "20, 32, 44, 56, 110"),
    "bottleneck": (Bottleneck, 9, "47, 110, 164"),
}


def resnet_cifar(
    depth: int,
    block: str = "basic",
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    norms: NormPlan | None = None,
) -> CifarResNet:
    """CIFAR ResNet of depth ``6n + 2`` (basic blocks) or ``9n + 2`` (bottlenecks)."""
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {tuple(_BLOCKS)}, got {block!r}")
    block_type, per_block, examples = _BLOCKS[block]
    n, rest = divmod(depth - 2, per_block)
    if n < 1 or rest:
        raise ValueError(
            f"depth must be {per_block}n+2 for {block} blocks, e.g. {examples}; got {depth}"
        )
    return CifarResNet(
        block_type, (n, n, n), num_classes=num_classes, in_chans=in_chans, norms=norms
    )
