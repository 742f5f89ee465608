"""The base of every augmentbn normalization layer: ``nn.BatchNorm``'s state and checks.

The layers derive from ``torch.nn.modules.batchnorm._NormBase``, the class that holds
``nn.BatchNorm``'s parameters and buffers, so state dicts keep its names and shapes
(DESIGN.md 1.3). They deliberately do *not* derive from ``_BatchNorm``:
``nn.SyncBatchNorm.convert_sync_batchnorm`` replaces every ``_BatchNorm`` by a plain
``SyncBatchNorm``, which would silently drop the noise or the instance gate. It leaves these
layers alone instead.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase

from ..functional import check_input


def step_momentum(layer: _NormBase) -> float | Tensor:
    """Count one training batch in ``layer.num_batches_tracked`` (as ``nn.BatchNorm`` does) and
    return the momentum of the running averages: ``layer.momentum``, or for ``momentum=None``
    the cumulative average ``1 / num_batches_tracked`` as a tensor (no host synchronization)."""
    momentum: float | Tensor = 0.0 if layer.momentum is None else layer.momentum
    if layer.training and layer.track_running_stats and layer.num_batches_tracked is not None:
        layer.num_batches_tracked.add_(1)
        if layer.momentum is None:
            momentum = 1.0 / layer.num_batches_tracked.to(torch.float32)
    return momentum


class BatchNormBase(_NormBase):
    """``nn.BatchNorm``'s state, input checks and momentum handling; subclasses add the formula.

    Subclasses set ``_input_ranks``, the numbers of input dimensions they accept.
    """

    _input_ranks: tuple[int, ...] = ()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._input_ranks:
            shapes = " or ".join(f"{r}D" for r in self._input_ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {shapes} input, got {input.dim()}D input of "
                f"shape {tuple(input.shape)}"
            )

    def _prepare(self, input: Tensor) -> float | Tensor:
        """Check ``input``, count the batch and return the momentum of the running averages.

        Nothing is updated unless every check passes. ``momentum=None`` gives the cumulative
        average ``1 / num_batches_tracked`` as a tensor, so no host synchronization is needed and
        ``torch.compile`` sees no data-dependent Python float.
        """
        self._check_input_dim(input)
        use_batch_stats = self.training or not self.track_running_stats
        check_input(input, self.num_features, use_batch_stats, type(self).__name__)
        return step_momentum(self)

    def _running_stats(self) -> tuple[Tensor | None, Tensor | None]:
        """The running statistics to use and update: none when they are not tracked, or when the
        layer is in training mode without tracking (as ``nn.BatchNorm``)."""
        if self.training and not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var
