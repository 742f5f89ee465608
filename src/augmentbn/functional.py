"""The public formulas of AugmentBN (NABN) and IEBN for PyTorch.

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

The functions check their arguments (:mod:`augmentbn.methods.checks`, shared with the Jittor
backend) before anything is computed or updated, then run one of two implementations with the
same formulas: in training on contiguous float32/float64 CPU inputs (and IEBN in evaluation too),
the compiled operators (``csrc/cpu_ops.cpp``, built on first use by :mod:`._cpu_ops`); everywhere
else (other devices, dtypes and layouts, ``torch.compile``, machines without a C++ compiler) the
PyTorch implementation, the autograd Functions of :mod:`._autograd` over the statistics of
:mod:`._stats`. The tests hold the two equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _cpu_ops
from ._autograd import AugmentBatchNormFunction, IEBatchNormFunction, clamped_channels
from ._stats import (
    batch_moments,
    instance_mean,
    momentum_args,
    stats_dtype,
    update_batch_norm_stats,
    update_running_stats,
)
from .methods.checks import (
    NOISE_TYPES,
    RUNNING_STATS,
    check_channel_shapes,
    check_input_shape,
    check_noise_args,
    check_running_stats,
    default_theta,
)

__all__ = [
    "NOISE_TYPES",
    "RUNNING_STATS",
    "augment_batch_norm",
    "check_input",
    "check_mean_shift",
    "ie_batch_norm",
    "sample_mean_shift",
]


def check_input(input: Tensor, num_features: int | None, batch_stats: bool, where: str) -> None:
    """``nn.BatchNorm``'s input checks (:func:`~augmentbn.methods.checks.check_input_shape`)."""
    check_input_shape(input.shape, num_features, batch_stats, where)


def check_mean_shift(mean_shift: Tensor | None, num_features: int, where: str) -> None:
    """A given mean shift must be a ``(C,)`` floating-point tensor."""
    if mean_shift is None:
        return
    if not isinstance(mean_shift, Tensor) or not mean_shift.is_floating_point():
        raise ValueError(
            f"{where}: mean_shift must be a floating-point tensor of shape ({num_features},), "
            f"got {type(mean_shift).__name__}"
            + (f" of dtype {mean_shift.dtype}" if isinstance(mean_shift, Tensor) else "")
        )
    check_channel_shapes(num_features, where, {"mean_shift": mean_shift.shape})


def _check_channel_tensors(num_features: int, where: str, **tensors: Tensor | None) -> None:
    check_channel_shapes(
        num_features, where, {k: None if t is None else t.shape for k, t in tensors.items()}
    )


# --------------------------------------------------------------------------------------------
# NABN
# --------------------------------------------------------------------------------------------


