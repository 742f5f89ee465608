"""Synchronized NABN, BatchNorm and IEBN in training mode: the autograd Functions.

DESIGN.md 1.1's distributed rule: the forward normalizes with the group's statistics
(:func:`augmentbn.distributed.gather_batch_stats`, one ``all_gather``), and the backward
all-reduces the per-channel sums its input gradient needs (one ``all_reduce`` of ``2C``
numbers), so that N processes on N shards of a batch give one process's outputs, input gradients
and running statistics on the whole batch. Parameter gradients stay per rank: summed over the
ranks (``DistributedDataParallel``'s all-reduce) they are the whole batch's.

Notation as in :mod:`augmentbn.functional`; ``n`` is the group's number of values per channel,
``Σ`` sums over the whole group's batch, ``g = dL/dy``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._autograd import memory_format
from ._stats import as_stats_dtype, channel_view, update_running_stats
from .distributed import GroupStats

__all__ = ["sync_batch_norm_train", "sync_ie_batch_norm_train"]


def _channel_sums(grad: Tensor, input: Tensor, mean: Tensor, var: Tensor, eps: float):
    """Per channel ``Σ g`` and ``Σ g·(x - mean)/sqrt(var + ε)`` over this rank's shard: one
    reduction pass (eval-mode BatchNorm backward), in the statistics dtype."""
    if input.numel() == 0:
        zeros = mean.new_zeros(mean.shape)
        return zeros, zeros.clone()
    _, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
        grad.contiguous(memory_format=memory_format(input)),
        input,
        None,
        mean,
        var,
        None,
        None,
        False,
        eps,
        [False, True, True],
    )
    return sum_g, sum_g_xhat


class _SyncBatchNormFunction(torch.autograd.Function):
    """``y = γ (x - μ') / sqrt(v' + ε) + β`` with the group's ``μ'``, ``v'`` (constants).

    Backward, with ``s = 1/sqrt(v' + ε)``, ``x̂ = (x - μ')·s`` and the group's sums::

        dx = γ s [g - Σg/n - (x - c)·s·ρ·Σ(g x̂)/n]

    (DESIGN.md 1.1, "Backward without autograd"): ``c = μ`` for gaussian_clip and uniform
    (``dv'/dx = 2(x - μ)/n``), ``c = μ'`` for gaussian_reject and BatchNorm, ``ρ = 0`` on the
    channels where gaussian_reject's ``max(·, 0)`` clamps, else 1. ``Σg`` and ``Σ(g x̂)`` are the
    ranks' sums, all-reduced; ``dγ = Σ_rank(g x̂)`` and ``dβ = Σ_rank g`` are this rank's.
    """

    @staticmethod
    def forward(
        ctx, input, weight, bias, shifted_mean, var_used, center, active, count, eps, group
    ):
        weight, bias = as_stats_dtype(weight, bias, dtype=var_used.dtype)
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
        ctx.save_for_backward(input, weight, shifted_mean, var_used, center, active, count)
        ctx.eps, ctx.group = eps, group
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, shifted_mean, var_used, center, active, count = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        sum_g, sum_g_xhat = _channel_sums(grad_output, input, shifted_mean, var_used, ctx.eps)
        grad_input = None
        if need_input:  # the same on every rank: the graph is the same
            sums = torch.stack((sum_g, sum_g_xhat))
            work = dist.all_reduce(sums, group=ctx.group, async_op=True)
            invstd = torch.rsqrt(var_used + ctx.eps)
            gain = invstd if weight is None else weight * invstd  # γ s
            work.wait()
            mean_g, mean_g_xhat = sums / count.to(sums.dtype)
            slope = gain * invstd * mean_g_xhat  # γ s² ρ Σ(g x̂)/n, the coefficient of -x
            if active is not None:
                slope = slope * active
            offset = slope * center - gain * mean_g
            ndim = input.dim()
            grad_input = torch.addcmul(
                channel_view(offset, ndim), input, channel_view(-slope, ndim)
            )
            grad_input.addcmul_(grad_output, channel_view(gain, ndim))
            grad_input = grad_input.to(input.dtype)
        return (
            grad_input,
            sum_g_xhat if need_weight else None,
            sum_g if need_bias else None,
            *(None,) * 7,
        )


def sync_batch_norm_train(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: GroupStats,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float | Tensor,
    eps: float,
    group,
    *,
    noise: str | None = None,
    running_stats: str = "clean",
) -> Tensor:
    """Training-mode NABN (``noise`` one of ``functional.NOISE_TYPES``, ``δ`` in
    ``stats.shift``) or BatchNorm (``noise=None``) with the group's statistics; updates the
    running statistics in place (``"perturbed"``: ``μ'`` and the biased ``v'``; ``"clean"``:
    ``μ`` and the unbiased ``σ²``, exactly ``nn.BatchNorm``'s). Channels whose statistics are
    not finite keep their running statistics."""
    mean, var, shift = stats.mean, stats.var, stats.shift
    active = None
    if noise is None:  # BatchNorm: μ' = μ, v' = σ²
        shifted_mean, var_used, center = mean, var, mean
    elif noise == "gaussian_reject":
        shifted_mean = mean + shift
        # mean(x²) - μ'² = σ² - δ(μ + μ'), without the cancellation of mean(x²) - μ'².
        raw_var = torch.addcmul(var, shift, mean + shifted_mean, value=-1)
        var_used = raw_var.clamp(min=0.0)
        active = 1.0 - (raw_var < 0).to(var.dtype)
        center = shifted_mean
    else:  # gaussian_clip, uniform: v' = mean((x - μ')²) = σ² + δ²
        shifted_mean = mean + shift
        var_used = torch.addcmul(var, shift, shift)
        center = mean
    output = _SyncBatchNormFunction.apply(
        input, weight, bias, shifted_mean, var_used, center, active, stats.count, eps, group
    )
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            if running_stats == "perturbed":
                update_running_stats(running_mean, running_var, shifted_mean, var_used, momentum)
            else:
                unbiased = stats.unbiased_var()
                update_running_stats(running_mean, running_var, mean, unbiased, momentum)
    return output


class _SyncIEBatchNormFunction(torch.autograd.Function):
    """IEBN with the group's ``μ``, ``σ²``; the gate ``a[n, c] = sigmoid(w·mean_S(x[n, c]) + b)``
    stays per instance.

    With ``s = 1/sqrt(σ² + ε)``, ``x̂ = (x - μ)s``, per-``(n, c)`` sums ``S_g = sum_S(g)``,
    ``S_gx̂ = sum_S(g x̂)``, and ``Σ_n`` over the instances of every rank (all-reduced)::

        y  = (x - μ)·γ a s + β
        dx = γ a s·g + k[c]·x̂ + b[n, c]
        k  = -(s/n)·γ·Σ_n(a S_gx̂)
        b  = -(s/n)·γ·Σ_n(a S_g) + γ·S_gx̂·a(1 - a)·w/|S|

    the last term through ``a`` (DESIGN.md 1.2). ``dγ``, ``dβ``, ``dw``, ``db`` are this rank's.
    Forward is one elementwise pass; backward one reduction pass and two elementwise passes.
    """

    @staticmethod
    def forward(
        ctx,
        input,
        weight,
        bias,
        weight_readjust,
        bias_readjust,
        stats_mean,
        stats_var,
        count,
        instance_mean,
        eps,
        group,
    ):
        weight, bias = as_stats_dtype(weight, bias, dtype=stats_mean.dtype)
        invstd = torch.rsqrt(stats_var + eps)
        gamma_s = invstd if weight is None else weight * invstd  # γ s
        gate = torch.addcmul(bias_readjust, instance_mean, weight_readjust).sigmoid_()  # a
        gain = gate * gamma_s  # γ a s, per (n, c)
        if bias is None:  # β - μ·γ a s
            shift = (stats_mean * gain).neg_()
        else:
            shift = torch.addcmul(bias, stats_mean, gain, value=-1)
        ndim = input.dim()
        output = torch.addcmul(channel_view(shift, ndim), input, channel_view(gain, ndim))
        ctx.save_for_backward(
            input,
            weight_readjust,
            stats_mean,
            stats_var,
            invstd,
            gamma_s,
            count,
            instance_mean,
            gate,
            gain,
            weight,
        )
        ctx.eps, ctx.group = eps, group
        return output.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (
            input,
            weight_readjust,
            mean,
            var,
            invstd,
            gamma_s,
            count,
            instance_mean,
            gate,
            gain,
            weight,
        ) = ctx.saved_tensors
        need = ctx.needs_input_grad
        sum_g, sum_g_xhat = _instance_sums(grad_output, input, mean, var, invstd, ctx.eps)
        gate_sums = torch.stack((sum_g, sum_g_xhat)) * gate  # a·S_g, a·S_gx̂
        sums = gate_sums.sum(1)  # this rank's Σ_n
        grad_weight = sums[1].clone() if need[1] else None
        work = dist.all_reduce(sums, group=ctx.group, async_op=True) if need[0] else None
        # While the sums travel: the parameters' gradients, this rank's alone.
        grad_logit = gate_sums[1] * (1 - gate)  # S_gx̂·a(1 - a)
        if weight is not None:
            grad_logit = grad_logit * weight
        grad_bias = sum_g.sum(0) if need[2] else None
        grad_weight_readjust = (grad_logit * instance_mean).sum(0) if need[3] else None
        grad_bias_readjust = grad_logit.sum(0) if need[4] else None

        grad_input = None
        if work is not None:
            work.wait()
            size = math.prod(input.shape[2:])  # |S|
            coef = gamma_s / (-count).to(gamma_s.dtype)  # -γ s / n
            slope = coef * invstd * sums[1]  # k·s, the coefficient of x - μ
            offset = torch.addcmul(coef * sums[0], grad_logit, weight_readjust, value=1.0 / size)
            offset = torch.addcmul(offset, mean, slope, value=-1)  # the part free of x
            ndim = input.dim()
            grad_input = torch.addcmul(channel_view(offset, ndim), input, channel_view(slope, ndim))
            grad_input.addcmul_(grad_output, channel_view(gain, ndim))
            grad_input = grad_input.to(input.dtype)
        return (
            grad_input,
            grad_weight,
            grad_bias,
            grad_weight_readjust,
            grad_bias_readjust,
            *(None,) * 6,
        )


def _instance_sums(grad, input, mean, var, invstd, eps):
    """``S_g = sum_S(g)`` and ``S_gx̂ = sum_S(g·(x - μ_c)·s_c)``, shape ``(N, C)``, in the
    statistics dtype: one pass of eval-mode BatchNorm backward on the ``(1, N·C, |S|)`` view of a
    contiguous input (whose "channels" are the ``(n, c)`` pairs), composite reductions
    otherwise."""
    N, C = input.shape[:2]
    if input.dim() >= 3 and input.is_contiguous() and input.numel():
        stats = torch.stack((mean, var)).unsqueeze(1).expand(2, N, C).reshape(2, N * C)
        _, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous().view(1, N * C, -1),
            input.view(1, N * C, -1),
            None,
            stats[0],
            stats[1],
            None,
            None,
            False,
            eps,
            [False, True, True],
        )
        return sum_g.view(N, C), sum_g_xhat.view(N, C)
    ndim = input.dim()
    g_xhat = grad * ((input - channel_view(mean, ndim)) * channel_view(invstd, ndim))
    if ndim == 2:
        return grad.to(mean.dtype), g_xhat.to(mean.dtype)
    spatial = tuple(range(2, ndim))
    return grad.sum(dim=spatial, dtype=mean.dtype), g_xhat.sum(dim=spatial, dtype=mean.dtype)


def sync_ie_batch_norm_train(
    input: Tensor,
    instance_mean: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    weight_readjust: Tensor,
    bias_readjust: Tensor,
    stats: GroupStats,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float | Tensor,
    eps: float,
    group,
) -> Tensor:
    """Training-mode IEBN with the group's statistics and this rank's ``instance_mean``
    (``mean_S(x)``, ``(N, C)``); the running statistics are updated as ``nn.BatchNorm``'s
    (unbiased variance), channels with non-finite statistics kept."""
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = stats.unbiased_var()
            update_running_stats(running_mean, running_var, stats.mean, unbiased, momentum)
    return _SyncIEBatchNormFunction.apply(
        input,
        weight,
        bias,
        weight_readjust,
        bias_readjust,
        stats.mean,
        stats.var,
        stats.count,
        instance_mean,
        eps,
        group,
    )
