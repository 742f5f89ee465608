"""AugmentBN (NABN) and IEBN for Jittor: the PyTorch layers' twins, and the seed's ``GauBatchNorm``.

Jittor compiles its core on first import and, on a machine without CUDA, needs ``use_mkl=0``
and an empty ``nvcc_path`` in its environment. Before importing Jittor this package sets
``use_mkl=0`` when the variable is unset, and ``nvcc_path=""`` when it is unset *and* no NVIDIA
GPU is visible; whatever the user has set is kept. Both must be in place before Jittor's first
import in the process to take effect.

Usage (the seed's example)::

    import jittor as jt
    from augmentbn.jittor import GauBatchNorm

    bn = GauBatchNorm(3)
    bn.is_train = False
    bn(jt.array([1, 2, 3]))
"""

from __future__ import annotations

import os
from pathlib import Path


def _set_jittor_defaults() -> None:
    """CPU-safe defaults for Jittor's build, only where the user has set nothing."""
    os.environ.setdefault("use_mkl", "0")
    if not Path("/dev/nvidia0").exists():
        os.environ.setdefault("nvcc_path", "")


_set_jittor_defaults()

try:
    import jittor  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "augmentbn.jittor needs Jittor; install it with: pip install 'augmentbn[jittor]'"
    ) from error

from . import functional  # noqa: E402
from .convert import from_torch_state_dict, to_torch_state_dict  # noqa: E402
from .layers import (  # noqa: E402
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GauBatchNorm,
    IEBatchNorm1d,
    IEBatchNorm2d,
    IEBatchNorm3d,
    get_norm_layer,
)
from .models import create_model, list_models  # noqa: E402

__all__ = [
    "AugmentBatchNorm1d",
    "AugmentBatchNorm2d",
    "AugmentBatchNorm3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GauBatchNorm",
    "IEBatchNorm1d",
    "IEBatchNorm2d",
    "IEBatchNorm3d",
    "create_model",
    "from_torch_state_dict",
    "functional",
    "get_norm_layer",
    "list_models",
    "to_torch_state_dict",
]
