"""The methods' constants and argument checks, framework-free: every backend imports them.

Nothing here touches a tensor: the checks take numbers, names and shapes, so the PyTorch layers,
the Jittor layers, the method registry and the training configuration all raise the same errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_THETA",
    "NOISE_TYPES",
    "RUNNING_STATS",
    "check_channel_shapes",
    "check_input_shape",
    "check_noise_args",
    "check_running_stats",
    "default_theta",
]

NOISE_TYPES = ("gaussian_clip", "gaussian_reject", "uniform")
"""``gaussian_clip``: the paper's PyTorch code (``GauBatchNorm2d``); ``gaussian_reject``: the
Jittor seed's ``GauBatchNorm``; ``uniform``: the paper's ablation and its MSD-liver U-Net
(``UNBatchNorm2d``)."""

RUNNING_STATS = ("perturbed", "clean")
"""``perturbed``: running averages of ``μ'`` and the biased ``v'`` (both references);
``clean``: exactly ``nn.BatchNorm``'s update (``μ`` and the unbiased ``σ²``)."""

DEFAULT_THETA = {"gaussian_clip": 0.2, "gaussian_reject": 0.2, "uniform": 0.3}
"""The bound ``θ`` of the mean shift when none is given, as the references' defaults:
``GauBatchNorm2d``/``GauBatchNorm`` 0.2, the paper's ``UNBatchNorm2d`` 0.3."""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def default_theta(noise: str) -> float:
    """``θ`` for ``noise`` when the caller gives none (:data:`DEFAULT_THETA`)."""
    check_noise_args(None, noise, 1.0)
    return DEFAULT_THETA[noise]


def check_noise_args(theta: float | None, noise: str, noise_std: float, where: str = "") -> None:
    """Raise ``ValueError`` for an invalid noise configuration (``theta=None``: the default)."""
    if noise not in NOISE_TYPES:
        raise ValueError(
            f"{_prefix(where)}unknown noise {noise!r}; expected one of {', '.join(NOISE_TYPES)}"
        )
    if theta is not None:
        if isinstance(theta, bool) or not isinstance(theta, (int, float)):
            raise ValueError(f"{_prefix(where)}theta must be a number, got {theta!r}")
        if not theta >= 0:  # also rejects NaN
            raise ValueError(
                f"{_prefix(where)}theta must be >= 0 (the bound of the mean shift), got {theta}"
            )
        if noise == "uniform" and theta == math.inf:
            raise ValueError(
                f"{_prefix(where)}theta must be finite for noise='uniform' (δ ~ U(-θ, θ)), got "
                f"{theta}; theta=inf is allowed for the Gaussian noises only (no bound)"
            )
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)):
        raise ValueError(f"{_prefix(where)}noise_std must be a number, got {noise_std!r}")
    if not 0 < noise_std < math.inf:
        raise ValueError(f"{_prefix(where)}noise_std must be > 0 and finite, got {noise_std}")


def check_running_stats(running_stats: str, where: str = "") -> None:
    if running_stats not in RUNNING_STATS:
        raise ValueError(
            f"{_prefix(where)}unknown running_stats {running_stats!r}; expected one of "
            f"{', '.join(RUNNING_STATS)}"
        )


def check_input_shape(
    shape: Sequence[int], num_features: int | None, batch_stats: bool, where: str
) -> None:
    """The checks of ``nn.BatchNorm``: rank, channel count, and, where batch statistics are
    used, more than one value per channel (an empty batch passes, as in ``nn.BatchNorm``)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"{where}: expected an input of shape (N, C, *spatial), got {len(shape)}D "
            f"input of shape {shape}"
        )
    if num_features is not None and shape[1] != num_features:
        raise ValueError(
            f"{where}: expected {num_features} channels (dimension 1), got input of shape {shape}"
        )
    values = math.prod(shape) // shape[1] if shape[1] else 0
    if batch_stats and values == 1:
        raise ValueError(
            f"{where}: expected more than 1 value per channel in training mode, got input of "
            f"shape {shape}; batch statistics need at least 2 values per channel "
            "(use a batch size above 1, or eval mode)"
        )


def check_channel_shapes(
    num_features: int, where: str, shapes: Mapping[str, Sequence[int] | None]
) -> None:
    """Raise ``ValueError`` unless every given per-channel tensor (``None``: absent) has shape
    ``(num_features,)``, and unless ``running_mean`` and ``running_var`` come both or neither."""
    for name, shape in shapes.items():
        if shape is not None and tuple(shape) != (num_features,):
            raise ValueError(
                f"{where}: {name} must have shape ({num_features},), one value per channel of "
                f"the input, got {tuple(shape)}"
            )
    if ("running_mean" in shapes or "running_var" in shapes) and (
        shapes.get("running_mean") is None
    ) != (shapes.get("running_var") is None):
        raise ValueError(f"{where}: give running_mean and running_var together, or neither")
