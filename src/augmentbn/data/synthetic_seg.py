"""``seg_demo``: a small SYNTHETIC segmentation data set, offline, for tests and the demo
(``augmentbn[seg]``).

Not scans: each volume is MONAI's ``create_test_image_3d`` (spheres on uniform noise, one
foreground class) of :data:`SHAPE` voxels, volume ``i`` drawn from
``numpy.random.RandomState(i)``: 16 train, 4 val and 4 test volumes, always the same ones
(``seed`` seeds training, not the data). The preprocessing and training are those of the
Decathlon tasks (:mod:`.decathlon`) without resampling: a z-score per volume, 4 random axial
slices per volume and epoch at ``image_size`` (default 32) px from the 64 × 64 slices, a random
affine; evaluation slides a window over whole volumes. Voxels are 1 × 1 × 1 (HD95 in voxels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._optional import import_optional
from .info import DatasetInfo
from .registry import register_dataset

__all__ = ["COUNTS", "DEFAULT_ROI", "SHAPE", "build_seg_demo", "synthetic_volume"]

SHAPE = (64, 64, 24)
COUNTS = {"train": 16, "val": 4, "test": 4}
DEFAULT_ROI = 32
SPHERES = {"num_objs": 4, "rad_max": 10, "rad_min": 4, "noise_max": 0.6}


def synthetic_volume(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume ``index``: a float32 image and a uint8 label (0, 1) of :data:`SHAPE`."""
    synthetic = import_optional(
        "monai.data.synthetic", package="monai", extra="seg", purpose="seg_demo"
    )
    image, label = synthetic.create_test_image_3d(
        *SHAPE, **SPHERES, num_seg_classes=1, random_state=np.random.RandomState(index)
    )
    return image.astype(np.float32), (label > 0).astype(np.uint8)


@register_dataset("seg_demo")
def build_seg_demo(
    *,
    name: str,
    split: str,
    image_size: int | None,
    seed: int,
    in_chans: int | None = None,
    augment: bool = True,
    root: Any = None,
    download: bool = False,
    on_bad_image: str = "raise",
) -> Any:
    """The synthetic split ``split``; ``root``, ``download``, ``seed`` and ``on_bad_image``
    play no part."""
    from .volumes import VolumeDataset, array_preprocessing

    start = {"train": 0, "val": COUNTS["train"], "test": COUNTS["train"] + COUNTS["val"]}
    names = {
        part: [f"synthetic_{i:03d}" for i in range(start[part], start[part] + count)]
        for part, count in COUNTS.items()
    }
    items = []
    for i in range(start[split], start[split] + COUNTS[split]):
        image, label = synthetic_volume(i)
        items.append({"image": image, "label": label, "name": f"synthetic_{i:03d}"})
    info = DatasetInfo(
        name=name,
        task="segmentation",
        num_classes=2,
        in_chans=1,
        image_size=image_size or DEFAULT_ROI,
        mean=(0.0,),
        std=(1.0,),
        class_names=("background", "foreground"),
    )
    record = {
        "dataset": name,
        "synthetic": True,
        "source": (
            f"SYNTHETIC: MONAI create_test_image_3d{SHAPE}, {SPHERES}, volume i from "
            "numpy RandomState(i); not patient data"
        ),
        **names,
    }
    return VolumeDataset(
        items,
        info=info,
        split=split,
        preprocess=array_preprocessing(),
        spacing=(1.0, 1.0, 1.0),
        synthetic=True,
        split_record=record,
    )
