"""The formulas of AugmentBN (NABN) and IEBN, once.

Notation as in DESIGN.md section 1: input ``x`` of shape ``(N, C, *S)``; per channel ``M = N·|S|``
values, batch mean ``μ`` and biased batch variance ``σ²``; affine ``γ, β``; ``ε`` the epsilon.

NABN (Zhu, Yu, Hu, *Applied Soft Computing* 154, 2024) shifts the batch mean by a per-channel
``δ`` drawn afresh at every training step and normalizes with the shifted statistics::

    μ' = μ + δ
    v' = σ² + δ²                    (gaussian_clip, uniform: mean((x - μ')²))
    v' = max(mean(x²) - μ'², 0)     (gaussian_reject: the Jittor seed's formula)
    y  = γ (x - μ') / sqrt(v' + ε) + β

IEBN (Liang, Huang, Liang, Yang, AAAI 2020) rescales BatchNorm per instance::

    a[n, c] = sigmoid(w_c · mean_S(x[n, c]) + b_c)
    y       = BN(x) · γ_c · a[n, c] + β_c        (BN without affine)

Both run on the framework's native BatchNorm kernels with BatchNorm's passes over the data
(DESIGN.md 1.1, "Backward without autograd"): forward, one statistics pass and one elementwise
pass; backward, one reduction pass and one elementwise pass. On the CPU, the statistics of large
contiguous float32 inputs come from one fused pass of per-row sums instead of BatchNorm's slower
statistics kernel (:func:`_moments_from_sums`). On top of that, NABN's gaussian_clip
and uniform add one in-place per-channel correction to the input gradient; IEBN adds the instance
means forward (a cheap contiguous reduction) and a second elementwise pass backward. IEBN's
per-``(n, c)`` work runs on the same kernels through a ``(1, N·C, |S|)`` view of contiguous
inputs, whose "channels" are the ``(n, c)`` pairs.

In training on contiguous float32/float64 CPU inputs (and IEBN in evaluation too), the layers run
on compiled operators instead (``csrc/cpu_ops.cpp``, built on first use by :mod:`._cpu_ops`):
the same formulas with the per-channel algebra in C++ loops and two-pass statistics, which at
small batches cost a fraction of the Python implementation's small tensor operations. The Python
implementation below serves every other device, dtype and layout, ``torch.compile``, and
machines without a C++ compiler; the tests hold the two equal.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _cpu_ops

__all__ = [
    "NOISE_TYPES",
    "RUNNING_STATS",
    "augment_batch_norm",
    "ie_batch_norm",
    "sample_mean_shift",
]

NOISE_TYPES = ("gaussian_clip", "gaussian_reject", "uniform")
"""``gaussian_clip``: the paper's PyTorch code; ``gaussian_reject``: the Jittor seed's
``GauBatchNorm``; ``uniform``: the paper's ablation."""

RUNNING_STATS = ("perturbed", "clean")
"""``perturbed``: running averages of ``μ'`` and the biased ``v'`` (both references);
``clean``: exactly ``nn.BatchNorm``'s update (``μ`` and the unbiased ``σ²``)."""


# --------------------------------------------------------------------------------------------
# Checks shared by the functions and the modules
# --------------------------------------------------------------------------------------------


def check_noise_args(theta: float, noise: str, noise_std: float, where: str = "") -> None:
    """Raise ``ValueError`` for an invalid noise configuration."""
    prefix = f"{where}: " if where else ""
    if noise not in NOISE_TYPES:
        raise ValueError(f"{prefix}unknown noise {noise!r}; expected one of {NOISE_TYPES}")
    if not theta >= 0:  # also rejects NaN
        raise ValueError(f"{prefix}theta must be >= 0 (the bound of the mean shift), got {theta}")
    if not noise_std > 0:
        raise ValueError(f"{prefix}noise_std must be > 0, got {noise_std}")


def check_running_stats(running_stats: str, where: str = "") -> None:
    if running_stats not in RUNNING_STATS:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}unknown running_stats {running_stats!r}; expected one of {RUNNING_STATS}"
        )


