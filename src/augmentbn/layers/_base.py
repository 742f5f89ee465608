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


def step_momentum(layer: _NormBase, fx_input: Tensor | None = None) -> float | Tensor:
    """Count one training batch in ``layer.num_batches_tracked`` (as ``nn.BatchNorm`` does) and
    return the momentum of the running averages: ``layer.momentum``, or for ``momentum=None``
    the cumulative average ``1 / num_batches_tracked`` as a tensor (in the running statistics'
    precision, at least float32: no host synchronization, no data-dependent Python float for
    ``torch.compile``).

    Under ``torch.fx`` (``fx_input``: the traced input), the count adds a tensor made from the
    input with ``aten.add_``, which fx records (a buffer's own method would run once, while it
    traces) and keeps (fx's dead-code elimination drops unused in-place methods)."""
    momentum: float | Tensor = 0.0 if layer.momentum is None else layer.momentum
    if layer.training and layer.track_running_stats and layer.num_batches_tracked is not None:
        if fx_input is None:
            count = layer.num_batches_tracked.add_(1)
        else:
            one = fx_input.new_ones((), dtype=layer.num_batches_tracked.dtype)
            count = torch.ops.aten.add_.Tensor(layer.num_batches_tracked, one)
        if layer.momentum is None:
            dtype = torch.promote_types(layer.running_mean.dtype, torch.float32)
            momentum = 1.0 / count.to(dtype)
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

    def _check_forward_args(self, input: Tensor) -> None:
        """Raise ``ValueError`` for a bad ``forward`` argument; subclasses add theirs."""
        self._check_input_dim(input)
        use_batch_stats = self.training or not self.track_running_stats
        check_input(input, self.num_features, use_batch_stats, type(self).__name__)

    def _prepare(self, input: Tensor, **forward_args: object) -> float | Tensor:
        """Check every ``forward`` argument, count the batch and return the momentum of the
        running averages (:func:`step_momentum`). Nothing is updated unless every check passes."""
        self._check_forward_args(input, **forward_args)
        return step_momentum(self)

    def _momentum(self, fx_input: Tensor | None = None) -> float | Tensor:
        return step_momentum(self, fx_input)

    def _running_stats(self) -> tuple[Tensor | None, Tensor | None]:
        """The running statistics to use and update: none when they are not tracked, or when the
        layer is in training mode without tracking (as ``nn.BatchNorm``)."""
        if self.training and not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var

    def _prepare_recorded(
        self, input: Tensor, recorder: str, **forward_args: object
    ) -> float | Tensor:
        """:meth:`_prepare` for a call that ``recorder`` records (see
        :func:`._portable.recorder`). ``torch.fx`` proxies have no concrete rank or shape, so
        under it the input is not checked; the operators that follow check what they can."""
        if recorder == "torch.fx":
            return self._momentum(fx_input=input)
        return self._prepare(input, **forward_args)

    def _script_eval_only(self) -> None:
        """TorchScript compiles the evaluation formulas only (training draws noise and runs
        autograd Functions, which it cannot compile)."""
        if self.training:
            raise RuntimeError(
                "augmentbn layers run under TorchScript in evaluation mode only: call .eval() "
                "on the scripted module. To record training, use torch.jit.trace, torch.fx or "
                "torch.export."
            )
