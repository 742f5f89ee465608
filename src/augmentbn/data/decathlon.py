"""``msd_<task>``: the Medical Segmentation Decathlon tasks in their own layout
(``augmentbn[seg]``: MONAI and nibabel).

``msd_liver`` is Task03_Liver, the NABN paper's segmentation task; every other task is there too
(``msd_braintumour``, ``msd_heart``, ``msd_hippocampus``, ``msd_prostate``, ``msd_lung``,
``msd_pancreas``, ``msd_hepaticvessel``, ``msd_spleen``, ``msd_colon``). ``root`` is the task's
folder (the one holding ``dataset.json``) or its parent (holding ``Task03_Liver/``); both are
accepted. ``download=True`` fetches the task with MONAI's Decathlon address and checksum.

The cases are the ``training`` entries of ``dataset.json`` (the Decathlon's test cases have no
labels), sorted by case name (the image file name without ``.nii.gz``, in Python's string
order). The last ``2k`` are held out, the
first ``k`` of them for validation and the last ``k`` for test, with
``k = min(30, max(1, floor(30·n/131 + 1/2)))`` for ``n`` cases: 30 and 30 for the liver's 131
cases (the paper's split), about 23% each for smaller tasks. The split is by volume, so no
patient is in two splits; it is written to a run's ``split.json``.

Preprocessing (:mod:`.volumes`): RAS orientation, spacing ``(1, 1, 3)`` mm (bilinear image,
nearest label); CT tasks (every ``dataset.json`` modality ``CT``) the paper's HU window
``[-310, 390]`` scaled to ``[0, 1]`` and clipped, MR tasks a z-score per volume and channel;
every label above 0 merged into one foreground class (liver and tumour, for the liver). Training
takes 4 random axial slices per volume and epoch at ``image_size`` (default 256) px.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ._optional import import_optional
from .errors import CorruptFileError, DatasetLayoutError, DownloadError, not_found
from .info import DatasetInfo
from .registry import default_root, register_dataset

__all__ = [
    "DEFAULT_ROI",
    "DEFAULT_SPACING",
    "MSD_TASKS",
    "build_decathlon",
    "held_out",
    "split_cases",
]

MSD_TASKS = {
    "braintumour": "Task01_BrainTumour",
    "heart": "Task02_Heart",
    "liver": "Task03_Liver",
    "hippocampus": "Task04_Hippocampus",
    "prostate": "Task05_Prostate",
    "lung": "Task06_Lung",
    "pancreas": "Task07_Pancreas",
    "hepaticvessel": "Task08_HepaticVessel",
    "spleen": "Task09_Spleen",
    "colon": "Task10_Colon",
}
DEFAULT_SPACING = (1.0, 1.0, 3.0)
DEFAULT_ROI = 256
LIVER_CASES, LIVER_HELD_OUT = 131, 30


def layout(task: str) -> str:
    return (
        f"  <data-root>/dataset.json              (or <data-root>/{task}/dataset.json)\n"
        f"  <data-root>/imagesTr/<case>.nii.gz    one per 'training' entry of dataset.json\n"
        f"  <data-root>/labelsTr/<case>.nii.gz    its label, same grid\n"
        "--data-root may be the folder that holds dataset.json or its parent."
    )


def held_out(n: int) -> int:
    """Cases in each of val and test for ``n`` labelled cases:
    ``min(30, max(1, floor(30·n/131 + 1/2)))`` (30 for the liver's 131)."""
    return min(LIVER_HELD_OUT, max(1, math.floor(LIVER_HELD_OUT * n / LIVER_CASES + 0.5)))


def split_cases(names: list[str]) -> dict[str, list[str]]:
    """Sorted ``names`` cut into train, val (the ``k`` before the last ``k``) and test (the
    last ``k``), ``k = held_out(len(names))``."""
    ordered = sorted(names)
    k = held_out(len(ordered))
    if len(ordered) < 2 * k + 1:
        raise DatasetLayoutError(
            f"{len(ordered)} labelled cases cannot be split into train, val and test; at "
            "least 3 are needed"
        )
    return {"train": ordered[: -2 * k], "val": ordered[-2 * k : -k], "test": ordered[-k:]}


def _task_folder(root: Path, task: str, download: bool) -> Path:
    for folder in (root, root / task):
        if (folder / "dataset.json").is_file():
            return folder
    if download:
        _download(root, task)
        return root / task
    raise not_found(f"no dataset.json in {root} or {root / task}", layout(task))


def _download(parent: Path, task: str) -> None:
    """MONAI's Decathlon archive of ``task``, checked and unpacked beside, then moved into
    ``parent/task`` (nothing half-written is left behind)."""
    apps = import_optional("monai.apps", package="monai", extra="seg", purpose="msd download")
    url, md5 = apps.DecathlonDataset.resource[task], apps.DecathlonDataset.md5[task]
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=parent) as tmp:
        try:
            apps.download_and_extract(
                url, filepath=Path(tmp) / f"{task}.tar", output_dir=tmp, hash_val=md5
            )
            if not (Path(tmp) / task / "dataset.json").is_file():
                raise FileNotFoundError(f"the archive holds no {task}/dataset.json")
        except Exception as error:
            raise DownloadError(
                f"Downloading {task} failed ({type(error).__name__}: {error}).\nDownload {url} "
                f"(MD5 {md5}) by hand and unpack it into {parent}, so that "
                f"{parent / task / 'dataset.json'} exists."
            ) from error
        if (parent / task).exists():
            shutil.rmtree(parent / task)
        os.replace(Path(tmp) / task, parent / task)


