"""U-Net (Ronneberger et al., 2015) in 2D or 3D, as in the Jittor AugmentBN seed.

Encoder: a double convolution, then four times max-pool (2) + double convolution, widths
``w, 2w, 4w, 8w, 8w`` with interpolating upsampling (``w`` = ``base_width``, 64 by default).
Decoder: four times upsample ×2, concatenate the skip connection, double convolution; a 1×1
convolution gives the logits, at the input's spatial size. A double convolution is
``(conv 3, norm, ReLU) × 2``; both papers' U-Nets (the NABN paper's MSD-liver network and the
Jittor seed's) use NABN for every one of its norms, the ``conv`` role, which is what
``placement="paper"`` gives. ``spatial_dims=3`` builds the same network from 3d layers, with
trilinear upsampling.

Differences from the seed: the 3×3 convolutions have no bias (a norm follows each, so a bias has
no effect), and inputs whose size is not a multiple of 16 are handled by padding the upsampled
maps to the skip connection's size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..methods import NormPlan, as_norm_plan
from .init import init_conv_weights
from .registry import register_model

__all__ = ["DoubleConv", "UNet"]

NormLayer = NormPlan | Callable[[int], nn.Module]


class _Ops(NamedTuple):
    conv: type[nn.Module]
    conv_transpose: type[nn.Module]
    max_pool: type[nn.Module]
    batch_norm: type[nn.Module]
    interpolation: str


_LAYERS = {
    2: _Ops(nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.BatchNorm2d, "bilinear"),
    3: _Ops(nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.BatchNorm3d, "trilinear"),
}
_UPSAMPLING = ("interpolate", "transpose")


def _layers(spatial_dims: int) -> _Ops:
    if spatial_dims not in _LAYERS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return _LAYERS[spatial_dims]


class DoubleConv(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))))`` with 3×3 (×3) convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        spatial_dims: int = 2,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        ops = _layers(spatial_dims)
        norms = as_norm_plan(norm_layer, ops.batch_norm)
        mid_channels = mid_channels or out_channels
        self.conv1 = ops.conv(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn1 = norms(mid_channels, "conv")
        self.conv2 = ops.conv(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norms(out_channels, "conv")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class Down(nn.Module):
    """Max-pool by 2, then a double convolution."""

    def __init__(
        self, in_channels: int, out_channels: int, *, spatial_dims: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.pool = _layers(spatial_dims).max_pool(2)
        self.conv = DoubleConv(
            in_channels, out_channels, spatial_dims=spatial_dims, norm_layer=norm_layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsample by 2, pad to the skip connection, concatenate ``[skip, x]``, double convolution.

    ``upsampling="interpolate"`` keeps the channels (bilinear/trilinear, the double convolution
    halves them in its first convolution); ``"transpose"`` halves them with a transposed
    convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int,
        upsampling: str,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        ops = _layers(spatial_dims)
        if upsampling == "interpolate":
            self.up: nn.Module = nn.Upsample(
                scale_factor=2, mode=ops.interpolation, align_corners=False
            )
            mid = in_channels // 2
        else:
            self.up = ops.conv_transpose(in_channels, in_channels // 2, 2, stride=2)
            mid = None
        self.conv = DoubleConv(
            in_channels, out_channels, mid, spatial_dims=spatial_dims, norm_layer=norm_layer
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        pad = []
        for size, target in zip(reversed(x.shape[2:]), reversed(skip.shape[2:]), strict=True):
            diff = target - size
            pad += [diff // 2, diff - diff // 2]
        if any(pad):
            x = F.pad(x, pad)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with four downsamplings.

    Args:
        in_chans: input channels.
        num_classes: output channels (logits, one per class).
        base_width: channels of the first double convolution (64 in the seed).
        spatial_dims: 2 (images) or 3 (volumes).
        upsampling: ``"interpolate"`` (bilinear/trilinear, the seed's default) or
            ``"transpose"`` (transposed convolutions).
        norm_layer: a :class:`~augmentbn.methods.NormPlan` (every norm of the double
            convolutions is a ``conv`` site), or ``num_features -> nn.Module``; default
            BatchNorm of ``spatial_dims``.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 2,
        *,
        base_width: int = 64,
        spatial_dims: int = 2,
        upsampling: str = "interpolate",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if upsampling not in _UPSAMPLING:
            raise ValueError(f"upsampling must be one of {_UPSAMPLING}, got {upsampling!r}")
        ops = _layers(spatial_dims)
        opts = {"spatial_dims": spatial_dims, "norm_layer": norm_layer}
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
        self.outc = ops.conv(w, num_classes, 1)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


@register_model(spatial_dims=2)
def unet(
    *, num_classes: int = 2, in_chans: int = 1, norm_layer: NormLayer | None = None, **kwargs: Any
) -> UNet:
    """2D U-Net (bilinear upsampling); ``kwargs``: ``base_width``, ``spatial_dims``, ..."""
    return UNet(in_chans, num_classes, norm_layer=norm_layer, **kwargs)


@register_model(spatial_dims=3)
def unet3d(
    *, num_classes: int = 2, in_chans: int = 1, norm_layer: NormLayer | None = None, **kwargs: Any
) -> UNet:
    """3D U-Net (trilinear upsampling, 3d layers); ``kwargs``: ``base_width``, ..."""
    return UNet(in_chans, num_classes, spatial_dims=3, norm_layer=norm_layer, **kwargs)
