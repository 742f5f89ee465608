"""augmentbn's norm layers in MONAI's ``Norm`` factory, by name.

After :func:`register`, ``Norm["nabn", 3]`` is ``AugmentBatchNorm3d``, and every MONAI network
that takes ``norm=`` takes augmentbn's names, with arguments:
``UNet(..., norm=("nabn", {"theta": 0.3}))``, ``BasicUNet(..., norm="iebn")``. MONAI's own names
(``batch``, ``instance``, ``group``, ...) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..layers import list_norm_layers
from ..methods import method_names
from . import norm_layer

try:
    from monai.networks.layers.factories import Norm
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'augmentbn.integrations.monai needs MONAI: pip install "augmentbn[monai]"'
    ) from error

__all__ = ["register"]

_FACTORIES: dict[str, Callable[[int], Callable[..., nn.Module]]] = {}


def _factory(name: str) -> Callable[[int], Callable[..., nn.Module]]:
    """MONAI's factory function for ``name``: ``spatial_dims -> layer class``."""
    if name not in _FACTORIES:

        def factory(dim: int) -> Callable[..., nn.Module]:
            return norm_layer(name, dim)

        factory.__doc__ = f"augmentbn's {name!r} layer in 1, 2 or 3 spatial dimensions."
        _FACTORIES[name] = factory
    return _FACTORIES[name]


def register() -> list[str]:
    """Add augmentbn's norm names to MONAI's ``Norm`` factory; return those names.

    Idempotent. Each name and alias of the method registry (:func:`augmentbn.methods.method_names`)
    that MONAI does not define itself (``batch``, ``instance``, ``group`` stay MONAI's) is added
    with ``Norm.add_factory_callable`` (MONAI's public way to extend a factory).
    """
    registered = []
    torch_methods = set(list_norm_layers())
    for name, canonical in method_names().items():
        if canonical not in torch_methods:
            continue
        factory = _factory(canonical)
        current = Norm.components.get(name.upper())
        if current is not None and current.value is not factory:
            continue  # MONAI's own name
        if current is None:
            Norm.add_factory_callable(name, factory)
        registered.append(name)
    return registered
