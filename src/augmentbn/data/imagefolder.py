"""``imagefolder``: one folder per class, as Kermany et al. publish their retinal OCT and
pediatric chest X-ray images (*Cell* 2018; Mendeley Data, doi:10.17632/rscbjbr9sj)::

    root/train/<CLASS>/*.jpeg     e.g. CNV, DME, DRUSEN, NORMAL; or NORMAL, PNEUMONIA
    root/val/<CLASS>/*.jpeg       optional
    root/test/<CLASS>/*.jpeg

Classes are the folder names in ``train``, sorted. Without ``val``, a stratified ``val_fraction``
of ``train`` (seeded by ``seed``) is held out, and both datasets carry the file lists in
``split_record``. Images are read with PIL, converted to grayscale (``in_chans=1``) or RGB
(``in_chans=3``; default: 1 if the first training image is grayscale) and resized to
``image_size`` (default 224) with torchvision. Normalization: ``mean``/``std`` (default 0.5).
Augmentation: random crop with padding ``image_size / 16``, flips only when asked for (``hflip``,
``vflip``): a chest X-ray's left and right differ.

Unreadable images: every file's header is read when the dataset is built, and
``on_bad_image="raise"`` (default) stops at the first bad one, naming it. ``"skip"`` decodes
every image once up front and leaves the bad ones out (listed in ``skipped``, with a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._optional import import_optional
from .base import ImageDataset
from .errors import CorruptFileError, DatasetLayoutError, not_found
from .info import DatasetInfo
from .registry import register_dataset
from .splits import stratified_split
from .transforms import CropFlip, scaled_padding

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "build_imagefolder"]

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
_GRAY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_LAYOUT = """{root}/
    train/
        <CLASS_A>/*.jpeg
        <CLASS_B>/*.jpeg
    val/     (optional; without it a seeded, stratified part of train is held out)
        <CLASS_A>/*.jpeg ...
    test/
        <CLASS_A>/*.jpeg ..."""
_HINT = (
    "An image folder cannot be downloaded: put the images in place by hand (the Kermany OCT2017 "
    "and chest_xray archives unpack to this layout)."
)


def _pil():
    return import_optional("PIL.Image", package="pillow", extra="train", purpose="imagefolder")


def _missing(what: str, root: Path | str) -> Exception:
    return not_found(f"imagefolder: {what}", _LAYOUT.format(root=root), hint=_HINT)


def _scan(folder: Path) -> dict[str, list[Path]]:
    """Image files of each class folder in ``folder``, sorted by name."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetLayoutError(
            f"{folder} holds no class folders; expected one folder of images per class"
        )
    found = {}
    for cls in classes:
        files = sorted(
            p
            for p in cls.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetLayoutError(
                f"class folder {cls} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add its images"
            )
        found[cls.name] = files
    return found


def _open_mode(path: Path, *, decode: bool) -> str:
    """The PIL mode of the image at ``path``; decodes it fully when ``decode`` is true."""
    try:
        with _pil().open(path) as image:
            if decode:
                image.load()
            return image.mode
    except Exception as err:
        reason = f"is not a readable image ({type(err).__name__}: {err})"
        raise CorruptFileError(path, reason) from err


def _infer_channels(files: Sequence[Path], *, skip_bad: bool) -> int:
    """1 if the first readable image of ``files`` is grayscale, else 3."""
    for path in files:
        try:
            return 1 if _open_mode(path, decode=skip_bad) in _GRAY_MODES else 3
        except CorruptFileError:
            if not skip_bad:
                raise
    raise DatasetLayoutError(f"no readable image in {files[0].parent}")


class ImageFolderDataset(ImageDataset):
    """Images read from files on demand (see the module docstring)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        info: DatasetInfo,
        split: str,
        augmentation: CropFlip,
        augment: bool,
        *,
        on_bad_image: str = "raise",
    ) -> None:
        super().__init__(info, split, augmentation, augment)
        keep = []
        self.skipped: list[str] = []
        for path, label in zip(files, labels, strict=True):
            try:
                _open_mode(path, decode=on_bad_image == "skip")
                keep.append((path, label))
            except CorruptFileError:
                if on_bad_image == "raise":
                    raise
                self.skipped.append(str(path))
        if self.skipped:
            warnings.warn(
                f"imagefolder {split}: skipped {len(self.skipped)} unreadable image(s): "
                f"{', '.join(self.skipped[:5])}{' ...' if len(self.skipped) > 5 else ''}",
                stacklevel=3,
            )
        if not keep:
            raise DatasetLayoutError(f"imagefolder {split}: no readable images")
        self.files = [p for p, _ in keep]
        self._targets = torch.tensor([label for _, label in keep], dtype=torch.int64)
        self._mode = "L" if info.in_chans == 1 else "RGB"
        self._to_tensor: Callable[[Any], Tensor] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def targets(self) -> Tensor:
        return self._targets

    def load(self, index: int) -> tuple[Tensor, int]:
        if self._to_tensor is None:
            v2 = import_optional(
                "torchvision.transforms.v2",
                package="torchvision",
                extra="vision",
                purpose="imagefolder",
            )
            size = self.info.image_size
            self._to_tensor = v2.Compose(
                [
                    v2.Resize((size, size), antialias=True),
                    v2.PILToTensor(),
                    v2.ToDtype(torch.float32, scale=True),
                ]
            )
        path = self.files[index]
        try:
            with _pil().open(path) as image:
                image.draft(self._mode, (self.info.image_size, self.info.image_size))
                image = image.convert(self._mode)
        except Exception as err:
            reason = f"cannot be decoded ({type(err).__name__}: {err})"
            raise CorruptFileError(path, reason) from err
        return self._to_tensor(image), int(self._targets[index])


def _stats(values: Sequence[float] | None, chans: int, what: str) -> tuple[float, ...]:
    values = (0.5,) if values is None else tuple(float(v) for v in values)
    if len(values) == 1:
        return values * chans
    if len(values) != chans:
        raise ValueError(f"{what} needs 1 or {chans} values, got {len(values)}")
    return values


@register_dataset("imagefolder")
def build_imagefolder(
    *,
    name: str,
    root: Path | None,
    split: str,
    download: bool = False,
    image_size: int | None,
    seed: int,
    in_chans: int | None,
    augment: bool,
    on_bad_image: str,
    val_fraction: float = 0.1,
    hflip: bool = False,
    vflip: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageFolderDataset:
    """An image folder's ``split``; ``download`` is refused with the layout when files lack."""
    if root is None:
        raise _missing("no root given; pass the folder that holds train/ and test/", "<root>")
    if not root.is_dir():
        raise _missing(f"{root} not found", root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise _missing(f"{train_dir} not found (every split needs the training classes)", root)
    train = _scan(train_dir)
    classes = tuple(train)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{train_dir} holds one class folder ({classes[0]}); a classifier needs at least "
            "2 classes, one folder of images each"
        )
    has_val = (root / "val").is_dir()
    record = None
    if split == "test" or (split == "val" and has_val):
        folder = root / split
        if not folder.is_dir():
            raise _missing(f"{folder} not found", root)
        found = _scan(folder)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetLayoutError(
                f"class(es) {', '.join(unknown)} in {folder} have no folder in {train_dir}; "
                f"the training classes are {', '.join(classes)}"
            )
        pairs = [(p, classes.index(c)) for c, files in found.items() for p in files]
    else:
        pairs = [(p, k) for k, c in enumerate(classes) for p in train[c]]
        if not has_val:
            if not 0 <= val_fraction < 1:
                raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
            if split == "val" and val_fraction == 0:
                raise ValueError(f"{root} has no val/ folder and val_fraction=0: no val split")
            parts = stratified_split([k for _, k in pairs], (1 - val_fraction, val_fraction), seed)
            record = {
                "dataset": name,
                "root": str(root),
                "seed": seed,
                "val_fraction": val_fraction,
                "classes": list(classes),
                **{
                    s: [pairs[i][0].relative_to(root).as_posix() for i in part]
                    for s, part in zip(("train", "val"), parts, strict=True)
                },
            }
            pairs = [pairs[i] for i in parts[0 if split == "train" else 1]]

    if in_chans is None:
        in_chans = _infer_channels(train[classes[0]], skip_bad=on_bad_image == "skip")
    size = image_size or 224
    info = DatasetInfo(
        name=name,
        task="classification",
        num_classes=len(classes),
        in_chans=in_chans,
        image_size=size,
        mean=_stats(mean, in_chans, "mean"),
        std=_stats(std, in_chans, "std"),
        class_names=classes,
    )
    spec = CropFlip(padding=scaled_padding(size, 1 / 16), hflip=hflip, vflip=vflip)
    dataset = ImageFolderDataset(
        [p for p, _ in pairs],
        [k for _, k in pairs],
        info,
        split,
        spec,
        augment,
        on_bad_image=on_bad_image,
    )
    dataset.split_record = record
    return dataset
