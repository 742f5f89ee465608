"""Independent references, written from DESIGN.md's formulas as chains of tensor operations."""

from __future__ import annotations

import torch


def _dims(x):
    return [0, *range(2, x.dim())]


def _view(t, x):
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def nabn_reference(x, weight, bias, mean_shift, noise, eps=1e-5):
    """Training-mode NABN. Returns (y, μ, σ², μ', v')."""
    dims = _dims(x)
    mean = x.mean(dims)
    var = ((x - _view(mean, x)) ** 2).mean(dims)
    shifted = mean + mean_shift
    if noise == "gaussian_reject":
        v = torch.clamp((x * x).mean(dims) - shifted**2, min=0)
    else:
        v = ((x - _view(shifted, x)) ** 2).mean(dims)
    y = (x - _view(shifted, x)) / torch.sqrt(_view(v, x) + eps)
    if weight is not None:
        y = y * _view(weight, x) + _view(bias, x)
    return y, mean, var, shifted, v


def iebn_reference(x, weight, bias, w_r, b_r, mean=None, var=None, eps=1e-5):
    """IEBN with batch statistics (mean, var None) or the given ones."""
    dims = _dims(x)
    if mean is None:
        mean = x.mean(dims)
        var = ((x - _view(mean, x)) ** 2).mean(dims)
    xhat = (x - _view(mean, x)) / torch.sqrt(_view(var, x) + eps)
    inst = x.mean(list(range(2, x.dim()))) if x.dim() > 2 else x
    gate = torch.sigmoid(inst * w_r + b_r).reshape(*inst.shape, *([1] * (x.dim() - 2)))
    gamma = _view(weight, x) if weight is not None else 1.0
    y = xhat * gamma * gate
    return y + _view(bias, x) if bias is not None else y
