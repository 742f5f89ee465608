"""Batch statistics and running averages, the PyTorch implementation's (DESIGN.md 1.1, 1.2).

Per-channel mean and biased variance come from BatchNorm's own statistics kernel, or on the CPU,
for large contiguous float32 inputs, from one fused pass of per-row sums
(:func:`moments_from_sums`), which costs a quarter to a third of the kernel
(``benchmarks/batch_stats.py``) and gives IEBN's instance means with them. The compiled CPU
operators (``csrc/cpu_ops.cpp``) compute the same statistics in two passes of their own.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "as_stats_dtype",
    "batch_moments",
    "channel_view",
    "instance_mean",
    "momentum_args",
    "native_stats",
    "stats_dtype",
    "update_batch_norm_stats",
    "update_running_stats",
]


def stats_dtype(input: Tensor) -> torch.dtype:
    """Statistics accumulate in float32 for half-precision inputs, as ``nn.BatchNorm`` does."""
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


def channel_view(t: Tensor, ndim: int) -> Tensor:
    """``(C,)`` or ``(N, C)`` viewed to broadcast against an ``ndim``-D ``(N, C, *S)`` input."""
    return t.reshape(*t.shape, *(1,) * (ndim - 2))


def native_stats(input: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over every dimension but 1, by the native BatchNorm statistics
    kernel, in the statistics dtype."""
    dtype = stats_dtype(input)
    if input.dtype == dtype:
        return torch.batch_norm_update_stats(input, None, None, 0.0)
    # Half precision: given float32 running buffers, the kernel accumulates and returns float32
    # without a float32 copy of the input; momentum 0 leaves the scratch buffers unused.
    scratch = input.new_zeros((2, input.shape[1]), dtype=dtype)
    return torch.batch_norm_update_stats(input, scratch[0], scratch[1], 0.0)


SUMS_MAX_RATIO = 8.0
"""Largest ``E[x²]/σ²`` of a channel for which :func:`moments_from_sums` is used: its variance
``E[x²] - μ²`` loses about ``log2`` of that ratio in bits to cancellation, which keeps it within
about 1e-6 (relative) of float64, the float32 tolerance that ``nn.BatchNorm`` meets."""

SUMS_MAX_ROW = 2048
"""Sums run over rows of at most this many values (a divisor of ``|S|``), short enough that
their float32 accumulation stays accurate."""

SUMS_MIN_NUMEL = 1 << 17
"""Below this many values the native statistics kernel costs less than the sums' dozen small
tensor operations (measured in a layer's forward and backward on one thread)."""

SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS = 1 << 15
"""The same when the sums also save IEBN's separate instance-mean pass."""


@functools.lru_cache(maxsize=256)
def sum_row_length(size: int) -> int:
    """The longest divisor of ``size`` up to ``SUMS_MAX_ROW``, or ``size`` when every such
    divisor is too short to be worth the extra rows."""
    if size <= SUMS_MAX_ROW:
        return size
    row = max(d for d in range(1, SUMS_MAX_ROW + 1) if size % d == 0)
    return row if row * 8 >= SUMS_MAX_ROW else size


