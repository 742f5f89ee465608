"""augmentbn's norm layers in timm's norm and norm-act factories, by name.

After :func:`register`, ``timm.create_model("resnet18", norm_layer="nabn")``,
``timm.create_model("efficientnet_b0", norm_layer="iebn")`` and
``timm.layers.create_norm_layer("nabn", 64)`` work, and so does a layer class or partial such as
``augmentbn.get_norm_layer("nabn", theta=0.3)`` where timm wants a norm-act layer.

timm (1.0) has no public hook for new norm names, so :func:`register` writes into its *private*
tables: ``_NORM_MAP`` and ``_NORM_TYPES`` in ``timm.layers.create_norm``, and ``_NORM_ACT_MAP``,
``_NORM_ACT_TYPES``, ``_NORM_TO_NORM_ACT_MAP`` and ``_NORM_ACT_REQUIRES_ARG`` in
``timm.layers.create_norm_act`` (read in timm 1.0.31). Names timm defines itself (``batchnorm``,
``groupnorm``, ...) are left alone. A timm without these tables raises an ``ImportError``.

The norm-act layers (:class:`AugmentBatchNormAct2d`, :class:`IEBatchNormAct2d`) are augmentbn's
layers with timm's ``drop`` and ``act`` children, and the arguments and state-dict names of timm's
``BatchNormAct2d``, so EfficientNet, RegNet and CSPNet weights load into them and back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import AugmentBatchNorm2d, IEBatchNorm2d, default_num_groups, list_norm_layers
from ..methods import method_names
from . import norm_layer

try:
    import timm
    from timm.layers import BatchNormAct2d, create_act_layer
    from timm.layers import GroupNormAct as _TimmGroupNormAct
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'augmentbn.integrations.timm needs timm: pip install "augmentbn[timm]"'
    ) from error

__all__ = [
    "AugmentBatchNormAct2d",
    "GroupNormAct",
    "IEBatchNormAct2d",
    "InstanceNormAct2d",
    "norm_act_targets",
    "register",
]


def _add_act(
    layer: nn.Module,
    apply_act: bool,
    act_layer: Any,
    act_kwargs: dict[str, Any] | None,
    inplace: bool,
    drop_layer: Callable[[], nn.Module] | None,
) -> None:
    """timm's ``drop`` and ``act`` children (``nn.Identity`` when there are none)."""
    layer.drop = drop_layer() if drop_layer is not None else nn.Identity()
    act = None
    if apply_act:
        kwargs = dict(act_kwargs or {})
        kwargs.setdefault("inplace", inplace)
        act = create_act_layer(act_layer, **kwargs)
    layer.act = nn.Identity() if act is None else act


class AugmentBatchNormAct2d(AugmentBatchNorm2d):
    """NABN, then timm's ``drop`` and ``act``: timm's ``BatchNormAct2d`` with AugmentBN's
    normalization. NABN's own arguments (``theta``, ``noise``, ...) are keywords."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: Callable[[], nn.Module] | None = None,
        device=None,
        dtype=None,
        **nabn_kwargs: Any,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            **nabn_kwargs,
        )
        _add_act(self, apply_act, act_layer, act_kwargs, inplace, drop_layer)

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(self._normalize(input)))


class IEBatchNormAct2d(IEBatchNorm2d):
    """IEBN, then timm's ``drop`` and ``act``: timm's ``BatchNormAct2d`` with IEBN's
    normalization (and its ``weight_readjust``, ``bias_readjust``)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: Callable[[], nn.Module] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        _add_act(self, apply_act, act_layer, act_kwargs, inplace, drop_layer)

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(self._normalize(input)))


class GroupNormAct(_TimmGroupNormAct):
    """timm's ``GroupNormAct`` with augmentbn's default number of groups, ``gcd(C, 32)``
    (timm's default of 32 fails on, e.g., EfficientNet's 40 channels)."""

    def __init__(self, num_channels: int, num_groups: int | None = None, **kwargs: Any) -> None:
        groups = num_groups or default_num_groups(num_channels)
        super().__init__(num_channels, groups, **kwargs)


