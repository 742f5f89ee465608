"""The layers in plain differentiable PyTorch operators, for tracers and exporters.

``torch.fx.symbolic_trace``, ``torch.jit.trace``, ``torch.export`` and the ONNX exporters record
the operators a forward pass calls. :mod:`augmentbn.functional` is written for eager speed: Python
branches on shapes and values, autograd Functions with their own backward, and compiled CPU
operators (``torch.ops.augmentbn``) that a saved graph could only run where they are loaded. While
one of those tools records, the layers take the functions below instead: the same formulas in
``aten`` operators only, rank-agnostic through an ``(N, C, L)`` view, with gradients from
autograd. In evaluation NABN is exactly ``F.batch_norm``; IEBN is ``F.batch_norm`` without affine
times ``γ·sigmoid(w·mean_S(x) + b)``, plus ``β``.

Statistics are computed in the input's dtype (``functional`` accumulates half precision in
float32), and a channel whose batch statistics are not finite keeps its running statistics, as in
``functional``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import Proxy

__all__ = [
    "augment_batch_norm",
    "draw_mean_shift",
    "ie_batch_norm",
    "ie_batch_norm_eval",
    "recorder",
]


def recorder(input: Tensor) -> str | None:
    """The tool recording a layer's call on ``input``, or ``None`` in eager mode (and under plain
    ``torch.compile``, which runs :mod:`augmentbn.functional`).

    ``torch.fx`` passes a ``Proxy``; the TorchScript-based ONNX exporter runs ``torch.jit.trace``
    and the dynamo-based one ``torch.export``. ``torch.jit.script`` is detected by
    ``torch.jit.is_scripting()`` in the layers themselves, since TorchScript compiles them. Every
    eager call pays for these checks, so they are the cheapest there are (well under 1 µs)."""
    if isinstance(input, Proxy):
        return "torch.fx"
    if torch.compiler.is_exporting():
        return "torch.export"
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    return None


def _as_3d(input: Tensor, num_features: int) -> Tensor:
    """``(N, C, *S)`` as ``(N, C, L)``, ``L = |S|`` (1 for a 2-D input), without rank checks.
    ``C`` is the layer's constant, so that exporters know the channel count (the TorchScript
    ONNX exporter refuses BatchNorm on an unknown one)."""
    return input.reshape(input.shape[0], num_features, -1)


def _update(running: Tensor, value: Tensor, finite: Tensor, momentum: float | Tensor) -> None:
    """``running ← running + momentum·(value - running)`` where ``finite``, in place, without
    autograd history (``momentum`` may be a float32 tensor beside float64 statistics). By
    ``aten.add_``, which ``torch.fx`` keeps: its dead-code elimination drops unused in-place
    tensor methods, and torchvision's feature extractor runs it."""
    value = torch.where(finite, value.detach().to(running.dtype), running)
    torch.ops.aten.add_.Tensor(running, (value - running) * momentum)


def _affine(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None):
    """``(x - mean)·invstd·weight + bias`` per channel of an ``(N, C, L)`` view."""
    scale = invstd if weight is None else invstd * weight
    y = (x - mean[:, None]) * scale[:, None]
    return y if bias is None else y + bias[:, None]


def draw_mean_shift(
    like: Tensor,
    num_features: int,
    theta: float,
    noise: str,
    noise_std: float,
    generator: torch.Generator | None,
) -> Tensor:
    """NABN's ``δ``, drawn by the same generator calls as
    :func:`augmentbn.functional.sample_mean_shift` (so a seeded generator gives the same values),
    on ``like``'s device and dtype through tensor methods, which ``torch.fx`` records."""
    shift = like.new_empty(num_features)
    if noise == "uniform":
        return shift.uniform_(-theta, theta, generator=generator)
    shift = shift.normal_(generator=generator)
    if noise_std != 1.0:
        shift = shift * noise_std
    if noise == "gaussian_clip":
        return shift.clamp(-theta, theta)
    return shift.masked_fill(shift.abs() > theta, 0.0)


