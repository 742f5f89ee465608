"""Jittor modules over :mod:`augmentbn.jittor.functional`: the PyTorch layers' twins.

Same constructor arguments, parameter and buffer names and shapes as the PyTorch layers
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``, and IEBN's
``weight_readjust``, ``bias_readjust``), in Jittor's conventions: ``execute``, ``is_train``,
parameters as Vars and the running statistics as ``stop_grad`` Vars. Differences, all Jittor's:
no ``device`` argument (Jittor places every Var by ``jt.flags.use_cuda``), ``generator`` is a
``numpy.random.Generator`` or ``None`` (Jittor's global random state, ``jt.set_seed``),
``num_batches_tracked`` has shape ``(1,)`` (Jittor has no 0-d Var), and a keyword ``sync=True``
synchronizes the statistics under MPI, as ``jittor.nn.BatchNorm`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jittor as jt
import numpy as np

from ..methods import get_method
from ..methods.checks import check_noise_args, check_running_stats, default_theta
from .functional import (
    augment_batch_norm,
    batch_norm,
    check_input,
    check_mean_shift,
    ie_batch_norm,
)

__all__ = [
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GauBatchNorm",
    "IEBatchNorm1d",
    "IEBatchNorm2d",
    "IEBatchNorm3d",
    "get_norm_layer",
]


def _constant(num_features: int, dtype: Any, value: float) -> jt.Var:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", "float32")
    return jt.init.constant((num_features,), name, value)


class _NormBase(jt.nn.Module):
    """``torch.nn.BatchNorm``'s state, input checks and momentum handling, for Jittor.

    Subclasses set ``_input_ranks`` (the numbers of input dimensions they accept) and
    ``execute``.
    """

    _input_ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: Any = None,
        sync: bool = True,
    ) -> None:
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.sync = sync
        self.is_train = True
        self._dtype = dtype or "float32"
        self.weight = _constant(num_features, self._dtype, 1.0) if affine else None
        self.bias = _constant(num_features, self._dtype, 0.0) if affine else None
        if track_running_stats:
            self.running_mean = _constant(num_features, self._dtype, 0.0).stop_grad()
            self.running_var = _constant(num_features, self._dtype, 1.0).stop_grad()
            self.num_batches_tracked = jt.zeros((1,), "int64").stop_grad()
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.update(jt.zeros_like(self.running_mean))
            self.running_var.update(jt.ones_like(self.running_var))
            self.num_batches_tracked.update(jt.zeros_like(self.num_batches_tracked))

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight.update(jt.ones_like(self.weight))
            self.bias.update(jt.zeros_like(self.bias))

    def _check_input_dim(self, input: jt.Var) -> None:
        if input.ndim not in self._input_ranks:
            shapes = " or ".join(f"{r}D" for r in self._input_ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {shapes} input, got {input.ndim}D input of "
                f"shape {tuple(input.shape)}"
            )

    def _prepare(self, input: jt.Var, mean_shift: Any = None) -> float | jt.Var:
        """Check everything, count the batch and return the momentum of the running averages.

        Nothing is updated unless every check passes. ``momentum=None`` gives the cumulative
        average ``1 / num_batches_tracked`` as a Var (no synchronization).
        """
        name = type(self).__name__
        self._check_input_dim(input)
        check_input(input, self.num_features, self.is_train or not self.track_running_stats, name)
        if self.is_train:
            check_mean_shift(mean_shift, self.num_features, name)
        momentum: float | jt.Var = 0.0 if self.momentum is None else self.momentum
        if self.is_train and self.track_running_stats:
            self.num_batches_tracked.update(self.num_batches_tracked + 1)
            if self.momentum is None:
                dtype = "float64" if self._dtype in ("float64", jt.float64) else "float32"
                momentum = 1.0 / self.num_batches_tracked.cast(dtype)
        return momentum

    def _running_stats(self) -> tuple[jt.Var | None, jt.Var | None]:
        """Running statistics to use and update: none when untracked (as ``nn.BatchNorm``)."""
        if not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"is_train={self.is_train}"
        )


class _BatchNorm(_NormBase):
    """``torch.nn.BatchNorm`` for Jittor (unbiased running variance, ``num_batches_tracked``).

    The ``norm="bn"`` layer of :mod:`augmentbn.jittor.models`, so that their weights convert to
    and from PyTorch exactly; ``jittor.nn.BatchNorm`` averages the biased variance instead.
    """

    def execute(self, input: jt.Var) -> jt.Var:
        momentum = self._prepare(input)
        running_mean, running_var = self._running_stats()
        return batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.is_train,
            momentum,
            self.eps,
            sync=self.sync,
        )


class _AugmentBatchNorm(_NormBase):
    """NABN: batch normalization with a random per-channel shift of the batch mean in training.

    ``y = γ (x - μ') / sqrt(v' + ε) + β`` with ``μ' = μ + δ``; see
    :func:`augmentbn.jittor.functional.augment_batch_norm`. Evaluation is plain BatchNorm with
    the running statistics: no noise, ever.

    Args:
        num_features: ``C`` of an ``(N, C, *S)`` input.
        eps, momentum, affine, track_running_stats: as ``nn.BatchNorm`` (``momentum=None`` is a
            cumulative average).
        theta: bound ``θ`` of the mean shift; ``None``: 0.2, and 0.3 for ``uniform``.
        noise: ``"gaussian_clip"`` (the paper's PyTorch code, the default as there),
            ``"gaussian_reject"`` (the Jittor seed; :class:`GauBatchNorm` draws it) or
            ``"uniform"`` (the paper's ablation).
        noise_std: standard deviation ``s`` of the Gaussian before clipping or rejection.
        running_stats: ``"perturbed"`` (the references', with ``μ'`` and ``v'``) or ``"clean"``
            (exactly ``nn.BatchNorm``'s).
        generator: a ``numpy.random.Generator`` for the shifts, or ``None`` for Jittor's global
            random state (``jt.set_seed``).
        dtype: of the parameters and running statistics (default float32).
        sync: under MPI, reduce the statistics across processes and share one ``δ``.
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
        generator: np.random.Generator | None = None,
        dtype: Any = None,
        sync: bool = True,
    ) -> None:
        name = type(self).__name__
        check_noise_args(theta, noise, noise_std, name)
        check_running_stats(running_stats, name)
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(
                f"{name}: generator must be None or a numpy.random.Generator, got "
                f"{type(generator).__name__}"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, dtype=dtype, sync=sync
        )
        self.theta = default_theta(noise) if theta is None else theta
        self.noise = noise
        self.noise_std = noise_std
        self.running_stats = running_stats
        self._generator = generator

    def execute(self, input: jt.Var, mean_shift: jt.Var | None = None) -> jt.Var:
        """Normalize ``input``; ``mean_shift`` (shape ``(C,)``), if given, is used as ``δ``."""
        momentum = self._prepare(input, mean_shift)
        running_mean, running_var = self._running_stats()
        return augment_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.is_train,
            momentum,
            self.eps,
            theta=self.theta,
            noise=self.noise,
            noise_std=self.noise_std,
            running_stats=self.running_stats,
            mean_shift=mean_shift,
            generator=self._generator,
            sync=self.sync,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, theta={self.theta}, noise={self.noise!r}, "
            f"noise_std={self.noise_std}, running_stats={self.running_stats!r}"
        )


class _IEBatchNorm(_NormBase):
    """IEBN: BatchNorm whose scale is recalibrated per instance (Liang et al., AAAI 2020).

    ``y = BN(x)·γ·sigmoid(w·mean_S(x) + b) + β``; ``w`` (``weight_readjust``) and ``b``
    (``bias_readjust``) are per-channel parameters initialized to 0 and -1, parameters even when
    ``affine=False``. Arguments are those of ``nn.BatchNorm`` (plus ``dtype`` and ``sync``).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: Any = None,
        sync: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, dtype=dtype, sync=sync
        )
        self.weight_readjust = _constant(num_features, self._dtype, 0.0)
        self.bias_readjust = _constant(num_features, self._dtype, -1.0)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.weight_readjust.update(jt.zeros_like(self.weight_readjust))
        self.bias_readjust.update(jt.full_like(self.bias_readjust, -1.0))

    def execute(self, input: jt.Var) -> jt.Var:
        momentum = self._prepare(input)
        running_mean, running_var = self._running_stats()
        return ie_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.weight_readjust,
            self.bias_readjust,
            self.is_train,
            momentum,
            self.eps,
            sync=self.sync,
        )


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` for Jittor, over ``(N, C)`` or ``(N, C, L)``."""

    _input_ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` for Jittor, over ``(N, C, H, W)``."""

    _input_ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d`` for Jittor, over ``(N, C, D, H, W)``."""

    _input_ranks = (5,)


class AugmentBatchNorm1d(_AugmentBatchNorm):
    """NABN over ``(N, C)`` or ``(N, C, L)``; the counterpart of ``BatchNorm1d``."""

    _input_ranks = (2, 3)


class AugmentBatchNorm2d(_AugmentBatchNorm):
    """NABN over ``(N, C, H, W)``; the counterpart of ``BatchNorm2d``."""

    _input_ranks = (4,)


class AugmentBatchNorm3d(_AugmentBatchNorm):
    """NABN over ``(N, C, D, H, W)``; the counterpart of ``BatchNorm3d``."""

    _input_ranks = (5,)


class IEBatchNorm1d(_IEBatchNorm):
    """IEBN over ``(N, C)`` or ``(N, C, L)``."""

    _input_ranks = (2, 3)


class IEBatchNorm2d(_IEBatchNorm):
    """IEBN over ``(N, C, H, W)``."""

    _input_ranks = (4,)


class IEBatchNorm3d(_IEBatchNorm):
    """IEBN over ``(N, C, D, H, W)``."""

    _input_ranks = (5,)


class GauBatchNorm(_AugmentBatchNorm):
    """The Jittor seed's ``GauBatchNorm``, with its signature: NABN with ``gaussian_reject``.

    ``δ = z`` if ``|z| ≤ θ`` else 0 (``z ~ N(0, 1)``), ``v' = max(mean(x²) - μ'², 0)``, running
    statistics updated with ``μ'`` and ``v'``, as in the seed. Any input ``(N, C, *S)`` with
    ``N·|S| > 1`` in training, as ``jittor.nn.BatchNorm``.

    A 1-D input of shape ``(num_features,)``, as in the seed's usage example
    (``GauBatchNorm(3)(jt.array([1, 2, 3]))``), is one unbatched sample of ``C`` features, like an
    unbatched input of a PyTorch layer: in evaluation it is normalized with the running
    statistics and keeps its shape. In training it raises ``ValueError``: one sample holds one
    value per channel, which has no batch statistics. (The seed instead normalizes the ``C``
    values by their common mean and variance, as if they were ``C`` samples of one feature, and
    writes that one statistic into all ``C`` running averages: the features would be mixed.)
    Stack samples into a batch, ``jt.stack([x, y])``, to train.
    """

    _input_ranks = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        theta: float = 0.2,
        momentum: float | None = 0.1,
        affine: bool = True,
        is_train: bool = True,
        sync: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            True,
            theta=theta,
            noise="gaussian_reject",
            running_stats="perturbed",
            sync=sync,
        )
        self.is_train = is_train

    def execute(self, input: jt.Var, mean_shift: jt.Var | None = None) -> jt.Var:
        if input.ndim != 1:
            return super().execute(input, mean_shift)
        c = self.num_features
        if tuple(input.shape) != (c,):
            raise ValueError(
                f"GauBatchNorm: expected an input of shape (N, {c}, *spatial), or one unbatched "
                f"sample of shape ({c},); got 1D input of shape {tuple(input.shape)}"
            )
        if self.is_train:
            raise ValueError(
                f"GauBatchNorm: an input of shape ({c},) is one unbatched sample of {c} features, "
                "one value per channel, which has no batch statistics in training mode; pass a "
                f"batch of shape (N, {c}) with N > 1 (e.g. jt.stack([x, y])), or set "
                "is_train = False to normalize with the running statistics"
            )
        return super().execute(input.reshape((1, c)), mean_shift).reshape((c,))


# --------------------------------------------------------------------------------------------
# By name, as augmentbn.layers.get_norm_layer
# --------------------------------------------------------------------------------------------


def get_norm_layer(name: str, spatial_dims: int = 2, **kwargs: Any) -> Callable[[int], Any]:
    """``f(num_features) -> module`` for the registered method ``name`` (or an alias) of
    ``spatial_dims``; the method registry (:mod:`augmentbn.methods`) checks ``kwargs`` (``theta``,
    ``noise``, ``momentum``, ...) and says where a method without a Jittor layer exists."""
    return get_method(name).layer("jittor", spatial_dims, **kwargs)