def check_input(input: Tensor, num_features: int | None, training: bool, where: str) -> None:
    """The checks of ``nn.BatchNorm``: rank, channel count, more than one value per channel."""
    if input.dim() < 2:
        raise ValueError(
            f"{where}: expected an input of shape (N, C, *spatial), got {input.dim()}D "
            f"input of shape {tuple(input.shape)}"
        )
    if num_features is not None and input.shape[1] != num_features:
        raise ValueError(
            f"{where}: expected {num_features} channels (dimension 1), got input of shape "
            f"{tuple(input.shape)}"
        )
    if training and input.numel() // input.shape[1] <= 1:
        raise ValueError(
            f"{where}: expected more than 1 value per channel in training mode, got input of "
            f"shape {tuple(input.shape)}; batch statistics need at least 2 values per channel "
            "(use a batch size above 1, or eval mode)"
        )


def check_channel_tensors(num_features: int, where: str, **tensors: Tensor | None) -> None:
    """Raise ``ValueError`` unless every given per-channel tensor has shape ``(num_features,)``,
    and unless the running statistics come both or neither."""
    for name, t in tensors.items():
        if t is not None and t.shape != (num_features,):
            raise ValueError(
                f"{where}: {name} must have shape ({num_features},), one value per channel of "
                f"the input, got {tuple(t.shape)}"
            )
    if (tensors.get("running_mean") is None) != (tensors.get("running_var") is None):
        raise ValueError(f"{where}: give running_mean and running_var together, or neither")


def _stats_dtype(input: Tensor) -> torch.dtype:
    """Statistics accumulate in float32 for half-precision inputs, as ``nn.BatchNorm`` does."""
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """``(C,)`` or ``(N, C)`` viewed to broadcast against an ``ndim``-D ``(N, C, *S)`` input."""
    return t.reshape(*t.shape, *(1,) * (ndim - 2))


