"""Datasets and loaders for small-batch image training.

``build_dataset(name, root, split, ...)`` builds one split of a dataset by name
(``list_datasets()``): ``digits`` (offline default), ``cifar10``/``cifar100``, the MedMNIST 2D
flags, and ``imagefolder`` (Kermany OCT / chest X-ray layout). Each dataset yields normalized
``C×H×W`` float images and describes itself in ``ds.info`` (:class:`DatasetInfo`).
Segmentation data sets (``msd_liver`` and the other Decathlon tasks, the synthetic
``seg_demo``) are volumes (:mod:`.volumes`, ``augmentbn[seg]``), trained on slices by
:class:`~.slice_loader.SliceLoader`.

``build_loader(ds, batch_size, train=...)`` gives batches on the device: from the batch-tensor
fast path (whole dataset as one tensor, augmented by the batch) where it applies, else from a
torch ``DataLoader`` with torchvision's per-sample transforms; all randomness comes from one
``torch.Generator``.
"""

from . import (  # noqa: F401  (they register themselves)
    cifar,
    decathlon,
    digits,
    imagefolder,
    medmnist2d,
    synthetic_seg,
)
from .base import ImageDataset, TensorImageDataset
from .batch import CropFlipParams, crop_flip, flip_variants, sample_crop_flip
from .errors import CorruptFileError, DatasetLayoutError, DatasetNotFoundError, DownloadError
from .info import SPLITS, DatasetInfo
from .loader import build_loader
from .registry import build_dataset, default_root, list_datasets, register_dataset
from .splits import stratified_split
from .tensor_loader import TensorBatchLoader
from .transforms import CropFlip

__all__ = [
    "SPLITS",
    "CorruptFileError",
    "CropFlip",
    "CropFlipParams",
    "DatasetInfo",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DownloadError",
    "ImageDataset",
    "TensorBatchLoader",
    "TensorImageDataset",
    "build_dataset",
    "build_loader",
    "crop_flip",
    "default_root",
    "flip_variants",
    "list_datasets",
    "register_dataset",
    "sample_crop_flip",
    "stratified_split",
]