class InstanceNormAct2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (affine by default, as augmentbn's ``"in"``), then timm's ``drop``
    and ``act``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: Callable[[], nn.Module] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        _add_act(self, apply_act, act_layer, act_kwargs, inplace, drop_layer)

    def forward(self, input: Tensor) -> Tensor:
        use_input_stats = self.training or not self.track_running_stats
        output = F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            0.1 if self.momentum is None else self.momentum,
            self.eps,
        )
        return self.act(self.drop(output))


_NORM_ACT: dict[str, type[nn.Module]] = {
    "bn": BatchNormAct2d,
    "nabn": AugmentBatchNormAct2d,
    "iebn": IEBatchNormAct2d,
    "gn": GroupNormAct,
    "in": InstanceNormAct2d,
}
"""The norm-act layer of each augmentbn norm name."""


def norm_act_targets() -> dict[str, type[nn.Module]]:
    """What ``convert_norm(model, to)`` turns timm's ``BatchNormAct2d`` family into, by ``to``."""
    return {name: _NORM_ACT[name] for name in ("bn", "nabn", "iebn")}


def _tables() -> tuple[Any, Any]:
    norm = importlib.import_module("timm.layers.create_norm")
    norm_act = importlib.import_module("timm.layers.create_norm_act")
    needed = {
        norm: ("_NORM_MAP", "_NORM_TYPES"),
        norm_act: (
            "_NORM_ACT_MAP",
            "_NORM_ACT_TYPES",
            "_NORM_TO_NORM_ACT_MAP",
            "_NORM_ACT_REQUIRES_ARG",
        ),
    }
    for module, names in needed.items():
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise ImportError(
                f"augmentbn.integrations.timm: timm {timm.__version__} has no {missing} in "
                f"{module.__name__}; it was written against timm 1.0 (tested with 1.0.31)"
            )
    return norm, norm_act


def _claim(table: dict, name: str, value: Any) -> bool:
    """Put ``value`` under ``name`` unless timm has its own entry there."""
    current = table.setdefault(name, value)
    return current is value


def _names() -> list[tuple[str, str]]:
    """``(name, canonical name)`` for every name and alias of a method with a PyTorch layer."""
    torch_methods = set(list_norm_layers())
    return [(a, n) for a, n in method_names().items() if n in torch_methods]


def register() -> list[str]:
    """Make augmentbn's norm names available in timm's factories; return those names.

    Writes into timm's private tables (see the module docstring); idempotent. Each name and alias
    of the method registry (:func:`augmentbn.methods.method_names`) that timm does not define
    itself (``batchnorm``, ``groupnorm``, ``instancenorm`` stay timm's) maps to augmentbn's
    2-D layer in ``create_norm_layer``/``get_norm_layer`` and to its norm-act layer in
    ``create_norm_act_layer``/``get_norm_act_layer``; NABN's and IEBN's classes map to their
    norm-act layers, as timm maps ``nn.BatchNorm2d`` to ``BatchNormAct2d``.
    """
    norm, norm_act = _tables()
    registered = []
    for name, canonical in _names():
        layer = norm_layer(canonical, 2)
        if not _claim(norm._NORM_MAP, name, layer):
            continue
        registered.append(name)
        if isinstance(layer, type):
            norm._NORM_TYPES.add(layer)
        if canonical in _NORM_ACT:
            _claim(norm_act._NORM_ACT_MAP, name, _NORM_ACT[canonical])
    for layer_type, name in ((AugmentBatchNorm2d, "nabn"), (IEBatchNorm2d, "iebn")):
        _claim(norm_act._NORM_TO_NORM_ACT_MAP, layer_type.__name__.lower(), _NORM_ACT[name])
    ours = set(_NORM_ACT.values()) - {BatchNormAct2d}
    norm_act._NORM_ACT_TYPES.update(ours)
    norm_act._NORM_ACT_REQUIRES_ARG.update(ours)
    return registered