def sample_mean_shift(
    num_features: int,
    *,
    theta: float | None = None,
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

    ``theta=None`` is the references' default: 0.2, and 0.3 for uniform. With ``θ = 0.2``,
    ``s = 1``, clip lands on ``±θ`` and reject returns 0 about 84% of the time.
    """
    check_noise_args(theta, noise, noise_std, "sample_mean_shift")
    theta = default_theta(noise) if theta is None else theta
    if noise == "uniform":
        u = torch.empty(num_features, device=device, dtype=dtype)
        return u.uniform_(-theta, theta, generator=generator)
    z = torch.randn(num_features, generator=generator, device=device, dtype=dtype)
    if noise_std != 1.0:
        z.mul_(noise_std)
    if noise == "gaussian_clip":
        return z.clamp_(-theta, theta)
    return z.masked_fill_(z.abs() > theta, 0.0)


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
    theta: float | None = None,
    noise: str = "gaussian_clip",
    noise_std: float = 1.0,
    running_stats: str = "perturbed",
    mean_shift: Tensor | None = None,
    generator: torch.Generator | None = None,
    clamp_count: Tensor | None = None,
) -> Tensor:
    """Noise-assisted batch normalization (NABN, "AugmentBN"), DESIGN.md 1.1.

    In training mode the batch mean is shifted by ``δ`` (``mean_shift`` if given, else a fresh
    draw of :func:`sample_mean_shift`) and ``running_mean``/``running_var``, when given, are
    updated in place with ``momentum``: with ``μ'`` and the biased ``v'``
    (``running_stats="perturbed"``, as both references do) or with ``μ`` and the unbiased ``σ²``
    (``"clean"``, exactly ``nn.BatchNorm``). Outside training this is plain
    ``F.batch_norm``: running statistics if given, else batch statistics; never noise.

    Every argument is checked before anything is updated. Channels whose batch statistics are not
    finite keep their running statistics; an empty batch returns an empty output and updates
    nothing, as ``nn.BatchNorm``. ``clamp_count``, a 0-d integer tensor on the input's device,
    counts (in place, without a host synchronization) the channels where gaussian_reject's
    ``max(·, 0)`` clamps ``v'`` to 0.
    """
    where = "augment_batch_norm"
    check_noise_args(theta, noise, noise_std, where)
    check_running_stats(running_stats, where)
    batch_stats = training or running_mean is None
    check_input(input, None, batch_stats, where)
    num_features = input.shape[1]
    _check_channel_tensors(
        num_features,
        where,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    check_mean_shift(mean_shift, num_features, where)
    if not training or input.numel() == 0:
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, running_mean is None, 0.0, eps
        )
    dtype = stats_dtype(input)
    if mean_shift is None:
        mean_shift = sample_mean_shift(
            num_features,
            theta=theta,
            noise=noise,
            noise_std=noise_std,
            generator=generator,
            device=input.device,
            dtype=dtype,
        )
    else:
        mean_shift = mean_shift.detach().to(device=input.device, dtype=dtype)

    if _cpu_ops.usable(input, weight, bias, running_mean, running_var):
        return torch.ops.augmentbn.augment_batch_norm_train(
            input,
            weight,
            bias,
            mean_shift,
            running_mean,
            running_var,
            *momentum_args(momentum),
            noise == "gaussian_reject",
            running_stats == "clean",
            eps,
            clamp_count,
        )
    mean, var, _ = batch_moments(input)
    shifted_mean = mean + mean_shift
    if noise == "gaussian_reject":
        # mean(x²) - μ'² = σ² - δ(μ + μ'), without the cancellation of mean(x²) - μ'².
        raw_var = torch.addcmul(var, mean_shift, mean + shifted_mean, value=-1)
        var_used = raw_var.clamp(min=0.0)
        if clamp_count is not None:
            clamp_count.add_((raw_var < 0).sum())
        output = AugmentBatchNormFunction.apply(
            input, weight, bias, shifted_mean, var_used, None, clamped_channels(raw_var), eps
        )
    else:
        var_used = torch.addcmul(var, mean_shift, mean_shift)  # mean((x - μ')²) = σ² + δ²
        output = AugmentBatchNormFunction.apply(
            input, weight, bias, shifted_mean, var_used, mean_shift, None, eps
        )
    if running_mean is not None:
        with torch.no_grad():
            if running_stats == "perturbed":
                update_running_stats(running_mean, running_var, shifted_mean, var_used, momentum)
            else:
                update_batch_norm_stats(running_mean, running_var, mean, var, input, momentum)
    return output


# --------------------------------------------------------------------------------------------
# IEBN
# --------------------------------------------------------------------------------------------


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
    statistics are not finite keep theirs. An empty batch returns an empty output.
    """
    where = "ie_batch_norm"
    use_batch_stats = training or running_mean is None
    check_input(input, None, use_batch_stats, where)
    _check_channel_tensors(
        input.shape[1],
        where,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        weight_readjust=weight_readjust,
        bias_readjust=bias_readjust,
    )
    if input.numel() == 0:
        return F.batch_norm(input, None, None, weight, bias, True, 0.0, eps)
    params = (weight, bias, weight_readjust, bias_readjust)
    if input.dim() >= 3 and _cpu_ops.usable(input, *params, running_mean, running_var):
        return torch.ops.augmentbn.ie_batch_norm(
            input,
            *params,
            running_mean,
            running_var,
            *momentum_args(momentum),
            training,
            eps,
        )
    means = None
    if use_batch_stats:
        mean, var, means = batch_moments(input, instance_means=True)
    else:
        dtype = stats_dtype(input)
        mean, var = running_mean.to(dtype), running_var.to(dtype)
    if means is None:
        means = instance_mean(input)
    if training and running_mean is not None:
        with torch.no_grad():
            update_batch_norm_stats(running_mean, running_var, mean, var, input, momentum)
    return IEBatchNormFunction.apply(input, *params, mean, var, means, eps, use_batch_stats)
