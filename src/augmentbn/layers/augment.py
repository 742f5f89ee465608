"""AugmentBN / NABN modules (DESIGN.md 1.1), thin wrappers over ``augment_batch_norm``."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import augment_batch_norm, check_mean_shift
from ..methods.checks import check_noise_args, check_running_stats, default_theta
from . import _portable
from ._base import BatchNormBase

__all__ = [
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "GauBatchNorm2d",
    "clamp_counts",
    "warn_if_clamped",
]


class _AugmentBatchNorm(BatchNormBase):
    """Batch normalization with a random per-channel shift of the batch mean in training.

    ``y = γ (x - μ') / sqrt(v' + ε) + β`` with ``μ' = μ + δ``; see
    :func:`augmentbn.functional.augment_batch_norm`. Evaluation is plain BatchNorm with the
    running statistics: no noise, ever.

    Args:
        num_features: ``C`` of an ``(N, C, *S)`` input.
        eps, momentum, affine, track_running_stats: as ``nn.BatchNorm``
            (``momentum=None`` is a cumulative average).
        theta: bound ``θ`` of the mean shift; ``None``: 0.2, and 0.3 for ``uniform`` (the
            references' defaults).
        noise: ``"gaussian_clip"`` (the paper's PyTorch code), ``"gaussian_reject"`` (the Jittor
            seed) or ``"uniform"`` (the paper's ablation).
        noise_std: standard deviation ``s`` of the Gaussian before clipping or rejection.
        running_stats: ``"perturbed"`` (the references' update, with ``μ'`` and ``v'``) or
            ``"clean"`` (exactly ``nn.BatchNorm``'s).
        generator: the ``torch.Generator`` the shifts are drawn from (on the input's device);
            ``None`` uses the global one.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        theta: float | None = None,
        noise: str = "gaussian_clip",
        noise_std: float = 1.0,
        running_stats: str = "perturbed",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_noise_args(theta, noise, noise_std, type(self).__name__)
        check_running_stats(running_stats, type(self).__name__)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.theta = default_theta(noise) if theta is None else theta
        self.noise = noise
        self.noise_std = noise_std
        self.running_stats = running_stats
        self.generator = generator
        # gaussian_reject's channel-steps where max(mean(x²) - μ'², 0) clamped v' to 0, counted
        # on the input's device; read (one synchronization) by clamp_counts, at the end of an
        # epoch. A plain attribute, not a buffer: no state dict, traced graph or export sees it.
        self.clamped_channels = torch.zeros((), dtype=torch.int64, device=device)

    def forward(self, input: Tensor, mean_shift: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mean_shift`` (shape ``(C,)``), if given, is used as ``δ``."""
        return self._normalize(input, mean_shift)

    def _normalize(self, input: Tensor, mean_shift: Tensor | None = None) -> Tensor:
        """Eager calls run :func:`augmentbn.functional.augment_batch_norm`; tracers, exporters
        and TorchScript get plain operators (:mod:`._portable`)."""
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            self._script_eval_only()
            return F.batch_norm(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.running_mean is None,
                0.0,
                self.eps,
            )
        recorder = _portable.recorder(input)
        if recorder is not None:
            return self._recorded_forward(input, mean_shift, recorder)
        momentum = self._prepare(input, mean_shift=mean_shift)
        running_mean, running_var = self._running_stats()
        return augment_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            theta=self.theta,
            noise=self.noise,
            noise_std=self.noise_std,
            running_stats=self.running_stats,
            mean_shift=mean_shift,
            generator=self.generator,
            clamp_count=self._clamp_counter(input) if self.noise == "gaussian_reject" else None,
        )

    def _clamp_counter(self, input: Tensor) -> Tensor:
        if self.clamped_channels.device != input.device:
            self.clamped_channels = self.clamped_channels.to(input.device)
        return self.clamped_channels

    def _check_forward_args(self, input: Tensor, mean_shift: Tensor | None = None) -> None:
        super()._check_forward_args(input)
        check_mean_shift(mean_shift, self.num_features, type(self).__name__)

    def _recorded_forward(self, input: Tensor, mean_shift: Tensor | None, recorder: str) -> Tensor:
        momentum = self._prepare_recorded(input, recorder, mean_shift=mean_shift)
        running_mean, running_var = self._running_stats()
        return _portable.augment_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            num_features=self.num_features,
            theta=self.theta,
            noise=self.noise,
            noise_std=self.noise_std,
            running_stats=self.running_stats,
            mean_shift=mean_shift,
            generator=self.generator,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, theta={self.theta}, noise={self.noise!r}, "
            f"noise_std={self.noise_std}, running_stats={self.running_stats!r}"
        )


class AugmentBatchNorm1d(_AugmentBatchNorm):
    """NABN over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input; the counterpart of ``BatchNorm1d``."""

    _input_ranks = (2, 3)


class AugmentBatchNorm2d(_AugmentBatchNorm):
    """NABN over a 4D ``(N, C, H, W)`` input; the counterpart of ``BatchNorm2d``."""

    _input_ranks = (4,)


class AugmentBatchNorm3d(_AugmentBatchNorm):
    """NABN over a 5D ``(N, C, D, H, W)`` input; the counterpart of ``BatchNorm3d``."""

    _input_ranks = (5,)


GauBatchNorm2d = AugmentBatchNorm2d
"""The name of the paper's PyTorch code, with its default noise ``gaussian_clip`` (ours too).
The Jittor seed's ``GauBatchNorm`` (:class:`augmentbn.jittor.GauBatchNorm`) draws
``gaussian_reject`` instead; ``AugmentBatchNorm2d(C, noise="gaussian_reject")`` is that here."""


def clamp_counts(module: nn.Module, *, reset: bool = True) -> dict[str, int]:
    """Per gaussian_reject NABN layer of ``module``: the channel-steps, since the last reset,
    where the Jittor seed's variance ``max(mean(x²) - μ'², 0)`` clamped to 0 (which happens
    when ``|μ|·|δ|`` exceeds about ``σ²/2``: the channel is then divided by ``sqrt(ε)``).

    One host synchronization for all layers: call it at the end of an epoch, not per step.
    """
    layers = {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, _AugmentBatchNorm) and layer.noise == "gaussian_reject"
    }
    if not layers:
        return {}
    counters = [layer.clamped_channels for layer in layers.values()]
    values = torch.stack([c.to(counters[0].device) for c in counters]).tolist()
    if reset:
        for counter in counters:
            counter.zero_()
    return dict(zip(layers, values, strict=True))


_warned_clamping = False


def warn_if_clamped(module: nn.Module) -> int:
    """Read and reset :func:`clamp_counts`; warn once per process when some channel clamped.
    Returns the number of clamped channel-steps."""
    global _warned_clamping
    counts = clamp_counts(module)
    total = sum(counts.values())
    if total and not _warned_clamping:
        _warned_clamping = True
        worst = max(counts, key=counts.get)
        warnings.warn(
            f"NABN gaussian_reject: the Jittor seed's variance max(mean(x²) - μ'², 0) clamped to 0 "
            f"on {total} channel-steps ({counts[worst]} in layer {worst!r}); those channels are "
            "divided by sqrt(eps). It happens where |mean|·|δ| exceeds about variance/2 "
            "(README, 'NABN: three noise types'); noise='gaussian_clip' has no such clamp.",
            RuntimeWarning,
            stacklevel=2,
        )
    return total
