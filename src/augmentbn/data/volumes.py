"""Segmentation data sets of volumes, preprocessed and sampled with MONAI (``augmentbn[seg]``).

A :class:`VolumeDataset` holds the cases of one split as MONAI data dicts (``{"image", "label",
"name"}``: file paths, or arrays for in-memory data) and two MONAI chains:

- the *preprocessing* (deterministic; run once per case by :meth:`~VolumeDataset.prepare` and
  cached with MONAI's ``CacheDataset``): load and check the image/label pair, channel first, RAS
  orientation, resampling to ``spacing`` (bilinear image, nearest label), intensity (a CT window
  scaled to ``[0, 1]`` and clipped, or a per-volume z-score per channel), labels above 0 merged
  into foreground 1 (:func:`file_preprocessing`, :func:`array_preprocessing`);
- the *sampler* (random; per training epoch, :func:`slice_sampler`): pad in-plane to the window,
  ``num_samples`` axial ``roi × roi`` slices centred on foreground and background 1:1
  (``RandCropByPosNegLabeld``), then a random in-plane affine (``RandAffined``: rotation up to
  ``π/15``, scale ±10%).

:meth:`~VolumeDataset.volume` gives a whole preprocessed case for evaluation (image
``C×H×W×D`` float32, label ``1×H×W×D`` uint8, the last axis the axial one);
:meth:`~VolumeDataset.sample` the training slices of one case, reproducibly from a seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._optional import import_optional
from .errors import CorruptFileError, DatasetLayoutError
from .info import DatasetInfo

_monai = import_optional("monai", package="monai", extra="seg", purpose="Segmentation")
from monai.data import CacheDataset  # noqa: E402
from monai.transforms import (  # noqa: E402
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

__all__ = [
    "AFFINE_TOLERANCE",
    "CT_WINDOW",
    "CheckedLoad",
    "VolumeDataset",
    "array_preprocessing",
    "file_preprocessing",
    "slice_sampler",
]

KEYS = ("image", "label")
CT_WINDOW = (-310.0, 390.0)
"""The NABN paper's HU window, scaled to ``[0, 1]`` and clipped."""
AFFINE_TOLERANCE = 1e-3
"""Largest difference (mm) allowed between the entries of an image's and its label's affine."""


class CheckedLoad(Transform):
    """Load an image/label pair with ``LoadImaged`` (channel first) and check that they belong
    together: same voxel grid (shape and affine, to :data:`AFFINE_TOLERANCE`), one label
    channel, integer label values among ``classes``. Errors name both files and ``layout``."""

    def __init__(self, classes: Sequence[int], layout: str) -> None:
        self.classes = sorted(int(c) for c in classes)
        self.layout = layout
        self.loaders = {key: LoadImaged(keys=key, ensure_channel_first=True) for key in KEYS}

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        data = dict(item)
        for key in KEYS:
            try:
                data = self.loaders[key](data)
            except Exception as error:  # nibabel's, gzip's and zlib's errors alike
                raise CorruptFileError(
                    item[key],
                    f"cannot read this {key} volume ({type(error).__name__}: {error}). A NIfTI "
                    f"file (.nii or .nii.gz) is expected; replace the file.\n{self.layout}",
                ) from error
        image, label = data["image"], data["label"]
        pair = f"image {item['image']} and label {item['label']}"
        if tuple(image.shape[1:]) != tuple(label.shape[1:]) or label.shape[0] != 1:
            raise DatasetLayoutError(
                f"{pair} do not match: image of shape {tuple(image.shape)} (channels first), "
                f"label of shape {tuple(label.shape)}; a label must have one channel and the "
                "image's voxel grid"
            )
        difference = float(np.abs(np.asarray(image.affine) - np.asarray(label.affine)).max())
        if difference > AFFINE_TOLERANCE:
            raise DatasetLayoutError(
                f"{pair} have different affines (largest difference {difference:.4g} mm; "
                f"image\n{np.asarray(image.affine).round(4)}\nlabel\n"
                f"{np.asarray(label.affine).round(4)}); the label must lie on the image's grid"
            )
        values = torch.unique(label.as_tensor())
        bad = [
            int(v) if v == int(v) else v
            for v in values.tolist()
            if v != int(v) or int(v) not in self.classes
        ]
        if bad:
            raise DatasetLayoutError(
                f"label {item['label']} holds values {bad[:10]} outside the task's classes "
                f"{self.classes} (dataset.json 'labels'); is it the label of {item['image']}?"
            )
        return data


def _intensity(window: tuple[float, float] | None) -> Transform:
    if window is None:  # MR: z-score per volume and channel
        return NormalizeIntensityd(keys="image", channel_wise=True)
    low, high = window
    return ScaleIntensityRanged(
        keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
    )


def _finish() -> list[Transform]:
    """Liver and tumour (every label above 0) become foreground 1; plain tensors, no metadata."""
    return [
        AsDiscreted(keys="label", threshold=0.5),
        EnsureTyped(keys=KEYS, dtype=(torch.float32, torch.uint8), track_meta=False),
    ]


