"""Composite NABN and IEBN: chains of tensor operations, as the references write them.

They are the baselines the benchmarks measure against and the tests compare the fast path with;
the library itself never uses them. Autograd differentiates the whole chain.

- NABN, as the paper's PyTorch code: ``μ' = mean(x) + δ``, ``v' = mean((x - μ')²)``
  (gaussian_clip, uniform); ``v' = max(mean(x²) - μ'², 0)`` for gaussian_reject (the Jittor
  seed's formula); ``y = (x - μ') / sqrt(v' + ε)·γ + β``; running averages of ``μ'`` and ``v'``.
- IEBN, as the reference: BatchNorm without affine, then
  ``·γ·sigmoid(avgpool(x)·w + b) + β``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augmentbn.functional import sample_mean_shift

__all__ = ["CompositeAugmentBatchNorm", "CompositeIEBatchNorm"]


def _channel(t: Tensor, ndim: int) -> Tensor:
    return t.view(1, -1, *([1] * (ndim - 2)))


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
    """NABN written as the paper's code (any input rank; ``mean_shift`` as in our layers)."""

    def __init__(
        self, num_features: int, *, noise: str = "gaussian_clip", theta: float = 0.2, **kwargs
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.noise, self.theta = noise, theta

    def forward(self, x: Tensor, mean_shift: Tensor | None = None) -> Tensor:
        momentum = self._momentum()
        running_mean, running_var = self._tracked()
        if not self.training:
            return F.batch_norm(
                x,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                running_mean is None,
                0.0,
                self.eps,
            )
        dims = [0, *range(2, x.dim())]
        if mean_shift is None:
            mean_shift = sample_mean_shift(
                x.shape[1], theta=self.theta, noise=self.noise, device=x.device, dtype=x.dtype
            )
        shifted = x.mean(dims) + mean_shift.to(x.dtype)
        if self.noise == "gaussian_reject":
            var = torch.clamp((x * x).mean(dims) - shifted**2, min=0)
        else:
            var = ((x - _channel(shifted, x.dim())) ** 2).mean(dims)
        y = (x - _channel(shifted, x.dim())) / torch.sqrt(_channel(var, x.dim()) + self.eps)
        if self.weight is not None:
            y = y * _channel(self.weight, x.dim()) + _channel(self.bias, x.dim())
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(shifted.to(running_mean.dtype), momentum)
                running_var.lerp_(var.to(running_var.dtype), momentum)
        return y


class CompositeIEBatchNorm(_CompositeBase):
    """IEBN written as the reference: unaffine BatchNorm, then the per-instance gate."""

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
        gate = torch.sigmoid(
            pooled * _channel(self.weight_readjust, x.dim()) + _channel(self.bias_readjust, x.dim())
        )
        if self.weight is None:
            return xhat * gate
        return xhat * _channel(self.weight, x.dim()) * gate + _channel(self.bias, x.dim())
