"""The one reference of both methods: DESIGN.md's formulas as chains of tensor operations.

Independent of the library's implementations (it imports none of them): autograd differentiates
the whole chain, so its gradients are the formulas' own. The tests run it in float64 on the
values they give the layers; the benchmarks time it as the cost of the reference
implementations, whose structure it follows (the paper's NABN code, the IEBN reference's
unaffine BatchNorm then gate).

- NABN: ``μ' = mean(x) + δ``; ``v' = mean((x - μ')²)`` (gaussian_clip, uniform) or
  ``max(mean(x²) - μ'², 0)`` (gaussian_reject, the Jittor seed's formula);
  ``y = (x - μ') / sqrt(v' + ε)·γ + β``; running averages of ``μ'`` and ``v'`` (both references).
- IEBN: ``y = BN(x)·γ·sigmoid(mean_S(x)·w + b) + β``, BN unaffine with ``nn.BatchNorm``'s
  statistics and running averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CompositeAugmentBatchNorm",
    "CompositeIEBatchNorm",
    "iebn_reference",
    "nabn_reference",
    "sample_shift",
]


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _view(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def nabn_reference(x, weight, bias, mean_shift, noise, eps=1e-5):
    """Training-mode NABN. Returns ``(y, μ, σ², μ', v')``."""
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
    """IEBN with batch statistics (``mean``, ``var`` None) or the given ones."""
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


def sample_shift(num_features: int, noise: str, theta: float, **factory) -> Tensor:
    """``δ`` as DESIGN.md 1.1 step 1 draws it (``s = 1``)."""
    if noise == "uniform":
        return torch.empty(num_features, **factory).uniform_(-theta, theta)
    z = torch.randn(num_features, **factory)
    if noise == "gaussian_clip":
        return z.clamp(-theta, theta)
    return torch.where(z.abs() <= theta, z, torch.zeros_like(z))


class _CompositeBase(nn.modules.batchnorm._NormBase):
    """``nn.BatchNorm``'s state and momentum rule, for any input rank."""

    def _check_input_dim(self, input: Tensor) -> None:
        pass

    def _momentum(self) -> float:
        """The factor of ``nn.BatchNorm.forward`` (``momentum=None``: cumulative average)."""
        if not (self.training and self.track_running_stats):
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _tracked(self) -> tuple[Tensor | None, Tensor | None]:
        if self.training and not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var


class CompositeAugmentBatchNorm(_CompositeBase):
    """NABN as :func:`nabn_reference` (any input rank; ``mean_shift`` as in our layers)."""

    def __init__(
        self, num_features: int, *, noise: str = "gaussian_clip", theta: float = 0.2, **kwargs
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.noise, self.theta = noise, theta

    def forward(self, x: Tensor, mean_shift: Tensor | None = None) -> Tensor:
        momentum = self._momentum()
        running_mean, running_var = self._tracked()
        if not self.training:
            batch_stats = running_mean is None
            return F.batch_norm(
                x, running_mean, running_var, self.weight, self.bias, batch_stats, 0.0, self.eps
            )
        if mean_shift is None:
            mean_shift = sample_shift(x.shape[1], self.noise, self.theta, device=x.device)
        y, _, _, shifted, var = nabn_reference(
            x, self.weight, self.bias, mean_shift.to(x.dtype), self.noise, self.eps
        )
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(shifted.to(running_mean.dtype), momentum)
                running_var.lerp_(var.to(running_var.dtype), momentum)
        return y


class CompositeIEBatchNorm(_CompositeBase):
    """IEBN as the reference: unaffine BatchNorm (``F.batch_norm``), then the instance gate."""

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.weight_readjust = nn.Parameter(torch.zeros(num_features, **factory))
        self.bias_readjust = nn.Parameter(torch.full((num_features,), -1.0, **factory))

    def forward(self, x: Tensor) -> Tensor:
        momentum = self._momentum()
        running_mean, running_var = self._tracked()
        use_batch_stats = self.training or running_mean is None
        xhat = F.batch_norm(
            x, running_mean, running_var, None, None, use_batch_stats, momentum, self.eps
        )
        pooled = x.mean(list(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x
        gate = torch.sigmoid(pooled * _view(self.weight_readjust, x) + _view(self.bias_readjust, x))
        if self.weight is None:
            return xhat * gate
        return xhat * _view(self.weight, x) * gate + _view(self.bias, x)
