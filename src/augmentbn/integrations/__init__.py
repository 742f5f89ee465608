"""augmentbn's norm layers by name in other libraries' factories.

- :func:`augmentbn.integrations.timm.register`: ``timm.create_model(..., norm_layer="nabn")``
  and timm's norm and norm-act factories (``pip install "augmentbn[timm]"``).
- :func:`augmentbn.integrations.monai.register`: ``Norm["nabn", 3]``, ``UNet(norm="iebn")``
  and every MONAI network that takes ``norm=`` (``pip install "augmentbn[monai]"``).

Registration is explicit: importing augmentbn neither imports these libraries (seconds each) nor
writes into their tables, and neither library offers an entry point through which a plugin could
register itself. Call ``register()`` once, before building models by name; it is idempotent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from ..methods import get_method

__all__: list[str] = []


@functools.cache
def norm_layer(name: str, spatial_dims: int) -> Callable[..., nn.Module]:
    """augmentbn's layer for ``name`` in ``spatial_dims`` dimensions, as another library's table
    holds it: the class itself, or the callable that builds it (GroupNorm with ``gcd(C, 32)``
    groups, affine InstanceNorm). Cached, so that a second ``register()`` finds its own entries."""
    spec = get_method(name)
    cls = spec.layer_class("torch", spatial_dims)
    return functools.partial(cls, **spec.layer_defaults) if spec.layer_defaults else cls