def _read_description(folder: Path, task: str) -> dict[str, Any]:
    path = folder / "dataset.json"
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(path, f"not a readable JSON file ({error})") from error
    missing = [k for k in ("training", "labels", "modality") if k not in description]
    if not isinstance(description, dict) or missing:
        raise DatasetLayoutError(
            f"{path} lacks the Decathlon keys {missing or ['training', 'labels', 'modality']}"
            f".\nExpected layout:\n{layout(task)}"
        )
    return description


def _cases(folder: Path, description: dict[str, Any], task: str) -> list[dict[str, str]]:
    """``{"image", "label", "name"}`` per ``training`` entry, every file checked to exist."""
    cases = []
    for entry in description["training"]:
        image = entry.get("image") if isinstance(entry, dict) else None
        if not image:
            raise DatasetLayoutError(
                f"{folder / 'dataset.json'}: a 'training' entry without an image: {entry!r}"
            )
        image_path = (folder / image).resolve()
        if not image_path.is_file():
            raise not_found(
                f"{image_path} (listed in {folder / 'dataset.json'}) is missing",
                layout(task),
                hint="Restore the file, or remove its entry from dataset.json.",
            )
        label = entry.get("label")
        label_path = (folder / label).resolve() if label else None
        if label_path is None or not label_path.is_file():
            expected = label_path or folder / "labelsTr" / image_path.name
            raise DatasetLayoutError(
                f"image {image_path} has no label: {expected} is missing. Every training "
                f"image needs its label.\nExpected layout:\n{layout(task)}"
            )
        name = image_path.name.removesuffix(".gz").removesuffix(".nii")
        cases.append({"image": str(image_path), "label": str(label_path), "name": name})
    return cases


def _register_names() -> tuple[str, ...]:
    return tuple(f"msd_{key}" for key in MSD_TASKS)


@register_dataset(*_register_names())
def build_decathlon(
    *,
    name: str,
    root: Path | None,
    split: str,
    download: bool,
    image_size: int | None,
    seed: int,
    in_chans: int | None = None,
    augment: bool = True,
    on_bad_image: str = "raise",
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Any:
    """Split ``split`` of the Decathlon task ``name`` as a
    :class:`~.volumes.VolumeDataset`; volumes load at its ``prepare()``. ``seed``, ``augment``
    and ``on_bad_image`` play no part (the split is fixed; a bad file is always an error)."""
    task = MSD_TASKS[name.removeprefix("msd_")]
    import_optional("nibabel", package="nibabel", extra="seg", purpose="Reading NIfTI volumes")
    from .volumes import CT_WINDOW, VolumeDataset, file_preprocessing

    folder = _task_folder(Path(root) if root is not None else default_root(), task, download)
    description = _read_description(folder, task)
    cases = _cases(folder, description, task)
    by_name = {case["name"]: case for case in cases}
    if len(by_name) != len(cases):
        raise DatasetLayoutError(f"{folder / 'dataset.json'} lists a case twice")
    parts = split_cases(list(by_name))
    modalities = [str(m) for m in dict(description["modality"]).values()]
    is_ct = bool(modalities) and all(m.upper() == "CT" for m in modalities)
    classes = [int(k) for k in dict(description["labels"])]
    roi = image_size or DEFAULT_ROI
    info = DatasetInfo(
        name=name,
        task="segmentation",
        num_classes=2,
        in_chans=len(modalities),
        image_size=roi,
        mean=(0.0,) * len(modalities),
        std=(1.0,) * len(modalities),
        class_names=("background", "foreground"),
    )
    record = {
        "dataset": name,
        "task": task,
        "root": str(folder),
        "rule": (
            "cases sorted by name; the last 2k held out, val the first k of them "
            f"and test the last k, k = min(30, max(1, floor(30*n/131 + 1/2))) = "
            f"{len(parts['test'])} for n = {len(cases)}"
        ),
        **parts,
    }
    return VolumeDataset(
        [by_name[n] for n in parts[split]],
        info=info,
        split=split,
        preprocess=file_preprocessing(
            classes=classes,
            spacing=spacing,
            window=CT_WINDOW if is_ct else None,
            layout="Expected layout:\n" + layout(task),
        ),
        spacing=spacing,
        split_record=record,
    )
