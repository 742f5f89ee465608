"""What a dataset tells the rest of the library: task, classes, channels, size, normalization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SPLITS", "TASKS", "DatasetInfo", "Task"]

Task = Literal["classification", "multi-label", "segmentation"]
TASKS: tuple[str, ...] = ("classification", "multi-label", "segmentation")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Description of a built dataset.

    ``mean`` and ``std`` are per channel, for images scaled to ``[0, 1]``; every image the dataset
    yields is already normalized as ``(x - mean) / std``. ``class_names[k]`` names label ``k``
    (for ``multi-label``, bit ``k`` of the multi-hot target).
    """

    name: str
    task: Task
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"mean and std need {self.in_chans} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(self.class_names)} class names")
