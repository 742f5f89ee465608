"""The dataset classes: a common base and the in-memory tensor dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .info import SPLITS, DatasetInfo
from .transforms import CropFlip, build_eval_transform, build_train_transform

__all__ = ["ImageDataset", "TensorImageDataset"]

Target = int | Tensor


class ImageDataset(Dataset):
    """Base of every dataset here.

    ``ds[i]`` is ``(image, target)``: ``image`` a float ``C×H×W`` tensor normalized with
    ``info.mean``/``info.std``, augmented with ``augmentation`` when ``augment`` is true (through
    torchvision's transforms and torch's global random generator); ``target`` an ``int`` for
    classification, a float multi-hot tensor for multi-label.

    Subclasses implement ``__len__``, :meth:`load` and ``targets``.

    Attributes:
        info: what the dataset is (:class:`DatasetInfo`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        augment: whether ``ds[i]`` and training loaders augment.
        augmentation: the recipe (:class:`CropFlip`).
        split_record: the file lists of a split this library made (written to a run's outputs),
            or ``None``.
    """

    def __init__(
        self, info: DatasetInfo, split: str, augmentation: CropFlip, augment: bool
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.info = info
        self.split = split
        self.augmentation = augmentation
        self.augment = bool(augment)
        self.split_record: dict[str, Any] | None = None
        self._pipelines: dict[bool, Callable[[Tensor], Tensor]] = {}

    @property
    def targets(self) -> Tensor:
        """All targets: ``int64`` of shape ``(N,)``, or float ``(N, num_classes)`` multi-hot."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[Tensor, Target]:
        """Image ``index`` as a float ``C×H×W`` tensor in ``[0, 1]`` at ``info.image_size``,
        channels already ``info.in_chans``, not normalized, not augmented; and its target."""
        raise NotImplementedError

    def transform(self, image: Tensor, *, augment: bool) -> Tensor:
        """Normalize a loaded image, augmenting it first when ``augment`` is true."""
        pipeline = self._pipelines.get(augment)
        if pipeline is None:
            info = self.info
            if augment and not self.augmentation.is_identity:
                pipeline = build_train_transform(
                    self.augmentation, info.image_size, info.mean, info.std
                )
            else:
                pipeline = build_eval_transform(info.mean, info.std)
            self._pipelines[augment] = pipeline
        return pipeline(image)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self.load(index)
        return self.transform(image, augment=self.augment), target

    def fast_tensors(self) -> tuple[Tensor, Tensor] | None:
        """``(images, targets)`` for the batch-tensor fast path, or ``None`` if unsupported.

        ``images`` is ``N×C×H×W``, ``uint8`` (0..255) or float in ``[0, 1]``, at the final size
        and channel count.
        """
        return None

    def __repr__(self) -> str:
        i = self.info
        return (
            f"{type(self).__name__}({i.name!r}, split={self.split!r}, n={len(self)}, "
            f"task={i.task!r}, classes={i.num_classes}, in_chans={i.in_chans}, "
            f"size={i.image_size}, augment={self.augment})"
        )


class TensorImageDataset(ImageDataset):
    """A dataset held as one tensor: digits, CIFAR, MedMNIST, or any ``N×C×H×W`` tensor.

    Args:
        images: ``N×C×H×W``, ``uint8`` (0..255) or float in ``[0, 1]``, with ``info.in_chans``
            channels at ``info.image_size``.
        targets: ``(N,)`` integer labels, or ``(N, K)`` multi-hot for multi-label.
        fast_path: whether loaders may use the batch-tensor fast path on it.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        info: DatasetInfo,
        split: str = "train",
        augmentation: CropFlip | None = None,
        augment: bool | None = None,
        *,
        fast_path: bool = True,
    ) -> None:
        augment = split == "train" if augment is None else augment
        super().__init__(info, split, augmentation or CropFlip(), augment)
        expected = (info.in_chans, info.image_size, info.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be N×{'×'.join(map(str, expected))}, got {images.shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or float, got {images.dtype}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        multi = info.task == "multi-label"
        self.images = images
        self._targets = targets.float() if multi else targets.long()
        self.fast_path = fast_path
        self.fast_cache: dict[Any, Any] = {}  # the fast path's prepared tensors, across epochs

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> Tensor:
        return self._targets

    def load(self, index: int) -> tuple[Tensor, Target]:
        image = self.images[index]
        image = image.float().div_(255) if image.dtype == torch.uint8 else image.float()
        target = self._targets[index]
        return image, (target if self.info.task == "multi-label" else int(target))

    def fast_tensors(self) -> tuple[Tensor, Tensor] | None:
        return (self.images, self._targets) if self.fast_path else None