def moments_from_sums(
    input: Tensor, instance_means: bool = True
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Mean, biased variance and (with ``instance_means``, else ``None``) per-instance means
    from per-row sums of ``x`` and ``x²``.

    On the CPU, PyTorch's BatchNorm statistics kernel runs well below memory bandwidth: for a
    contiguous float32 input, one fused pass that sums ``x`` and ``x²`` per row (eval-mode
    BatchNorm backward with ``g = x``, mean 0 and variance 1 on a ``(1, rows, row)`` view) takes
    a quarter to a third of its time, and gives IEBN's instance means with them. The rows' sums
    combine in float64. ``None`` when some channel's ``E[x²]/σ²`` exceeds ``SUMS_MAX_RATIO``
    (the mean is large against the spread, and ``E[x²] - μ²`` would cancel) or is not finite:
    the native two-pass kernel then runs instead."""
    N, C = input.shape[:2]
    size = input.numel() // (N * C)
    rows = input.view(1, -1, sum_row_length(size))
    count = rows.shape[1]
    _, sum_sq, sums = torch.ops.aten.native_batch_norm_backward(
        rows,
        rows,
        None,
        input.new_zeros(count),
        input.new_ones(count),
        None,
        None,
        False,
        0.0,
        [False, True, True],
    )
    instance_sums = torch.stack((sums, sum_sq)).view(2, N, C, -1).sum(3, dtype=torch.float64)
    mean, mean_sq = instance_sums.sum(1).div_(N * size)
    var = torch.addcmul(mean_sq, mean, mean, value=-1)
    if not torch.amax(mean_sq / var).item() <= SUMS_MAX_RATIO:  # NaN (0/0, inf/inf) declines
        return None
    dtype = input.dtype
    instance_mean = instance_sums[0].div_(size).to(dtype) if instance_means else None
    return mean.to(dtype), var.to(dtype), instance_mean


def batch_moments(
    input: Tensor, instance_means: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-channel batch mean and biased variance, in the statistics dtype, and the per-instance
    means ``mean_S(x)`` of shape ``(N, C)`` when asked for and they came with them (else ``None``).

    Contiguous float32 CPU input of at least ``SUMS_MIN_NUMEL`` values (or
    ``SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS``, when the caller needs ``instance_means``) outside
    ``torch.compile`` takes :func:`moments_from_sums`; everything else, and inputs it declines,
    BatchNorm's own statistics kernel. They are constants to autograd: the autograd Functions
    below own their gradients."""
    input = input.detach()
    min_numel = SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS if instance_means else SUMS_MIN_NUMEL
    if (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and input.dim() >= 3
        and input.numel() >= min_numel
        and input.is_contiguous()
        and not torch.compiler.is_compiling()
    ):
        moments = moments_from_sums(input, instance_means)
        if moments is not None:
            return moments
    return (*native_stats(input), None)


def as_stats_dtype(*tensors: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, ...]:
    """Affine parameters in the statistics dtype, as native kernels want them beside float32
    statistics (a bfloat16 module, say); their gradients come back in their own dtype."""
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors)


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    momentum: float | Tensor,
) -> None:
    """``running ← running + momentum·(batch - running)`` for the mean and the variance.

    Channels whose batch variance is NaN or inf (so is it whenever the mean is) keep their running
    statistics: non-finite input must not poison them, and the masked update needs no host
    synchronization.
    """
    finite = var < math.inf  # False for NaN and inf; a variance is never -inf
    for running, value in ((running_mean, mean), (running_var, var)):
        if value.dtype != running.dtype:
            value = value.to(running.dtype)
        weight = momentum
        if isinstance(weight, Tensor) and weight.dtype != running.dtype:
            weight = weight.to(running.dtype)
        # lerp(r, r, w) == r exactly: masked channels stay as they are.
        running.lerp_(torch.where(finite, value, running), weight)


def momentum_args(momentum: float | Tensor) -> tuple[float, Tensor | None]:
    """The momentum as the compiled operators take it: a float, or a tensor (``momentum=None``'s
    cumulative average) with a placeholder float."""
    return (0.0, momentum) if isinstance(momentum, Tensor) else (float(momentum), None)


def update_batch_norm_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    input: Tensor,
    momentum: float | Tensor,
) -> None:
    """``nn.BatchNorm``'s update: the batch mean and the unbiased variance ``σ²·M/(M - 1)``."""
    count = input.numel() // input.shape[1]
    update_running_stats(running_mean, running_var, mean, var * (count / (count - 1)), momentum)


def instance_mean(input: Tensor) -> Tensor:
    """``mean_S(x[n, c])``, shape ``(N, C)``, in the statistics dtype (a constant to autograd)."""
    dtype = stats_dtype(input)
    if input.dim() == 2:
        return input.detach().to(dtype)
    return input.detach().mean(dim=tuple(range(2, input.dim())), dtype=dtype)
