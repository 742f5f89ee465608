"""Synchronized NABN, IEBN and BatchNorm: the same methods, with a ``process_group``.

In training mode under a process group of more than one process, each layer normalizes with the
statistics of the whole group's batch and every rank applies the first rank's ``δ``
(DESIGN.md 1.1's distributed rule; :mod:`augmentbn._sync_autograd`). In eval mode, with one
process, or without an initialized process group, each behaves exactly like its unsynchronized
parent class, as ``nn.SyncBatchNorm`` does. ``process_group=None`` means the default group.

:class:`SyncBatchNorm1d` & co. are ``nn.BatchNorm`` synchronized on any device:
``nn.SyncBatchNorm`` refuses CPU tensors. :func:`augmentbn.convert_sync_norm` swaps a model's
layers for these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._stats import instance_mean, stats_dtype
from .._sync_autograd import sync_batch_norm_train, sync_ie_batch_norm_train
from ..distributed import gather_batch_stats, start_gather_batch_stats, sync_group
from ..functional import check_input, check_mean_shift, sample_mean_shift
from ._base import step_momentum
from .augment import AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d
from .instance_enhance import IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d

__all__ = [
    "SyncAugmentBatchNorm1d",
    "SyncAugmentBatchNorm2d",
    "SyncAugmentBatchNorm3d",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "SyncBatchNorm3d",
    "SyncIEBatchNorm1d",
    "SyncIEBatchNorm2d",
    "SyncIEBatchNorm3d",
]


class _Synchronized:
    """``process_group`` and the decision to synchronize; the local checks of a shard (its
    rank and channels: a shard may hold one value per channel, the group's batch may not)."""

    process_group: object | None = None

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The parent's ``forward`` unless synchronizing; the same arguments either way (NABN's
        ``mean_shift``)."""
        group = self._group()
        if group is None:
            return super().forward(input, *args, **kwargs)
        return self._synchronized(input, group, *args, **kwargs)

    def _group(self):
        """The group to synchronize over, or ``None`` to behave as the parent class."""
        synchronize, group = sync_group(self.process_group, self.training)
        return group if synchronize else None

    def _check_shard(self, input: Tensor) -> None:
        self._check_input_dim(input)
        check_input(input, self.num_features, False, type(self).__name__)

    def _tracked(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var


class _SyncAugmentBatchNorm(_Synchronized):
    """NABN (see :class:`~augmentbn.layers.augment.AugmentBatchNorm2d`) with a
    ``process_group``. Every rank draws ``δ`` from its generator as the unsynchronized layer
    does, and all use the first rank's (a ``mean_shift`` given to ``forward`` likewise), so the
    ranks agree even when their generators do not."""

    @torch.compiler.disable  # collectives run eagerly, outside torch.compile's graphs
    def _synchronized(self, input: Tensor, group, mean_shift: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        self._check_shard(input)
        if mean_shift is None:
            mean_shift = sample_mean_shift(
                self.num_features,
                theta=self.theta,
                noise=self.noise,
                noise_std=self.noise_std,
                generator=self.generator,
                device=input.device,
                dtype=stats_dtype(input),
            )
        else:
            check_mean_shift(mean_shift, self.num_features, name)
        stats = gather_batch_stats(input, group, mean_shift.detach())
        stats.check(name)
        momentum = step_momentum(self)
        running_mean, running_var = self._tracked()
        return sync_batch_norm_train(
            input,
            self.weight,
            self.bias,
            stats,
            running_mean,
            running_var,
            momentum,
            self.eps,
            group,
            noise=self.noise,
            running_stats=self.running_stats,
        )


class SyncAugmentBatchNorm1d(_SyncAugmentBatchNorm, AugmentBatchNorm1d):
    """Synchronized :class:`~augmentbn.AugmentBatchNorm1d`; ``process_group`` as
    ``nn.SyncBatchNorm``'s."""


class SyncAugmentBatchNorm2d(_SyncAugmentBatchNorm, AugmentBatchNorm2d):
    """Synchronized :class:`~augmentbn.AugmentBatchNorm2d`; ``process_group`` as
    ``nn.SyncBatchNorm``'s."""


class SyncAugmentBatchNorm3d(_SyncAugmentBatchNorm, AugmentBatchNorm3d):
    """Synchronized :class:`~augmentbn.AugmentBatchNorm3d`; ``process_group`` as
    ``nn.SyncBatchNorm``'s."""


class _SyncIEBatchNorm(_Synchronized):
    """IEBN with a ``process_group``: its BatchNorm part uses the group's statistics, its gate
    stays per instance."""

    @torch.compiler.disable
    def _synchronized(self, input: Tensor, group) -> Tensor:
        self._check_shard(input)
        pending = start_gather_batch_stats(input, group)
        means = instance_mean(input)  # while the statistics travel
        stats = pending()
        stats.check(type(self).__name__)
        momentum = step_momentum(self)
        running_mean, running_var = self._tracked()
        return sync_ie_batch_norm_train(
            input,
            means,
            self.weight,
            self.bias,
            self.weight_readjust,
            self.bias_readjust,
            stats,
            running_mean,
            running_var,
            momentum,
            self.eps,
            group,
        )


class SyncIEBatchNorm1d(_SyncIEBatchNorm, IEBatchNorm1d):
    """Synchronized :class:`~augmentbn.IEBatchNorm1d`."""


class SyncIEBatchNorm2d(_SyncIEBatchNorm, IEBatchNorm2d):
    """Synchronized :class:`~augmentbn.IEBatchNorm2d`."""


class SyncIEBatchNorm3d(_SyncIEBatchNorm, IEBatchNorm3d):
    """Synchronized :class:`~augmentbn.IEBatchNorm3d`."""


class _SyncBatchNorm(_Synchronized):
    """``nn.BatchNorm`` synchronized over ``process_group`` on any device, with
    ``nn.BatchNorm``'s update of the running statistics (``momentum=None``: cumulative)."""

    @torch.compiler.disable
    def _synchronized(self, input: Tensor, group) -> Tensor:
        self._check_shard(input)
        stats = gather_batch_stats(input, group)
        stats.check(type(self).__name__)
        momentum = step_momentum(self)
        running_mean, running_var = self._tracked()
        return sync_batch_norm_train(
            input,
            self.weight,
            self.bias,
            stats,
            running_mean,
            running_var,
            momentum,
            self.eps,
            group,
        )


class SyncBatchNorm1d(_SyncBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` synchronized over ``process_group``, on the CPU too."""


class SyncBatchNorm2d(_SyncBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` synchronized over ``process_group``, on the CPU too."""


class SyncBatchNorm3d(_SyncBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` synchronized over ``process_group``, on the CPU too."""