def augment_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | Tensor,
    eps: float,
    *,
    num_features: int,
    theta: float,
    noise: str,
    noise_std: float,
    running_stats: str,
    mean_shift: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`augmentbn.functional.augment_batch_norm` in plain operators (arguments checked by
    the layer)."""
    if not training:
        use_batch_stats = running_mean is None
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, use_batch_stats, 0.0, eps
        )
    x = _as_3d(input, num_features)
    var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
    if mean_shift is None:
        mean_shift = draw_mean_shift(x, num_features, theta, noise, noise_std, generator)
    else:
        mean_shift = mean_shift.detach().to(x.dtype)
    shifted_mean = mean + mean_shift
    if noise == "gaussian_reject":  # mean(x²) - μ'² = σ² - δ(μ + μ'), clamped at 0
        var_used = (var - mean_shift * (mean + shifted_mean)).clamp(min=0.0)
    else:  # mean((x - μ')²) = σ² + δ²
        var_used = var + mean_shift * mean_shift
    output = _affine(x, shifted_mean, torch.rsqrt(var_used + eps), weight, bias)
    if running_mean is not None and running_var is not None:
        finite = var < float("inf")
        if running_stats == "perturbed":
            _update(running_mean, shifted_mean, finite, momentum)
            _update(running_var, var_used, finite, momentum)
        else:
            _update(running_mean, mean, finite, momentum)
            _update(running_var, torch.var(x, dim=(0, 2), correction=1), finite, momentum)
    return output.reshape(input.shape)


def ie_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    weight_readjust: Tensor,
    bias_readjust: Tensor,
    training: bool,
    momentum: float | Tensor,
    eps: float,
    num_features: int,
) -> Tensor:
    """:func:`augmentbn.functional.ie_batch_norm` in plain operators (arguments checked by the
    layer)."""
    if not training:
        return ie_batch_norm_eval(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            weight_readjust,
            bias_readjust,
            eps,
            num_features,
        )
    x = _as_3d(input, num_features)
    var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
    if running_mean is not None and running_var is not None:
        finite = var < float("inf")
        _update(running_mean, mean, finite, momentum)
        _update(running_var, torch.var(x, dim=(0, 2), correction=1), finite, momentum)
    normalized = _affine(x, mean, torch.rsqrt(var + eps), weight, None)  # γ·x̂
    return _gate(input, x, normalized, bias, weight_readjust, bias_readjust)


def ie_batch_norm_eval(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    weight_readjust: Tensor,
    bias_readjust: Tensor,
    eps: float,
    num_features: int,
) -> Tensor:
    """IEBN in evaluation: running statistics if given, else batch statistics. TorchScript
    compiles it.

    The running statistics reach ``F.batch_norm`` as they are: ``torch.fx`` records operators
    on buffers only where a traced value takes part, and would otherwise bake ``1/sqrt(v + ε)``
    into the graph as a constant. Its weight and (zero) bias are always tensors, made from the
    input: the TorchScript ONNX exporter needs the channel count otherwise, which it loses
    through a reshape."""
    x = _as_3d(input, num_features)
    use_batch_stats = running_mean is None or running_var is None
    scale = x.new_ones([num_features]) if weight is None else weight
    zero = x.new_zeros([num_features])
    normalized = F.batch_norm(
        x, running_mean, running_var, scale, zero, use_batch_stats, 0.0, eps
    )  # γ·x̂
    return _gate(input, x, normalized, bias, weight_readjust, bias_readjust)


def _gate(
    input: Tensor,
    x: Tensor,
    normalized: Tensor,
    bias: Tensor | None,
    weight_readjust: Tensor,
    bias_readjust: Tensor,
) -> Tensor:
    """``normalized·sigmoid(w·mean_S(x) + b) + β``, back in ``input``'s shape."""
    gate = torch.sigmoid(x.mean(2) * weight_readjust + bias_readjust)  # a[n, c]
    output = normalized * gate[:, :, None]
    if bias is not None:
        output = output + bias[:, None]
    return output.reshape(input.shape)
