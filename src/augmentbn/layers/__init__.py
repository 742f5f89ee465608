"""Normalization layers that regulate batch noise: AugmentBN (NABN) and IEBN."""

from ._base import BatchNormBase
from .augment import (
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    GauBatchNorm2d,
    clamp_counts,
    warn_if_clamped,
)
from .factory import (
    NORM_LAYERS,
    create_norm_layer,
    default_num_groups,
    get_norm_layer,
    list_norm_layers,
)
from .instance_enhance import BAN2d, IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d
from .sync import (
    SyncAugmentBatchNorm1d,
    SyncAugmentBatchNorm2d,
    SyncAugmentBatchNorm3d,
    SyncBatchNorm1d,
    SyncBatchNorm2d,
    SyncBatchNorm3d,
    SyncIEBatchNorm1d,
    SyncIEBatchNorm2d,
    SyncIEBatchNorm3d,
)

__all__ = [
    "NORM_LAYERS",
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "BAN2d",
    "BatchNormBase",
    "GauBatchNorm2d",
    "IEBatchNorm1d",
    "IEBatchNorm2d",
    "IEBatchNorm3d",
    "SyncAugmentBatchNorm1d",
    "SyncAugmentBatchNorm2d",
    "SyncAugmentBatchNorm3d",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "SyncBatchNorm3d",
    "SyncIEBatchNorm1d",
    "SyncIEBatchNorm2d",
    "SyncIEBatchNorm3d",
    "clamp_counts",
    "create_norm_layer",
    "default_num_groups",
    "get_norm_layer",
    "list_norm_layers",
    "warn_if_clamped",
]
