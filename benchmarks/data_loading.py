"""Images per second of the batch-tensor fast path against torchvision ``DataLoader`` pipelines.

Training loaders (shuffle + random crop/flip + normalization) over:

* ``digits@32``: scikit-learn's 8×8 digits upscaled to 32 px, the training split (1,078 images);
* ``cifar-sized``: a synthetic ``uint8`` set of 3×32×32 images (50,000; 2,000 with ``--quick``).

Pipelines: ``fast`` is ``build_loader(..., fast=True)``; ``loader`` is
``build_loader(..., fast=False)`` (a ``DataLoader`` over torchvision's per-sample transforms, each
image seeded from the loader's generator); ``plain`` is a bare
``torch.utils.data.DataLoader(dataset, shuffle=True)`` over the same per-sample transforms.
Each cell is images/s over at least ``--images`` images (whole epochs), the median of
``--repeats`` runs (the machine may be shared).

    python benchmarks/data_loading.py [--quick] [--device cpu] [--batch-sizes 2,8,32,128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from augmentbn.data import (
    CropFlip,
    DatasetInfo,
    ImageDataset,
    TensorImageDataset,
    build_dataset,
    build_loader,
)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synthetic_cifar(n: int, seed: int = 0) -> TensorImageDataset:
    """``n`` random ``uint8`` 3×32×32 images with CIFAR-10's statistics and augmentation."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(10, (n,), generator=gen)
    info = DatasetInfo(
        "cifar-sized",
        "classification",
        10,
        3,
        32,
        CIFAR_MEAN,
        CIFAR_STD,
        tuple(str(k) for k in range(10)),
    )
    return TensorImageDataset(images, labels, info, "train", CropFlip(4, hflip=True), True)


def images_per_second(
    make: Callable[[], Iterable], min_images: int, repeats: int, device: torch.device
) -> float:
    """Median images/s of ``repeats`` runs of whole epochs of ``make()`` until ``min_images``."""
    rates = []
    for _ in range(repeats):
        loader = make()
        for _ in zip(range(1), loader, strict=False):  # warm up: workers, first allocation
            pass
        seen, start = 0, time.perf_counter()
        while seen < min_images:
            for images, _ in loader:
                seen += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def pipelines(
    dataset: ImageDataset, batch_size: int, device: torch.device, workers: int
) -> dict[str, Callable[[], Iterable]]:
    def fast() -> Iterable:
        gen = torch.Generator().manual_seed(0)
        return build_loader(
            dataset, batch_size, train=True, device=device, generator=gen, fast=True
        )

    def loader() -> Iterable:
        gen = torch.Generator().manual_seed(0)
        return build_loader(
            dataset,
            batch_size,
            train=True,
            device=device,
            generator=gen,
            fast=False,
            num_workers=workers,
        )

    def plain() -> Iterable:
        base = DataLoader(
            dataset, batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
        return ((x.to(device), y.to(device)) for x, y in base) if device.type != "cpu" else base

    return {"fast": fast, "loader": loader, "plain": plain}


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="2,8,32,128")
    parser.add_argument("--images", type=int, default=20000, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--cifar-size", type=int, default=50000, help="synthetic set size")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.images, args.repeats, args.cifar_size = "8,32", 256, 1, 2000
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    datasets = {
        "digits@32": build_dataset("digits", split="train", image_size=32),
        "cifar-sized": synthetic_cifar(args.cifar_size),
    }

    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.workers} DataLoader workers, >= {args.images} images per cell, "
        f"median of {args.repeats}"
    )
    print(
        "| dataset | batch | fast path (img/s) | build_loader DataLoader (img/s) "
        "| plain DataLoader (img/s) | fast / plain |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name, dataset in datasets.items():
        for batch_size in batch_sizes:
            row: dict[str, object] = {"dataset": name, "batch_size": batch_size}
            for key, make in pipelines(dataset, batch_size, device, args.workers).items():
                row[key] = images_per_second(make, args.images, args.repeats, device)
            rows.append(row)
            print(
                f"| {name} | {batch_size} | {row['fast']:,.0f} | {row['loader']:,.0f} "
                f"| {row['plain']:,.0f} | {row['fast'] / row['plain']:,.1f}× |",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
