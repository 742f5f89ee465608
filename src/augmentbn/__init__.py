"""augmentbn: normalization layers that regulate batch noise, for small-batch image training.

- AugmentBN / NABN (noise-assisted batch normalization): :class:`AugmentBatchNorm2d` & co.
- IEBN (instance enhancement batch normalization): :class:`IEBatchNorm2d` & co.
- :func:`convert_norm` swaps the BatchNorm layers of any model, with the papers' placement.
- :func:`convert_sync_norm` synchronizes them across processes (:func:`revert_sync_norm` undoes it).
"""

from . import functional
from .convert import convert_norm, register_block, register_stem
from .convert_sync import convert_sync_norm, revert_sync_norm
from .layers import (
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    BAN2d,
    GauBatchNorm2d,
    IEBatchNorm1d,
    IEBatchNorm2d,
    IEBatchNorm3d,
    SyncAugmentBatchNorm1d,
    SyncAugmentBatchNorm2d,
    SyncAugmentBatchNorm3d,
    SyncIEBatchNorm1d,
    SyncIEBatchNorm2d,
    SyncIEBatchNorm3d,
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
    "SyncAugmentBatchNorm1d",
    "SyncAugmentBatchNorm2d",
    "SyncAugmentBatchNorm3d",
    "SyncIEBatchNorm1d",
    "SyncIEBatchNorm2d",
    "SyncIEBatchNorm3d",
    "__version__",
    "convert_norm",
    "convert_sync_norm",
    "create_norm_layer",
    "functional",
    "get_norm_layer",
    "register_block",
    "register_stem",
    "revert_sync_norm",
]
