"""The autograd Functions of the PyTorch implementation: NABN and IEBN on native BatchNorm kernels.

Both run on the framework's native BatchNorm kernels with BatchNorm's passes over the data
(DESIGN.md 1.1, "Backward without autograd"): forward, one elementwise pass; backward, one
reduction pass and one elementwise pass. NABN's gaussian_clip and uniform add one in-place
per-channel correction to the input gradient; IEBN a second elementwise pass backward. IEBN's
per-``(n, c)`` work runs on the same kernels through a ``(1, N·C, |S|)`` view of contiguous
inputs, whose "channels" are the ``(n, c)`` pairs. The statistics are the Functions' inputs,
constants to autograd: the Functions own every gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._stats import as_stats_dtype, channel_view

__all__ = ["AugmentBatchNormFunction", "IEBatchNormFunction", "clamped_channels"]


def instance_layout(input: Tensor, mean: Tensor) -> tuple[Tensor, Tensor] | None:
    """What native BatchNorm kernels need to work per ``(n, c)``.

    A contiguous ``(N, C, *S)`` input is viewed as ``(1, N·C, |S|)``, whose "channels" are the
    ``(n, c)`` pairs. With ``μ`` repeated per ``(n, c)`` and ones as running statistics and
    ``ε = 0``, eval-mode BatchNorm computes ``(x - μ_c)·weight[n, c] + bias[n, c]`` and its
    backward ``sum_S(g)`` and ``sum_S(g·(x - μ_c))``. ``None`` where the memory layout allows no
    such view (channels_last, strided), there is no spatial dimension or no value."""
    if input.dim() < 3 or not input.is_contiguous() or input.numel() == 0:
        return None
    N, C = input.shape[:2]
    return flat_instances(mean, N), mean.new_ones(N * C)


def flat_instances(t: Tensor, N: int) -> Tensor:
    """A ``(C,)`` or ``(N, C)`` tensor as the ``(N·C,)`` parameters of the instance view."""
    return t.reshape(-1) if t.dim() == 2 else t.repeat(N)


def instance_affine(
    input: Tensor,
    layout: tuple[Tensor, Tensor] | None,
    mean: Tensor,
    scale: Tensor,
    shift: Tensor | None,
) -> Tensor:
    """``(x - μ_c)·scale[n, c] + shift[n, c]`` in one elementwise pass: eval-mode native
    BatchNorm on the instance view (see :func:`instance_layout`), a composite ``addcmul``
    otherwise. ``scale`` and ``shift`` (``None``: 0) broadcast to ``(N, C)``; everything is in
    the statistics dtype."""
    N, C = input.shape[:2]
    if layout is not None:
        output = torch.batch_norm(
            input.view(1, N * C, -1),
            flat_instances(scale, N),
            None if shift is None else flat_instances(shift, N),
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
    output = torch.addcmul(channel_view(offset, ndim), input, channel_view(scale, ndim))
    return output.to(input.dtype)


def instance_grad_sums(
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
    g_xc = grad * (input.to(mean.dtype) - channel_view(mean, ndim))
    if ndim == 2:
        return grad.to(mean.dtype), g_xc
    spatial = tuple(range(2, ndim))
    return grad.sum(dim=spatial, dtype=mean.dtype), g_xc.sum(dim=spatial, dtype=mean.dtype)


class AugmentBatchNormFunction(torch.autograd.Function):
    """Training-mode NABN on native BatchNorm kernels, given ``μ'``, ``v'`` (constants).

    Forward: the native per-channel affine at ``(μ', v')``. Backward, with ``s = 1/sqrt(v' + ε)``,
    ``x̂ = (x - μ')·s``, ``g = dL/dy``, means per channel::

        dx = γ s [g - mean(g) - (x̂ + δ s)·mean(g x̂)]   gaussian_clip, uniform
        dx = γ s [g - mean(g) - x̂·mean(g x̂)]           gaussian_reject
        dx = γ s [g - mean(g)]                          gaussian_reject where max(·, 0) clamps

    (``d v'/dx`` is ``2(x - μ)/M`` for the first, ``2(x - μ')/M`` for the second, 0 for the
    third).

    The first is native BatchNorm's backward at ``(μ', s)`` minus the per-channel constant
    ``γ s² δ·mean(g x̂)``; the second is exactly that backward. On a clamped channel ``v'`` is the
    constant 0 and ``s = 1/sqrt(ε)`` is large: the backward's ``x̂·mean(g x̂)`` term would have to
    cancel against a correction of the same size, which loses every digit in half precision, so
    those channels get the third formula directly.

    ``mean_shift`` is ``δ`` for gaussian_clip and uniform, ``None`` for gaussian_reject;
    ``clamped`` is a ``(C,)`` bool mask for gaussian_reject where some channel may be clamped,
    else ``None``.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, shifted_mean, var_used, mean_shift, clamped, eps):
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
        var_eps = var_used + eps
        invstd = torch.rsqrt(var_eps)
        correction = None  # γ s² δ, per channel
        if mean_shift is not None:
            correction = mean_shift / var_eps
            if weight is not None:
                correction = correction * weight
        ctx.save_for_backward(input, weight, shifted_mean, invstd, correction, clamped)
        ctx.eps = eps
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, shifted_mean, invstd, correction, clamped = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_output = grad_output.contiguous(memory_format=memory_format(input))
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output,
            input,
            weight,
            None,
            None,
            shifted_mean,
            invstd,
            True,
            ctx.eps,
            [need_input, True, need_bias or clamped is not None],
        )
        if need_input:
            ndim = input.dim()
            count = input.numel() // input.shape[1]
            if correction is not None:  # gaussian_clip, uniform: - γ s² δ mean(g x̂)
                # grad_weight = sum(g x̂) = M·mean(g x̂); grad_input is ours to update in place.
                coef = channel_view(correction * grad_weight, ndim).to(grad_input.dtype)
                grad_input.add_(coef, alpha=-1 / count)
            if clamped is not None:  # gaussian_reject on clamped channels: γ s [g - mean(g)]
                gain = invstd if weight is None else weight * invstd
                direct = torch.addcmul(
                    channel_view(-gain * grad_bias / count, ndim),
                    grad_output,
                    channel_view(gain, ndim),
                )
                grad_input = torch.where(channel_view(clamped, ndim), direct, grad_input)
                grad_input = grad_input.to(input.dtype)
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