def _native_stats(input: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over every dimension but 1, by the native BatchNorm statistics
    kernel, in the statistics dtype."""
    dtype = _stats_dtype(input)
    if input.dtype == dtype:
        return torch.batch_norm_update_stats(input, None, None, 0.0)
    # Half precision: given float32 running buffers, the kernel accumulates and returns float32
    # without a float32 copy of the input; momentum 0 leaves the scratch buffers unused.
    scratch = input.new_zeros((2, input.shape[1]), dtype=dtype)
    return torch.batch_norm_update_stats(input, scratch[0], scratch[1], 0.0)


_SUMS_MAX_RATIO = 8.0
"""Largest ``E[x²]/σ²`` of a channel for which :func:`_moments_from_sums` is used: its variance
``E[x²] - μ²`` loses about ``log2`` of that ratio in bits to cancellation, which keeps it within
about 1e-6 (relative) of float64, the float32 tolerance that ``nn.BatchNorm`` meets."""

_SUMS_MAX_ROW = 2048
"""Sums run over rows of at most this many values (a divisor of ``|S|``), short enough that
their float32 accumulation stays accurate."""

_SUMS_MIN_NUMEL = 1 << 17
"""Below this many values the native statistics kernel costs less than the sums' dozen small
tensor operations (measured in a layer's forward and backward on one thread)."""

_SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS = 1 << 15
"""The same when the sums also save IEBN's separate instance-mean pass."""


@functools.lru_cache(maxsize=256)
def _sum_row_length(size: int) -> int:
    """The longest divisor of ``size`` up to ``_SUMS_MAX_ROW``, or ``size`` when every such
    divisor is too short to be worth the extra rows."""
    if size <= _SUMS_MAX_ROW:
        return size
    row = max(d for d in range(1, _SUMS_MAX_ROW + 1) if size % d == 0)
    return row if row * 8 >= _SUMS_MAX_ROW else size


def _moments_from_sums(
    input: Tensor, instance_means: bool = True
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Mean, biased variance and (with ``instance_means``, else ``None``) per-instance means
    from per-row sums of ``x`` and ``x²``.

    On the CPU, PyTorch's BatchNorm statistics kernel runs well below memory bandwidth: for a
    contiguous float32 input, one fused pass that sums ``x`` and ``x²`` per row (eval-mode
    BatchNorm backward with ``g = x``, mean 0 and variance 1 on a ``(1, rows, row)`` view) takes
    a quarter to a third of its time, and gives IEBN's instance means with them. The rows' sums
    combine in float64. ``None`` when some channel's ``E[x²]/σ²`` exceeds ``_SUMS_MAX_RATIO``
    (the mean is large against the spread, and ``E[x²] - μ²`` would cancel) or is not finite:
    the native two-pass kernel then runs instead."""
    N, C = input.shape[:2]
    size = input.numel() // (N * C)
    rows = input.view(1, -1, _sum_row_length(size))
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
    if not torch.amax(mean_sq / var).item() <= _SUMS_MAX_RATIO:  # NaN (0/0, inf/inf) declines
        return None
    dtype = input.dtype
    instance_mean = instance_sums[0].div_(size).to(dtype) if instance_means else None
    return mean.to(dtype), var.to(dtype), instance_mean


def _batch_moments(
    input: Tensor, instance_means: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-channel batch mean and biased variance, in the statistics dtype, and the per-instance
    means ``mean_S(x)`` of shape ``(N, C)`` when asked for and they came with them (else ``None``).

    Contiguous float32 CPU input of at least ``_SUMS_MIN_NUMEL`` values (or
    ``_SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS``, when the caller needs ``instance_means``) outside
    ``torch.compile`` takes :func:`_moments_from_sums`; everything else, and inputs it declines,
    BatchNorm's own statistics kernel. They are constants to autograd: the autograd Functions
    below own their gradients."""
    input = input.detach()
    min_numel = _SUMS_MIN_NUMEL_WITH_INSTANCE_MEANS if instance_means else _SUMS_MIN_NUMEL
    if (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and input.dim() >= 3
        and input.numel() >= min_numel
        and input.is_contiguous()
        and not torch.compiler.is_compiling()
    ):
        moments = _moments_from_sums(input, instance_means)
        if moments is not None:
            return moments
    return (*_native_stats(input), None)


def _as_stats_dtype(*tensors: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, ...]:
    """Affine parameters in the statistics dtype, as native kernels want them beside float32
    statistics (a bfloat16 module, say); their gradients come back in their own dtype."""
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors)


def _update_running_stats(
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


def _momentum_args(momentum: float | Tensor) -> tuple[float, Tensor | None]:
    """The momentum as the compiled operators take it: a float, or a tensor (``momentum=None``'s
    cumulative average) with a placeholder float."""
    return (0.0, momentum) if isinstance(momentum, Tensor) else (float(momentum), None)


def _update_batch_norm_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    input: Tensor,
    momentum: float | Tensor,
) -> None:
    """``nn.BatchNorm``'s update: the batch mean and the unbiased variance ``σ²·M/(M - 1)``."""
    count = input.numel() // input.shape[1]
    _update_running_stats(running_mean, running_var, mean, var * (count / (count - 1)), momentum)


# --------------------------------------------------------------------------------------------
# Per-(n, c) work on native BatchNorm kernels (IEBN)
# --------------------------------------------------------------------------------------------


def _instance_mean(input: Tensor) -> Tensor:
    """``mean_S(x[n, c])``, shape ``(N, C)``, in the statistics dtype (a constant to autograd)."""
    dtype = _stats_dtype(input)
    if input.dim() == 2:
        return input.detach().to(dtype)
    return input.detach().mean(dim=tuple(range(2, input.dim())), dtype=dtype)


def _instance_layout(input: Tensor, mean: Tensor) -> tuple[Tensor, Tensor] | None:
    """What native BatchNorm kernels need to work per ``(n, c)``.

    A contiguous ``(N, C, *S)`` input is viewed as ``(1, N·C, |S|)``, whose "channels" are the
    ``(n, c)`` pairs. With ``μ`` repeated per ``(n, c)`` and ones as running statistics and
    ``ε = 0``, eval-mode BatchNorm computes ``(x - μ_c)·weight[n, c] + bias[n, c]`` and its
    backward ``sum_S(g)`` and ``sum_S(g·(x - μ_c))``. ``None`` where the memory layout allows no
    such view (channels_last, strided), there is no spatial dimension or no value."""
    if input.dim() < 3 or not input.is_contiguous() or input.numel() == 0:
        return None
    N, C = input.shape[:2]
    return _flat_instances(mean, N), mean.new_ones(N * C)


def _flat_instances(t: Tensor, N: int) -> Tensor:
    """A ``(C,)`` or ``(N, C)`` tensor as the ``(N·C,)`` parameters of the instance view."""
    return t.reshape(-1) if t.dim() == 2 else t.repeat(N)


def _instance_affine(
    input: Tensor,
    layout: tuple[Tensor, Tensor] | None,
    mean: Tensor,
    scale: Tensor,
    shift: Tensor | None,
) -> Tensor:
    """``(x - μ_c)·scale[n, c] + shift[n, c]`` in one elementwise pass: eval-mode native
    BatchNorm on the instance view (see :func:`_instance_layout`), a composite ``addcmul``
    otherwise. ``scale`` and ``shift`` (``None``: 0) broadcast to ``(N, C)``; everything is in
    the statistics dtype."""
    N, C = input.shape[:2]
    if layout is not None:
        output = torch.batch_norm(
            input.view(1, N * C, -1),
            _flat_instances(scale, N),
            None if shift is None else _flat_instances(shift, N),
            *layout,
            False,
            0.0,
            0.0,
            torch.backends.cudnn.enabled,
        )
        # Not a view: an autograd.Function's output must allow in-place ops (ReLU(inplace=True)).
        return torch.ops.aten._unsafe_view(output, input.shape)
    ndim = input.dim()
    offset = -(mean * scale) if shift is None else shift - mean * scale
    output = torch.addcmul(_channel_view(offset, ndim), input, _channel_view(scale, ndim))
    return output.to(input.dtype)


def _instance_grad_sums(
    grad: Tensor, input: Tensor, layout: tuple[Tensor, Tensor] | None, mean: Tensor
) -> tuple[Tensor, Tensor]:
    """``sum_S(g)`` and ``sum_S(g·(x - μ_c))``, shape ``(N, C)``, in the statistics dtype: one
    native reduction pass (eval-mode BatchNorm backward) on the instance view, composite
    reductions otherwise."""
    N, C = input.shape[:2]
    if layout is not None:
        _, sum_g_xc, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous().view(1, N * C, -1),
            input.view(1, N * C, -1),
            None,
            *layout,
            None,
            None,
            False,
            0.0,
            [False, True, True],
        )
        return sum_g.view(N, C), sum_g_xc.view(N, C)
    ndim = input.dim()
    g_xc = grad * (input.to(mean.dtype) - _channel_view(mean, ndim))
    if ndim == 2:
        return grad.to(mean.dtype), g_xc
    spatial = tuple(range(2, ndim))
    return grad.sum(dim=spatial, dtype=mean.dtype), g_xc.sum(dim=spatial, dtype=mean.dtype)


# --------------------------------------------------------------------------------------------
# NABN
# --------------------------------------------------------------------------------------------


def sample_mean_shift(
    num_features: int,
    *,
    theta: float = 0.2,
    noise: str = "gaussian_clip",
    noise_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw the per-channel mean shift ``δ`` of NABN (DESIGN.md 1.1 step 1).

    - ``gaussian_clip``: ``δ = clamp(z, -θ, θ)``, ``z ~ N(0, s²)``;
    - ``gaussian_reject``: ``δ = z if |z| ≤ θ else 0``, ``z ~ N(0, s²)``;
    - ``uniform``: ``δ ~ U(-θ, θ)``.

    With the defaults ``θ = 0.2``, ``s = 1``, clip lands on ``±θ`` and reject returns 0 about 84%
    of the time.
    """
    check_noise_args(theta, noise, noise_std, "sample_mean_shift")
    if noise == "uniform":
        u = torch.empty(num_features, device=device, dtype=dtype)
        return u.uniform_(-theta, theta, generator=generator)
    z = torch.randn(num_features, generator=generator, device=device, dtype=dtype)
    if noise_std != 1.0:
        z.mul_(noise_std)
    if noise == "gaussian_clip":
        return z.clamp_(-theta, theta)
    return z.masked_fill_(z.abs() > theta, 0.0)


class _AugmentBatchNormFunction(torch.autograd.Function):
    """Training-mode NABN on native BatchNorm kernels, given ``μ'``, ``v'`` (constants).

    Forward: the native per-channel affine at ``(μ', v')``. Backward, with ``s = 1/sqrt(v' + ε)``,
    ``x̂ = (x - μ')·s``, ``g = dL/dy``, means per channel::

        dx = γ s [g - mean(g) - (x - c)·s·ρ·mean(g x̂)]

    where ``c = μ'`` for gaussian_reject (``d v'/dx = 2(x - μ')/M``), ``c = μ`` otherwise
    (``d v'/dx = 2(x - μ)/M``), and ``ρ = 0`` on channels where the reject formula's ``max(·, 0)``
    is active, else 1. That is native BatchNorm's backward at ``(μ', s)`` plus, per channel,
    ``γ s² mean(g x̂)·[(1 - ρ)(x - μ') + ρ(c - μ')]``: nothing for gaussian_reject in the usual
    case, the constant ``-γ s² δ·mean(g x̂)`` for gaussian_clip and uniform.

    ``mean_shift`` is ``δ`` for gaussian_clip and uniform, ``None`` for gaussian_reject;
    ``inactive`` is ``1 - ρ`` where some channel may be clamped, else ``None``.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, shifted_mean, var_used, mean_shift, inactive, eps):
        weight, bias = _as_stats_dtype(weight, bias, dtype=var_used.dtype)
        output = torch.batch_norm(
            input,
            weight,
            bias,
            shifted_mean,
            var_used,
            False,
            0.0,
            eps,
            torch.backends.cudnn.enabled,
        )
        var_eps = var_used + eps
        invstd = torch.rsqrt(var_eps)
        correction = None  # γ s²·(δ or 1 - ρ), per channel
        if mean_shift is not None or inactive is not None:
            correction = (mean_shift if inactive is None else inactive) / var_eps
            if weight is not None:
                correction = correction * weight
        ctx.save_for_backward(input, weight, shifted_mean, invstd, correction)
        ctx.eps = eps
        ctx.clamped = inactive is not None
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, shifted_mean, invstd, correction = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output.contiguous(memory_format=_memory_format(input)),
            input,
            weight,
            None,
            None,
            shifted_mean,
            invstd,
            True,
            ctx.eps,
            [need_input, True, need_bias],
        )
        if need_input and correction is not None:
            # With grad_weight = sum(g x̂) = M·mean(g x̂); grad_input is ours to update in place.
            ndim = input.dim()
            count = input.numel() // input.shape[1]
            coef = correction * grad_weight
            if not ctx.clamped:  # gaussian_clip, uniform: - γ s² δ mean(g x̂)
                grad_input.add_(_channel_view(coef, ndim).to(grad_input.dtype), alpha=-1 / count)
            else:  # channels on max(·, 0): their variance path carries no gradient
                slope = coef / count
                grad_input.addcmul_(input, _channel_view(slope, ndim).to(input.dtype))
                offset = _channel_view(slope * shifted_mean, ndim).to(grad_input.dtype)
                grad_input.sub_(offset)
        return (
            grad_input if need_input else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
            None,
            None,
            None,
            None,
            None,
        )


def _memory_format(input: Tensor) -> torch.memory_format:
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _inactive_channels(raw_var: Tensor, var_used: Tensor) -> Tensor | None:
    """``1`` where gaussian_reject's ``max(mean(x²) - μ'², 0)`` clamps, as a float mask, or
    ``None`` when no channel does. Knowing "none" costs a host synchronization, cheap on the CPU
    only; elsewhere, and under ``torch.compile``, the mask is always kept."""
    if (
        not torch.compiler.is_compiling()
        and raw_var.device.type == "cpu"
        and torch.equal(raw_var, var_used)
    ):
        return None
    return (raw_var < 0).to(raw_var.dtype)


def augment_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    *,
    theta: float = 0.2,
    noise: str = "gaussian_clip",
    noise_std: float = 1.0,
    running_stats: str = "perturbed",
    mean_shift: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise-assisted batch normalization (NABN, "AugmentBN"), DESIGN.md 1.1.

    In training mode the batch mean is shifted by ``δ`` (``mean_shift`` if given, else a fresh
    draw of :func:`sample_mean_shift`) and ``running_mean``/``running_var``, when given, are
    updated in place with ``momentum``: with ``μ'`` and the biased ``v'``
    (``running_stats="perturbed"``, as both references do) or with ``μ`` and the unbiased ``σ²``
    (``"clean"``, exactly ``nn.BatchNorm``). Outside training this is plain
    ``F.batch_norm``: running statistics if given, else batch statistics; never noise.

    Channels whose batch statistics are not finite keep their running statistics.
    """
    check_noise_args(theta, noise, noise_std, "augment_batch_norm")
    check_running_stats(running_stats, "augment_batch_norm")
    if input.dim() >= 2:
        check_channel_tensors(
            input.shape[1],
            "augment_batch_norm",
            running_mean=running_mean,
            running_var=running_var,
            weight=weight,
            bias=bias,
        )
    if not training:
        check_input(input, None, running_mean is None, "augment_batch_norm")
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, running_mean is None, 0.0, eps
        )
    check_input(input, None, True, "augment_batch_norm")
    num_features = input.shape[1]
    stats_dtype = _stats_dtype(input)
    if mean_shift is None:
        mean_shift = sample_mean_shift(
            num_features,
            theta=theta,
            noise=noise,
            noise_std=noise_std,
            generator=generator,
            device=input.device,
            dtype=stats_dtype,
        )
    elif mean_shift.shape != (num_features,):
        raise ValueError(
            f"augment_batch_norm: mean_shift must have shape ({num_features},), one value per "
            f"channel, got {tuple(mean_shift.shape)}"
        )
    else:
        mean_shift = mean_shift.detach().to(device=input.device, dtype=stats_dtype)

    if _cpu_ops.usable(input, weight, bias, running_mean, running_var):
        tracked = running_mean is not None and running_var is not None
        return torch.ops.augmentbn.augment_batch_norm_train(
            input,
            weight,
            bias,
            mean_shift,
            running_mean if tracked else None,
            running_var if tracked else None,
            *_momentum_args(momentum),
            noise == "gaussian_reject",
            running_stats == "clean",
            eps,
        )
    mean, var, _ = _batch_moments(input)
    shifted_mean = mean + mean_shift
    if noise == "gaussian_reject":
        # mean(x²) - μ'² = σ² - δ(μ + μ'), without the cancellation of mean(x²) - μ'².
        raw_var = torch.addcmul(var, mean_shift, mean + shifted_mean, value=-1)
        var_used = raw_var.clamp(min=0.0)
        output = _AugmentBatchNormFunction.apply(
            input,
            weight,
            bias,
            shifted_mean,
            var_used,
            None,
            _inactive_channels(raw_var, var_used),
            eps,
        )
    else:
        var_used = torch.addcmul(var, mean_shift, mean_shift)  # mean((x - μ')²) = σ² + δ²
        output = _AugmentBatchNormFunction.apply(
            input, weight, bias, shifted_mean, var_used, mean_shift, None, eps
        )
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            if running_stats == "perturbed":
                _update_running_stats(running_mean, running_var, shifted_mean, var_used, momentum)
            else:
                _update_batch_norm_stats(running_mean, running_var, mean, var, input, momentum)
    return output


# --------------------------------------------------------------------------------------------
# IEBN
# --------------------------------------------------------------------------------------------


class _IEBatchNormFunction(torch.autograd.Function):
    """IEBN as one per-``(n, c)`` affine map of ``x``, given ``μ``, ``σ²`` and ``mean_S(x)``.

    With ``s = 1/sqrt(σ² + ε)`` (batch or running), ``a = sigmoid(w·mean_S(x) + b)``,
    ``x̂ = (x - μ)s``, ``g = dL/dy``, ``M = N·|S|`` and the per-``(n, c)`` sums ``S_g = sum_S(g)``,
    ``S_gx̂ = sum_S(g x̂)``::

        y  = (x - μ)·γ a s + β
        dx = γ a s·g + k[c]·x̂ + b[n, c]
        k  = -(s/M)·γ·sum_n(a S_gx̂)                                      [batch statistics]
        b  = -(s/M)·γ·sum_n(a S_g) [batch statistics] + γ·S_gx̂·a(1 - a)·w/|S|

    the last term through ``a``. Forward is one elementwise pass; backward one reduction pass for
    the sums and two elementwise passes (the affine part in ``x``, then ``γ a s·g`` in place).
    """

    @staticmethod
    def forward(
        ctx,
        input,
        weight,
        bias,
        weight_readjust,
        bias_readjust,
        mean,
        var,
        instance_mean,
        eps,
        batch_stats,
    ):
        weight, bias = _as_stats_dtype(weight, bias, dtype=mean.dtype)
        invstd = torch.rsqrt(var + eps)
        gate = torch.addcmul(bias_readjust, instance_mean, weight_readjust).sigmoid_()  # a
        gain = (gate if weight is None else gate * weight) * invstd  # γ a s
        layout = _instance_layout(input, mean)
        output = _instance_affine(input, layout, mean, gain, bias)
        ctx.save_for_backward(
            input,
            weight,
            weight_readjust,
            mean,
            invstd,
            instance_mean,
            gate,
            gain,
            *(layout if layout is not None else (None, None)),
        )
        ctx.batch_stats = batch_stats
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, weight_readjust, mean, invstd, instance_mean, gate, gain, *layout = (
            ctx.saved_tensors
        )
        layout = None if layout[0] is None else tuple(layout)
        need = ctx.needs_input_grad
        count = input.numel() // input.shape[1]  # M
        size = count // input.shape[0]  # |S|
        sum_g, sum_g_xc = _instance_grad_sums(grad_output, input, layout, mean)
        gate_sum_g_xhat = gate * (sum_g_xc * invstd)  # a·S_gx̂
        grad_weight = gate_sum_g_xhat.sum(0)
        grad_logit = torch.addcmul(gate_sum_g_xhat, gate_sum_g_xhat, gate, value=-1.0)
        if weight is not None:
            grad_logit = grad_logit * weight  # γ·S_gx̂·a(1 - a)

        grad_input = None
        if need[0]:
            if ctx.batch_stats:
                coef = (invstd if weight is None else weight * invstd) * (-1.0 / count)  # -γs/M
                slope = coef * invstd * grad_weight  # k·s, the coefficient of x - μ
                offset = coef * (gate * sum_g).sum(0)
            else:
                slope = offset = torch.zeros_like(mean)
            offset = torch.addcmul(offset, grad_logit, weight_readjust, value=1.0 / size)  # b
            grad_input = _instance_affine(input, layout, mean, slope, offset)
            grad_input.addcmul_(grad_output, _channel_view(gain, input.dim()).to(input.dtype))
        return (
            grad_input,
            grad_weight if need[1] else None,
            sum_g.sum(0) if need[2] else None,
            (grad_logit * instance_mean).sum(0) if need[3] else None,
            grad_logit.sum(0) if need[4] else None,
            None,
            None,
            None,
            None,
            None,
        )


def ie_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    weight_readjust: Tensor,
    bias_readjust: Tensor,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance Enhancement Batch Normalization (IEBN), DESIGN.md 1.2.

    ``y = BN(x)·γ·sigmoid(w·mean_S(x) + b) + β`` with ``BN`` unaffine: batch statistics in
    training (or when no running statistics are given), running statistics otherwise. The running
    statistics are updated exactly as ``nn.BatchNorm`` (unbiased variance); channels whose batch
    statistics are not finite keep theirs.
    """
    use_batch_stats = training or running_mean is None
    check_input(input, None, use_batch_stats, "ie_batch_norm")
    check_channel_tensors(
        input.shape[1],
        "ie_batch_norm",
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        weight_readjust=weight_readjust,
        bias_readjust=bias_readjust,
    )
    params = (weight, bias, weight_readjust, bias_readjust)
    if input.dim() >= 3 and _cpu_ops.usable(input, *params, running_mean, running_var):
        tracked = running_mean is not None and running_var is not None
        return torch.ops.augmentbn.ie_batch_norm(
            input,
            *params,
            running_mean if tracked else None,
            running_var if tracked else None,
            *_momentum_args(momentum),
            training,
            eps,
        )
    instance_mean = None
    update = training and running_mean is not None and running_var is not None
    if use_batch_stats:
        mean, var, instance_mean = _batch_moments(input, instance_means=True)
    else:
        dtype = _stats_dtype(input)
        mean, var = running_mean.to(dtype), running_var.to(dtype)
    if instance_mean is None:
        instance_mean = _instance_mean(input)
    if update:
        with torch.no_grad():
            _update_batch_norm_stats(running_mean, running_var, mean, var, input, momentum)
    return _IEBatchNormFunction.apply(
        input, *params, mean, var, instance_mean, eps, use_batch_stats
    )
