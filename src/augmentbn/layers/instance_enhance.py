"""IEBN modules (DESIGN.md 1.2): thin wrappers over ``functional.ie_batch_norm``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import ie_batch_norm
from . import _portable
from ._base import BatchNormBase

__all__ = ["BAN2d", "IEBatchNorm1d", "IEBatchNorm2d", "IEBatchNorm3d"]


class _IEBatchNorm(BatchNormBase):
    """BatchNorm whose scale is recalibrated per instance (Liang et al., AAAI 2020).

    ``y = BN(x)·γ·sigmoid(w·mean_S(x) + b) + β``; ``w`` (``weight_readjust``) and ``b``
    (``bias_readjust``) are per-channel parameters initialized to 0 and -1, so the gate starts at
    ``sigmoid(-1) ≈ 0.269``. They are parameters even when ``affine=False``, since they are the
    method. Arguments are those of ``nn.BatchNorm``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        factory = {"device": device, "dtype": dtype}
        self.weight_readjust = nn.Parameter(torch.empty(num_features, **factory))
        self.bias_readjust = nn.Parameter(torch.empty(num_features, **factory))
        self._reset_readjust()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_readjust()

    def _reset_readjust(self) -> None:
        # The base initializer calls reset_parameters() before the gate parameters exist.
        if "weight_readjust" in self._parameters:
            nn.init.zeros_(self.weight_readjust)
            nn.init.constant_(self.bias_readjust, -1.0)

    def forward(self, input: Tensor) -> Tensor:
        return self._normalize(input)

    def _normalize(self, input: Tensor) -> Tensor:
        """Eager calls run :func:`augmentbn.functional.ie_batch_norm`; tracers, exporters and
        TorchScript get plain operators (:mod:`._portable`)."""
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            self._script_eval_only()
            return _portable.ie_batch_norm_eval(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.weight_readjust,
                self.bias_readjust,
                self.eps,
                self.num_features,
            )
        recorder = _portable.recorder(input)
        momentum = (
            self._prepare(input) if recorder is None else self._prepare_recorded(input, recorder)
        )
        running_mean, running_var = self._running_stats()
        args = (
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self.weight_readjust,
            self.bias_readjust,
            self.training,
            momentum,
            self.eps,
        )
        if recorder is None:
            return ie_batch_norm(*args)
        return _portable.ie_batch_norm(*args, self.num_features)


class IEBatchNorm1d(_IEBatchNorm):
    """IEBN over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input."""

    _input_ranks = (2, 3)


class IEBatchNorm2d(_IEBatchNorm):
    """IEBN over a 4D ``(N, C, H, W)`` input."""

    _input_ranks = (4,)


class IEBatchNorm3d(_IEBatchNorm):
    """IEBN over a 5D ``(N, C, D, H, W)`` input."""

    _input_ranks = (5,)


BAN2d = IEBatchNorm2d
"""The name of the IEBN reference code."""
