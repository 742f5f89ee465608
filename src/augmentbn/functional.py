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

Both run on the framework's native BatchNorm kernels: one statistics pass and one elementwise pass
forward, BatchNorm's own backward plus per-channel work (DESIGN.md 1.1, "Backward without
autograd").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _stats_dtype(input: Tensor) -> torch.dtype:
    """Statistics accumulate in float32 for half-precision inputs, as ``nn.BatchNorm`` does."""
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


def _batch_stats(input: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and biased variance, by the native BatchNorm statistics kernel.

    They are constants to autograd: the autograd Functions below own their gradients."""
    stats_input = input.detach()
    if stats_input.dtype != _stats_dtype(input):
        stats_input = stats_input.float()
    return torch.batch_norm_update_stats(stats_input, None, None, 0.0)


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """``(C,)`` or ``(N, C)`` viewed to broadcast against an ``ndim``-D ``(N, C, *S)`` input."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _update_running(running: Tensor, batch_value: Tensor, momentum: float | Tensor) -> None:
    """``running ← (1 - momentum)·running + momentum·batch_value`` on finite channels only.

    Channels whose batch statistic is NaN or inf keep their running value: non-finite input must
    not poison the running statistics, and the masked update needs no host synchronization.
    """
    batch_value = batch_value.to(running.dtype)
    updated = torch.lerp(running, batch_value, momentum)
    running.copy_(torch.where(torch.isfinite(batch_value), updated, running))


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
        u = torch.rand(num_features, generator=generator, device=device, dtype=dtype)
        return u.mul_(2.0 * theta).sub_(theta)
    z = torch.randn(num_features, generator=generator, device=device, dtype=dtype)
    z.mul_(noise_std)
    if noise == "gaussian_clip":
        return z.clamp_(-theta, theta)
    return z.masked_fill_(z.abs() > theta, 0.0)


class _AugmentBatchNormFunction(torch.autograd.Function):
    """Training-mode NABN on native BatchNorm kernels.

    Forward: native statistics, then the native per-channel affine at ``(μ', v')``.
    Backward, with ``s = 1/sqrt(v' + ε)``, ``x̂ = (x - μ')·s``, ``g = dL/dy``, means per channel::

        dx = γ s [g - mean(g) - (x - c)·s·ρ·mean(g x̂)]

    where ``c = μ'`` for gaussian_reject (``d v'/dx = 2(x - μ')/M``), ``c = μ`` otherwise
    (``d v'/dx = 2(x - μ)/M``), and ``ρ = 0`` on channels where the reject formula's ``max(·, 0)``
    is active, else 1. That is native BatchNorm's backward at ``(μ', s)`` plus, per channel,
    ``γ s² mean(g x̂)·[(1 - ρ)(x - μ') + ρ(c - μ')]``: nothing for gaussian_reject in the usual
    case, a constant for gaussian_clip and uniform.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, mean_shift, eps, reject):
        mean, var = _batch_stats(input)
        shifted_mean = mean + mean_shift
        if reject:
            # mean(x²) - μ'² = σ² - δ(2μ + δ), without the cancellation of mean(x²) - μ'².
            raw_var = var - mean_shift * (2.0 * mean + mean_shift)
            var_used = raw_var.clamp(min=0.0)
            var_active = (raw_var >= 0).to(var.dtype)  # ρ
            center = shifted_mean
        else:
            var_used = var + mean_shift * mean_shift
            var_active = None
            center = mean
        output = F.batch_norm(input, shifted_mean, var_used, weight, bias, False, 0.0, eps)
        invstd = torch.rsqrt(var_used + eps)
        ctx.save_for_backward(input, weight, shifted_mean, invstd, center, var_active)
        ctx.eps = eps
        for t in (mean, var, shifted_mean, var_used):
            ctx.mark_non_differentiable(t)
        return output, mean, var, shifted_mean, var_used

    @staticmethod
    def backward(ctx, grad_output, *_):
        input, weight, shifted_mean, invstd, center, var_active = ctx.saved_tensors
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
        if need_input:
            ndim = input.dim()
            count = input.numel() // input.shape[1]
            gamma = weight if weight is not None else 1.0
            # γ s² mean(g x̂), with grad_weight = sum(g x̂)
            coef = gamma * invstd * invstd * grad_weight.to(invstd.dtype) / count
            constant = coef * (center - shifted_mean)
            if var_active is None:
                grad_input = grad_input + _channel_view(constant, ndim).to(grad_input.dtype)
            elif torch.compiler.is_compiling() or not bool(var_active.all()):
                # Some channel sits on max(·, 0): its variance path carries no gradient.
                slope = coef * (1.0 - var_active)
                offset = var_active * constant - slope * shifted_mean
                grad_input = grad_input + (
                    input * _channel_view(slope, ndim) + _channel_view(offset, ndim)
                ).to(grad_input.dtype)
        return (
            grad_input if need_input else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
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

    output, mean, var, shifted_mean, var_used = _AugmentBatchNormFunction.apply(
        input, weight, bias, mean_shift, eps, noise == "gaussian_reject"
    )
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            if running_stats == "perturbed":
                _update_running(running_mean, shifted_mean, momentum)
                _update_running(running_var, var_used, momentum)
            else:
                count = input.numel() // num_features
                _update_running(running_mean, mean, momentum)
                _update_running(running_var, var * (count / (count - 1)), momentum)
    return output


# --------------------------------------------------------------------------------------------
# IEBN
# --------------------------------------------------------------------------------------------


class _IEBatchNormFunction(torch.autograd.Function):
    """IEBN as one per-(n, c) affine map ``y = A[n,c]·x + B[n,c]``.

    With ``s = 1/sqrt(σ² + ε)`` (batch or running), ``x̂ = (x - μ)s``, ``g = dL/dy``,
    ``G = g·γ·a`` and ``m[n,c] = mean_S(x[n,c])``::

        A = γ a s,   B = β - μ A
        dx = A g + [batch stats] s(-mean(G) - x̂·mean(G x̂)) + w a(1 - a)·γ·sum_S(g x̂)/|S|

    Everything but the elementwise terms comes from the per-(n, c) sums ``sum_S(g)`` and
    ``sum_S(g x)``.
    """

    @staticmethod
    def forward(
        ctx, input, weight, bias, weight_readjust, bias_readjust, mean, var, eps, batch_stats
    ):
        ndim = input.dim()
        spatial = tuple(range(2, ndim))
        stats_dtype = mean.dtype
        instance_mean = (
            input.mean(dim=spatial, dtype=stats_dtype) if spatial else input.to(stats_dtype)
        )
        gate = torch.sigmoid(instance_mean * weight_readjust + bias_readjust)  # a, (N, C)
        invstd = torch.rsqrt(var + eps)
        gamma = weight if weight is not None else torch.ones_like(invstd)
        scale = gamma * invstd * gate
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        output = torch.addcmul(
            _channel_view(shift, ndim).to(input.dtype),
            input,
            _channel_view(scale, ndim).to(input.dtype),
        )
        ctx.save_for_backward(input, gamma, weight_readjust, mean, invstd, instance_mean, gate)
        ctx.batch_stats = batch_stats
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, gamma, weight_readjust, mean, invstd, instance_mean, gate = ctx.saved_tensors
        ndim = input.dim()
        spatial = tuple(range(2, ndim))
        size = input[0, 0].numel()
        count = input.shape[0] * size
        acc = mean.dtype
        g = grad_output
        if spatial:
            sum_g = g.sum(dim=spatial, dtype=acc)
            sum_gx = (g * input).sum(dim=spatial, dtype=acc)
        else:
            sum_g, sum_gx = g.to(acc), (g * input).to(acc)
        sum_g_xhat = invstd * (sum_gx - mean * sum_g)  # sum_S(g x̂), (N, C)

        grad_bias = sum_g.sum(0)
        grad_weight = (gate * sum_g_xhat).sum(0)
        grad_gate = gamma * sum_g_xhat
        grad_logit = grad_gate * gate * (1.0 - gate)
        grad_weight_readjust = (grad_logit * instance_mean).sum(0)
        grad_bias_readjust = grad_logit.sum(0)

        grad_input = None
        if ctx.needs_input_grad[0]:
            scale = gamma * invstd * gate  # A
            offset = grad_logit * weight_readjust / size  # through a[n, c]
            slope = torch.zeros_like(invstd)
            if ctx.batch_stats:
                mean_G = (gamma * (gate * sum_g).sum(0)) / count
                mean_G_xhat = grad_weight * gamma / count
                slope = -invstd * invstd * mean_G_xhat
                offset = offset - invstd * mean_G - slope * mean
            grad_input = torch.addcmul(
                _channel_view(offset, ndim).to(input.dtype),
                input,
                _channel_view(slope, ndim).to(input.dtype),
            ).addcmul_(g, _channel_view(scale, ndim).to(input.dtype))
        need = ctx.needs_input_grad
        return (
            grad_input,
            grad_weight if need[1] else None,
            grad_bias if need[2] else None,
            grad_weight_readjust if need[3] else None,
            grad_bias_readjust if need[4] else None,
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
    num_features = input.shape[1]
    for name, t in (("weight_readjust", weight_readjust), ("bias_readjust", bias_readjust)):
        if t.shape != (num_features,):
            raise ValueError(
                f"ie_batch_norm: {name} must have shape ({num_features},), got {tuple(t.shape)}"
            )
    if use_batch_stats:
        mean, var = _batch_stats(input)
        if training and running_mean is not None and running_var is not None:
            with torch.no_grad():
                count = input.numel() // num_features
                _update_running(running_mean, mean, momentum)
                _update_running(running_var, var * (count / (count - 1)), momentum)
    else:
        dtype = _stats_dtype(input)
        mean, var = running_mean.to(dtype), running_var.to(dtype)
    stats_dtype = mean.dtype
    return _IEBatchNormFunction.apply(
        input,
        weight,
        bias,
        weight_readjust.to(stats_dtype),
        bias_readjust.to(stats_dtype),
        mean,
        var,
        eps,
        use_batch_stats,
    )
