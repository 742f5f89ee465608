"""The 2D U-Net for Jittor, the twin of :mod:`augmentbn.models.unet` (the Jittor seed's network).

Encoder: a double convolution, then four times max-pool (2) + double convolution, widths
``w, 2w, 4w, 8w, 8w`` with bilinear upsampling (``w`` = ``base_width``, 64 by default). Decoder:
four times upsample ×2, concatenate the skip connection, double convolution; a 1×1 convolution
gives the logits. A double convolution is ``(conv 3×3, norm, ReLU) × 2``; both of its norms have
the role ``conv``, so NABN with ``placement="paper"`` replaces every norm, as the seed does.
Names and shapes are the PyTorch model's (``inc.bn1``, ``down1.conv.bn2``, ``up4.conv``,
``outc``, ...). Only 2D: the PyTorch model also builds the 3D U-Net.
"""

from __future__ import annotations

import jittor as jt
from jittor import nn

from ...methods import NormPlan
from .resnet_cifar import init_conv_weights

__all__ = ["DoubleConv", "UNet"]

_UPSAMPLING = ("interpolate", "transpose")


class DoubleConv(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))))`` with 3×3 convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        norms: NormPlan,
    ) -> None:
        mid_channels = mid_channels or out_channels
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn1 = norms(mid_channels, "conv")
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norms(out_channels, "conv")
        self.relu = nn.ReLU()

    def execute(self, x: jt.Var) -> jt.Var:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class Down(nn.Module):
    """Max-pool by 2, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int, *, norms: NormPlan) -> None:
        self.pool = nn.MaxPool2d(2, 2)
        self.conv = DoubleConv(in_channels, out_channels, norms=norms)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.conv(self.pool(x))


class Upsample2x(nn.Module):
    """Bilinear upsampling by 2 (``align_corners=False``, as ``torch.nn.Upsample``)."""

    def execute(self, x: jt.Var) -> jt.Var:
        return nn.interpolate(
            x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="bilinear", align_corners=False
        )


class Up(nn.Module):
    """Upsample by 2, pad to the skip connection, concatenate ``[skip, x]``, double convolution."""

    def __init__(
        self, in_channels: int, out_channels: int, *, upsampling: str, norms: NormPlan
    ) -> None:
        if upsampling == "interpolate":
            self.up: nn.Module = Upsample2x()
            mid = in_channels // 2
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            mid = None
        self.conv = DoubleConv(in_channels, out_channels, mid, norms=norms)

    def execute(self, x: jt.Var, skip: jt.Var) -> jt.Var:
        x = self.up(x)
        pad = []
        for size, target in zip(reversed(x.shape[2:]), reversed(skip.shape[2:]), strict=True):
            diff = target - size
            pad += [diff // 2, diff - diff // 2]
        if any(pad):
            x = nn.pad(x, pad)
        return self.conv(jt.concat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with four downsamplings.

    Args:
        in_chans: input channels.
        num_classes: output channels (logits, one per class).
        base_width: channels of the first double convolution (64 in the seed).
        upsampling: ``"interpolate"`` (bilinear, the seed's default) or ``"transpose"``.
        norms: the :class:`NormPlan` (default: plain BatchNorm).
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 2,
        *,
        base_width: int = 64,
        upsampling: str = "interpolate",
        norms: NormPlan | None = None,
    ) -> None:
        if upsampling not in _UPSAMPLING:
            raise ValueError(f"upsampling must be one of {_UPSAMPLING}, got {upsampling!r}")
        opts = {"norms": norms or NormPlan("bn", backend="jittor")}
        w = base_width
        factor = 2 if upsampling == "interpolate" else 1
        self.inc = DoubleConv(in_chans, w, **opts)
        self.down1 = Down(w, 2 * w, **opts)
        self.down2 = Down(2 * w, 4 * w, **opts)
        self.down3 = Down(4 * w, 8 * w, **opts)
        self.down4 = Down(8 * w, 16 * w // factor, **opts)
        self.up1 = Up(16 * w, 8 * w // factor, upsampling=upsampling, **opts)
        self.up2 = Up(8 * w, 4 * w // factor, upsampling=upsampling, **opts)
        self.up3 = Up(4 * w, 2 * w // factor, upsampling=upsampling, **opts)
        self.up4 = Up(2 * w, w, upsampling=upsampling, **opts)
        self.outc = nn.Conv2d(w, num_classes, 1)
        init_conv_weights(self)

    def execute(self, x: jt.Var) -> jt.Var:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.down4(x4)
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)