def memory_format(input: Tensor) -> torch.memory_format:
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def clamped_channels(raw_var: Tensor) -> Tensor | None:
    """Where gaussian_reject's ``max(mean(x²) - μ'², 0)`` clamps, as a ``(C,)`` bool mask, or
    ``None`` when no channel does. Knowing "none" costs a host synchronization, cheap on the CPU
    only; elsewhere, and under ``torch.compile``, the mask is always kept."""
    clamped = raw_var < 0
    if (
        not torch.compiler.is_compiling()
        and raw_var.device.type == "cpu"
        and not bool(clamped.any())
    ):
        return None
    return clamped


class IEBatchNormFunction(torch.autograd.Function):
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
        weight, bias = as_stats_dtype(weight, bias, dtype=mean.dtype)
        invstd = torch.rsqrt(var + eps)
        gate = torch.addcmul(bias_readjust, instance_mean, weight_readjust).sigmoid_()  # a
        gain = (gate if weight is None else gate * weight) * invstd  # γ a s
        layout = instance_layout(input, mean)
        output = instance_affine(input, layout, mean, gain, bias)
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
        sum_g, sum_g_xc = instance_grad_sums(grad_output, input, layout, mean)
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
            grad_input = instance_affine(input, layout, mean, slope, offset)
            grad_input.addcmul_(grad_output, channel_view(gain, input.dim()).to(input.dtype))
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
