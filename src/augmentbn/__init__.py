"""augmentbn: normalization layers that regulate batch noise, for small-batch image training.

- AugmentBN / NABN (noise-assisted batch normalization): :class:`AugmentBatchNorm2d` & co.
- IEBN (instance enhancement batch normalization): :class:`IEBatchNorm2d` & co.
- :func:`convert_norm` swaps the BatchNorm layers of any model, with the papers' placement.
- :mod:`augmentbn.methods` is the registry every name, factory and placement derives from.
"""

from . import functional, methods
from .convert import convert_norm, register_block, register_stem
from .layers import (
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    BAN2d,
    GauBatchNorm2d,
    IEBatchNorm1d,
    IEBatchNorm2d,
    IEBatchNorm3d,
    create_norm_layer,
    get_norm_layer,
)

__version__ = "0.1.0"

__all__ = [
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "BAN2d",
    "GauBatchNorm2d",
    "IEBatchNorm1d",
    "IEBatchNorm2d",
    "IEBatchNorm3d",
    "__version__",
    "convert_norm",
    "create_norm_layer",
    "functional",
    "get_norm_layer",
    "methods",
    "register_block",
    "register_stem",
]
