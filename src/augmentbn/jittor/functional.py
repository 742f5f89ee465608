"""The formulas of NABN and IEBN for Jittor: the same functions as :mod:`augmentbn.functional`.

Notation as in DESIGN.md section 1: input ``x`` of shape ``(N, C, *S)``, per channel ``M = N·|S|``
values, batch mean ``μ``, biased batch variance ``σ²``, affine ``γ, β``, epsilon ``ε``::

    NABN   μ' = μ + δ,   v' = σ² + δ²                  (gaussian_clip, uniform)
                         v' = max(mean(x²) - μ'², 0)    (gaussian_reject, the Jittor seed)
           y  = γ (x - μ') / sqrt(v' + ε) + β
    IEBN   y  = (x - μ) / sqrt(σ² + ε) · γ · sigmoid(w · mean_S(x) + b) + β

Each is written as Jittor's own ``nn.BatchNorm`` is: per-channel reductions, per-channel work on
``C`` values, then one fused ``x · scale + shift``. Jittor fuses the chain and differentiates it,
so the cost is Jittor's BatchNorm's. ``δ`` is a constant. The reductions are of ``x - c`` and
``(x - c)²``, where ``c`` is each channel's first value (the shifted-data algorithm): ``E[x²] - μ²``
would cancel in float32 once the mean is large against the spread, ``E[(x-c)²] - E[x-c]²`` does
not, since ``c`` lies within the data.

Distributed training (``jt.in_mpi`` and ``sync=True``): rank 0's ``c`` is broadcast, the sums of
``x - c`` and ``(x - c)²`` and the count are all-reduced before the statistics are formed, and
``δ`` is broadcast from rank 0, so ``P`` processes compute what one process computes on the
concatenated batch (DESIGN.md 1.1). The check "more than one value per channel" sees the local
batch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jittor as jt
import numpy as np

from ..methods.checks import (
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
    "batch_norm",
    "ie_batch_norm",
    "sample_mean_shift",
]

Momentum = float | jt.Var


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_float(input: jt.Var) -> jt.Var:
    """Integer input (the seed's example passes ``jt.array([1, 2, 3])``) is taken as float32."""
    return input if input.dtype.is_float() else input.float32()


def _channel_dims(input: jt.Var) -> list[int]:
    """The dimensions a channel's statistics run over: ``N`` and the spatial ones."""
    return [0, *range(2, input.ndim)]


def _per_channel(value: jt.Var, input: jt.Var, dims: Sequence[int]) -> jt.Var:
    """A ``(C,)`` (or ``(N, C)``) value broadcast against ``input`` along ``dims``."""
    return value.broadcast(input, list(dims))


def _in_mpi(sync: bool) -> bool:
    return sync and jt.in_mpi


def check_input(input: jt.Var, num_features: int | None, batch_stats: bool, where: str) -> None:
    """``nn.BatchNorm``'s input checks (:func:`~augmentbn.methods.checks.check_input_shape`)."""
    check_input_shape(tuple(input.shape), num_features, batch_stats, where)


def _moments(
    input: jt.Var, sync: bool, instance_means: bool = False
) -> tuple[jt.Var, jt.Var, float | jt.Var, jt.Var | None]:
    """Per-channel mean, biased variance and the count ``M``, across processes under MPI, and
    with ``instance_means`` the per-instance ``mean_S(x)`` (IEBN's), from the same reductions.

    Shifted data: with ``c`` the channel's first value (rank 0's under MPI), constant to
    autograd, ``μ = c + mean(x - c)`` and ``σ² = mean((x - c)²) - mean(x - c)²``, which keeps
    float32 accurate whatever the mean (``c`` lies within the data).
    """
    n, c = input.shape[:2]
    count = input.numel() // c
    dims = _channel_dims(input)
    pilot = input[(0, slice(None), *([0] * (input.ndim - 2)))].detach()  # (C,)
    if _in_mpi(sync):
        pilot = pilot.mpi_broadcast(root=0)
    centered = input - _per_channel(pilot, input, dims)
    instance_mean = None
    if instance_means:  # per-instance sums first, then over the batch: one fused pass
        spatial = list(range(2, input.ndim))
        size = count // n
        inst = centered.mean(spatial) if spatial else centered  # (N, C)
        inst_sq = (centered * centered).mean(spatial) if spatial else centered * centered
        sums, sq_sums = inst.sum(0) * size, inst_sq.sum(0) * size
        instance_mean = pilot + inst
    else:
        sums, sq_sums = centered.sum(dims), (centered * centered).sum(dims)
    if _in_mpi(sync):
        # One all-reduce of [Σ(x-c), Σ(x-c)², M]: processes may hold batches of different sizes.
        total = jt.concat([sums, sq_sums, jt.array([float(count)])]).mpi_all_reduce("add")
        count = total[2 * c : 2 * c + 1]
        sums, sq_sums = total[:c], total[c : 2 * c]
    shift, sq = sums / count, sq_sums / count
    return pilot + shift, (sq - shift * shift).maximum(0.0), count, instance_mean


def _update_running_stats(
    running_mean: jt.Var,
    running_var: jt.Var,
    mean: jt.Var,
    var: jt.Var,
    momentum: Momentum,
    valid: jt.Var,
) -> None:
    """``running ← running + momentum·(batch - running)`` on the ``valid`` channels only.

    ``valid`` marks the channels whose moments are finite: non-finite input does not poison the
    running statistics (as in the PyTorch layers), and no host synchronization is needed.
    """
    for running, batch_value in ((running_mean, mean), (running_var, var)):
        batch_value = batch_value.detach().cast(running.dtype)  # stop_grad() would be in place
        updated = running + (batch_value - running) * momentum
        running.update(jt.ternary(valid, updated, running))


def _update_clean(
    running_mean: jt.Var,
    running_var: jt.Var,
    moments: tuple[jt.Var, jt.Var, float | jt.Var],
    momentum: Momentum,
) -> None:
    """``torch.nn.BatchNorm``'s update: the batch mean and the unbiased variance."""
    mean, var, count = moments
    unbiased = var * count / (count - 1)
    _update_running_stats(running_mean, running_var, mean, unbiased, momentum, _finite(mean, var))


def _finite(mean: jt.Var, var: jt.Var) -> jt.Var:
    """Channels whose batch statistics are finite (the mean is NaN or inf whenever a value is;
    the variance is inf where the squares overflow)."""
    return jt.isfinite(mean) & jt.isfinite(var)


def _dtype_name(dtype: Any) -> str:
    return dtype if isinstance(dtype, str) else getattr(dtype, "__name__", str(dtype))


def _to_var(value: Any) -> jt.Var:
    """A Var from an array-like, keeping float64 (``jt.array`` would round it to float32)."""
    array = np.asarray(value)
    return jt.array(array, dtype=str(array.dtype)) if array.dtype == np.float64 else jt.array(array)


def _normalize(
    input: jt.Var,
    mean: jt.Var,
    var: jt.Var,
    weight: jt.Var | None,
    bias: jt.Var | None,
    eps: float,
) -> jt.Var:
    """``(x - mean) · weight / sqrt(var + eps) + bias``, centred first: ``x · scale + shift``
    would cost the same (Jittor fuses either) but cancel in ``weight``'s gradient,
    ``Σ g·x - mean·Σ g``, once the mean is large against the spread."""
    scale = 1.0 / jt.sqrt(var + eps)
    if weight is not None:
        scale = weight * scale
    dims = _channel_dims(input)
    output = (input - _per_channel(mean, input, dims)) * _per_channel(scale, input, dims)
    return output if bias is None else output + _per_channel(bias, input, dims)


def _check_channel_vars(num_features: int, where: str, **vars: jt.Var | None) -> None:
    check_channel_shapes(
        num_features, where, {k: None if v is None else tuple(v.shape) for k, v in vars.items()}
    )


def _as_mean_shift(mean_shift: Any, num_features: int, where: str) -> jt.Var:
    """A given ``δ`` as a constant float32 Var of shape ``(C,)``; ``ValueError`` otherwise."""
    shift = mean_shift if isinstance(mean_shift, jt.Var) else _to_var(mean_shift)
    if tuple(shift.shape) != (num_features,):
        raise ValueError(
            f"{where}: mean_shift must have shape ({num_features},), one value per channel, "
            f"got {tuple(shift.shape)}"
        )
    return (shift if shift.dtype.is_float() else shift.float32()).detach()


def check_mean_shift(mean_shift: Any, num_features: int, where: str) -> None:
    """Raise ``ValueError`` unless ``mean_shift`` is ``None`` or has shape ``(num_features,)``."""
    if mean_shift is not None:
        _as_mean_shift(mean_shift, num_features, where)


# --------------------------------------------------------------------------------------------
# NABN
# --------------------------------------------------------------------------------------------


def sample_mean_shift(
    num_features: int,
    *,
    theta: float | None = None,
    noise: str = "gaussian_clip",
    noise_std: float = 1.0,
    generator: np.random.Generator | None = None,
    device: None = None,
    dtype: Any = None,
) -> jt.Var:
    """Draw the per-channel mean shift ``δ`` of NABN (DESIGN.md 1.1 step 1), shape ``(C,)``.

    - ``gaussian_clip``: ``δ = clamp(z, -θ, θ)``, ``z ~ N(0, s²)``;
    - ``gaussian_reject``: ``δ = z if |z| ≤ θ else 0``, ``z ~ N(0, s²)``;
    - ``uniform``: ``δ ~ U(-θ, θ)``.

    Args:
        generator: Jittor has no generator objects. ``None`` draws from Jittor's global random
            state (seeded by ``jt.set_seed``, on the device, no synchronization); a
            ``numpy.random.Generator`` gives an independent, reproducible stream per layer.
        device: accepted for the PyTorch signature and must be ``None``: Jittor places every Var
            by ``jt.flags.use_cuda``.
        dtype: a Jittor float dtype (default float32).
    """
    check_noise_args(theta, noise, noise_std, "sample_mean_shift")
    theta = default_theta(noise) if theta is None else theta
    if device is not None:
        raise ValueError(
            "sample_mean_shift: device must be None in Jittor, which places every Var by "
            f"jt.flags.use_cuda; got {device!r}"
        )
    dtype = _dtype_name(dtype or "float32")
    shape = (num_features,)
    if generator is None:
        draw = jt.rand(shape, dtype) if noise == "uniform" else jt.randn(shape, dtype)
    elif isinstance(generator, np.random.Generator):
        sample = generator.random(shape) if noise == "uniform" else generator.standard_normal(shape)
        draw = jt.array(sample, dtype=dtype)
    else:
        raise TypeError(
            "sample_mean_shift: generator must be None or a numpy.random.Generator, got "
            f"{type(generator).__name__}"
        )
    if noise == "uniform":
        return ((draw * 2.0 - 1.0) * theta).stop_grad()
    z = draw * noise_std
    if noise == "gaussian_clip":
        return z.clamp(-theta, theta).stop_grad()
    return jt.ternary(z.abs() <= theta, z, jt.zeros_like(z)).stop_grad()


def augment_batch_norm(
    input: jt.Var,
    running_mean: jt.Var | None,
    running_var: jt.Var | None,
    weight: jt.Var | None = None,
    bias: jt.Var | None = None,
    training: bool = False,
    momentum: Momentum = 0.1,
    eps: float = 1e-5,
    *,
    theta: float | None = None,
    noise: str = "gaussian_clip",
    noise_std: float = 1.0,
    running_stats: str = "perturbed",
    mean_shift: jt.Var | None = None,
    generator: np.random.Generator | None = None,
    sync: bool = True,
) -> jt.Var:
    """Noise-assisted batch normalization (NABN, "AugmentBN"), DESIGN.md 1.1, for Jittor.

    The same function as :func:`augmentbn.functional.augment_batch_norm`. In training mode the
    batch mean is shifted by ``δ`` (``mean_shift`` if given, else a fresh
    :func:`sample_mean_shift` draw) and ``running_mean``/``running_var``, when given, are updated
    in place with ``momentum`` (a float, or a Var for the cumulative average): with ``μ'`` and the
    biased ``v'`` (``running_stats="perturbed"``, as both references) or with ``μ`` and the
    unbiased ``σ²`` (``"clean"``, exactly ``torch.nn.BatchNorm``). Outside training this is plain
    batch normalization: running statistics if given, else batch statistics; never noise.
    Channels whose batch statistics are not finite keep their running statistics.

    ``sync`` (Jittor only, as in ``jittor.nn.BatchNorm``): under MPI, reduce the statistics
    across processes and share one ``δ``.
    """
    where = "augment_batch_norm"
    check_noise_args(theta, noise, noise_std, where)
    check_running_stats(running_stats, where)
    check_input(input, None, training or running_mean is None, where)
    num_features = input.shape[1]
    _check_channel_vars(
        num_features,
        where,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    delta = None if mean_shift is None else _as_mean_shift(mean_shift, num_features, where)
    if not training:
        return batch_norm(
            input, running_mean, running_var, weight, bias, False, 0.0, eps, sync=sync
        )
    input = _as_float(input)
    if delta is None:
        delta = sample_mean_shift(
            num_features, theta=theta, noise=noise, noise_std=noise_std, generator=generator
        )
    if _in_mpi(sync):
        delta = delta.mpi_broadcast(root=0)  # one δ for the whole distributed batch

    moments = _moments(input, sync)[:3]
    mean, var, _ = moments  # μ, σ² (biased)
    shifted_mean = mean + delta  # μ'
    if noise == "gaussian_reject":
        # The seed's max(mean(x²) - μ'², 0), written as σ² - δ(2μ + δ).
        var_used = (var - delta * (2.0 * mean + delta)).maximum(0.0)
    else:
        var_used = var + delta * delta  # mean((x - μ')²)
    output = _normalize(input, shifted_mean, var_used, weight, bias, eps)

    if running_mean is not None and running_stats == "perturbed":
        _update_running_stats(
            running_mean, running_var, shifted_mean, var_used, momentum, _finite(mean, var)
        )
    elif running_mean is not None:
        _update_clean(running_mean, running_var, moments, momentum)
    return output


def batch_norm(
    input: jt.Var,
    running_mean: jt.Var | None,
    running_var: jt.Var | None,
    weight: jt.Var | None = None,
    bias: jt.Var | None = None,
    training: bool = False,
    momentum: Momentum = 0.1,
    eps: float = 1e-5,
    *,
    sync: bool = True,
) -> jt.Var:
    """``torch.nn.functional.batch_norm`` for Jittor: unbiased running variance, as PyTorch.

    Batch statistics in training or when no running statistics are given, the running ones
    otherwise. (``jittor.nn.BatchNorm`` averages the biased variance instead.)
    """
    use_batch_stats = training or running_mean is None
    check_input(input, None, use_batch_stats, "batch_norm")
    _check_channel_vars(
        input.shape[1],
        "batch_norm",
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    input = _as_float(input)
    if not use_batch_stats:
        return _normalize(input, running_mean, running_var, weight, bias, eps)
    moments = _moments(input, sync)[:3]
    if training and running_mean is not None:
        _update_clean(running_mean, running_var, moments, momentum)
    return _normalize(input, *moments[:2], weight, bias, eps)


# --------------------------------------------------------------------------------------------
# IEBN
# --------------------------------------------------------------------------------------------


def ie_batch_norm(
    input: jt.Var,
    running_mean: jt.Var | None,
    running_var: jt.Var | None,
    weight: jt.Var | None,
    bias: jt.Var | None,
    weight_readjust: jt.Var,
    bias_readjust: jt.Var,
    training: bool = False,
    momentum: Momentum = 0.1,
    eps: float = 1e-5,
    *,
    sync: bool = True,
) -> jt.Var:
    """Instance Enhancement Batch Normalization (IEBN), DESIGN.md 1.2, for Jittor.

    The same function as :func:`augmentbn.functional.ie_batch_norm`:
    ``y = BN(x)·γ·sigmoid(w·mean_S(x) + b) + β`` with ``BN`` unaffine (batch statistics in
    training or without running statistics, running ones otherwise). Running statistics are
    updated as ``torch.nn.BatchNorm`` (unbiased variance); non-finite channels keep theirs.
    """
    use_batch_stats = training or running_mean is None
    check_input(input, None, use_batch_stats, "ie_batch_norm")
    _check_channel_vars(
        input.shape[1],
        "ie_batch_norm",
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        weight_readjust=weight_readjust,
        bias_readjust=bias_readjust,
    )
    input = _as_float(input)
    spatial = list(range(2, input.ndim))
    if use_batch_stats:
        *moments, instance_mean = _moments(input, sync, instance_means=True)  # mean_S(x): (N, C)
        mean, var, _ = moments
        if training and running_mean is not None:
            _update_clean(running_mean, running_var, moments, momentum)
    else:
        mean, var = running_mean, running_var
        instance_mean = input.mean(spatial) if spatial else input  # mean_S(x), (N, C)
    gate = jt.sigmoid(instance_mean * weight_readjust + bias_readjust)  # a[n, c]
    scale = gate * (1.0 / jt.sqrt(var + eps))
    if weight is not None:
        scale = scale * weight
    centred = input - _per_channel(mean, input, _channel_dims(input))  # see _normalize
    output = centred * (scale.broadcast(input, spatial) if spatial else scale)
    return output if bias is None else output + _per_channel(bias, input, _channel_dims(input))