def file_preprocessing(
    *,
    classes: Sequence[int],
    spacing: Sequence[float],
    window: tuple[float, float] | None,
    layout: str,
) -> Compose:
    """The chain for NIfTI files: :class:`CheckedLoad`, RAS, ``Spacingd`` to ``spacing``
    (bilinear image, nearest label), the CT ``window`` to ``[0, 1]`` (or a z-score where
    ``window`` is None), foreground merge."""
    return Compose(
        [
            CheckedLoad(classes, layout),
            Orientationd(keys=KEYS, axcodes="RAS", labels=None),
            Spacingd(
                keys=KEYS,
                pixdim=tuple(spacing),
                mode=("bilinear", "nearest"),
                dtype=(np.float32, np.float32),
            ),
            _intensity(window),
            *_finish(),
        ]
    )


def array_preprocessing(window: tuple[float, float] | None = None) -> Compose:
    """The chain for in-memory ``H×W×D`` arrays: channel first, intensity, foreground merge."""
    return Compose(
        [EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"), _intensity(window), *_finish()]
    )


def slice_sampler(
    roi: int,
    num_samples: int = 4,
    *,
    rotate: float = math.pi / 15,
    scale: float = 0.1,
) -> Compose:
    """``num_samples`` axial slices of ``roi × roi`` per volume, half centred on foreground and
    half on background (on voxels where the image is above 0), each with a random in-plane
    affine (every slice; rotation in ``[-rotate, rotate]``, scale in ``[1 - scale, 1 + scale]``
    per axis; zeros outside)."""
    return Compose(
        [
            SpatialPadd(keys=KEYS, spatial_size=(roi, roi, -1)),
            RandCropByPosNegLabeld(
                keys=KEYS,
                label_key="label",
                spatial_size=(roi, roi, 1),
                pos=1,
                neg=1,
                num_samples=num_samples,
                image_key="image",
                image_threshold=0.0,
            ),
            SqueezeDimd(keys=KEYS, dim=-1),
            RandAffined(
                keys=KEYS,
                prob=1.0,
                rotate_range=(rotate,),
                scale_range=(scale, scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
        ]
    )


def _unwrap(error: BaseException) -> BaseException:
    """The data error MONAI's ``Compose`` wrapped in ``RuntimeError("applying transform ...")``."""
    seen = error
    while seen is not None:
        if isinstance(seen, (CorruptFileError, DatasetLayoutError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


class VolumeDataset:
    """The volumes of one split of a segmentation data set.

    Args:
        items: one dict per case: ``image`` and ``label`` (paths, or ``H×W×D`` arrays) and
            ``name``.
        info: ``task="segmentation"``, ``image_size`` the training/inference window ``roi``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        preprocess: the deterministic chain (:func:`file_preprocessing`,
            :func:`array_preprocessing`).
        spacing: voxel size after preprocessing (mm for scans), for distances (HD95).
        num_samples: training slices per volume and epoch.
        synthetic: the data are generated, not scans; said wherever they appear.
        split_record: how the cases were split (a run's ``split.json``).
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        *,
        info: DatasetInfo,
        split: str,
        preprocess: Compose,
        spacing: Sequence[float],
        num_samples: int = 4,
        synthetic: bool = False,
        split_record: dict[str, Any] | None = None,
    ) -> None:
        if info.task != "segmentation":
            raise ValueError(f"a VolumeDataset is a segmentation task, got {info.task!r}")
        if not items:
            raise DatasetLayoutError(f"{info.name}: the {split} split holds no volumes")
        self.items = list(items)
        self.info = info
        self.split = split
        self.preprocess = preprocess
        self.spacing = tuple(float(s) for s in spacing)
        self.num_samples = num_samples
        self.synthetic = synthetic
        self.split_record = split_record
        self.sampler = slice_sampler(info.image_size, num_samples)
        self._cache: CacheDataset | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [str(item["name"]) for item in self.items]

    def prepare(self, num_workers: int | None = None) -> VolumeDataset:
        """Load, check and preprocess every volume now (``num_workers`` threads; ``None``: one
        per CPU core); raise the data errors here, before any training."""
        if self._cache is None:
            try:
                self._cache = CacheDataset(
                    self.items,
                    self.preprocess,
                    cache_rate=1.0,
                    num_workers=num_workers,
                    progress=False,
                )
            except Exception as error:
                cause = _unwrap(error)
                if cause is error:
                    raise
                raise cause from None
        return self

    def volume(self, index: int) -> dict[str, Any]:
        """Case ``index`` preprocessed: ``image`` ``C×H×W×D`` float32, ``label`` ``1×H×W×D``
        uint8 (0 or 1), ``name``."""
        return self.prepare()._cache[index]

    def sample(self, index: int, seed: int) -> tuple[Tensor, Tensor]:
        """The training slices of case ``index``: images ``K×C×roi×roi`` float32 and labels
        ``K×1×roi×roi`` int64, ``K = num_samples``; the same ``seed`` gives the same slices."""
        self.sampler.set_random_state(seed=seed)
        samples = self.sampler(dict(self.volume(index)))
        images = torch.stack([torch.as_tensor(s["image"]).as_subclass(Tensor) for s in samples])
        labels = torch.stack([torch.as_tensor(s["label"]).as_subclass(Tensor) for s in samples])
        return images.float(), labels.round().long()

    def __repr__(self) -> str:
        kind = ", synthetic" if self.synthetic else ""
        return (
            f"VolumeDataset({self.info.name!r}, split={self.split!r}, volumes={len(self)}, "
            f"window={self.info.image_size}, spacing={self.spacing}{kind})"
        )
