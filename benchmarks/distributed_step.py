"""Time of one distributed training step of a CIFAR ResNet-20: synchronized NABN and IEBN against
the synchronized BN, with 2 processes (gloo on the CPU, NCCL on CUDA, one GPU per process).

    python benchmarks/distributed_step.py [--repeats 25] [--device cpu|cuda] [--threads N]
        [--clock wall|cpu] [--world 2] [--quick]

Each process runs ``DistributedDataParallel`` over a ResNet-20 whose every BN position holds the
norm, synchronized by ``augmentbn.convert_sync_norm`` (BN becomes augmentbn's ``SyncBatchNorm2d``
on the CPU, ``nn.SyncBatchNorm`` on CUDA, where augmentbn's runs as an extra row). A step is
zero_grad, forward, cross-entropy, backward (with the gradient all-reduce) and an SGD step on a
fixed random shard of the global batch. The networks start from the same weights and take turns
in one random order, the same on every process; rank 0 prints the medians. ``--threads``
applies to each process (default 1).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import interleaved_medians, machine_line, markdown_table, parse_args
from torch import nn
from train_step import train_step

import augmentbn as ab
from augmentbn.models import create_model

PER_PROCESS_BATCHES = (4, 32)


def build(norm: str, device: torch.device, torch_sync_bn: bool) -> nn.Module:
    torch.manual_seed(0)
    placement = None if norm == "bn" else "all"
    model = create_model("resnet20", norm=norm, num_classes=10, placement=placement)
    # convert_sync_norm picks nn.SyncBatchNorm for BN layers already on CUDA, and augmentbn's
    # SyncBatchNorm2d for those still on the CPU.
    if torch_sync_bn:
        model = ab.convert_sync_norm(model.to(device))
    else:
        model = ab.convert_sync_norm(model).to(device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model.train(), device_ids=ids)


def variants(device: torch.device) -> dict[str, tuple[str, bool]]:
    """Row name: (norm, BN as torch's nn.SyncBatchNorm)."""
    rows = {"BN, synchronized": ("bn", device.type == "cuda")}
    if device.type == "cuda":
        rows["BN, augmentbn SyncBatchNorm2d"] = ("bn", False)
    rows["NABN everywhere, synchronized"] = ("nabn", False)
    rows["IEBN everywhere, synchronized"] = ("iebn", False)
    return rows


def worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    torch.set_num_threads(args.threads or 1)
    device = args.device
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        rows = []
        for batch in (2,) if args.quick else PER_PROCESS_BATCHES:
            gen = torch.Generator().manual_seed(1000 * rank + batch)
            images = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
            labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
            steps = {
                name: train_step(build(norm, device, torch_bn), images, labels)
                for name, (norm, torch_bn) in variants(device).items()
            }
            times = interleaved_medians(steps, args.repeats, device, args.clock)
            base = times["BN, synchronized"]
            for name in steps:
                rows.append(
                    [batch * world, batch, name, f"{times[name]:.2f}", f"{times[name] / base:.3f}×"]
                )
        if rank == 0:
            headers = ["global batch", "per process", "norm", "step ms", "× synchronized BN"]
            print(markdown_table(headers, rows))
            print()
            print(
                f"{world} processes ({backend}); " + machine_line(device, args.repeats, args.clock)
            )
            sys.stdout.flush()
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    world = 2
    if "--world" in argv:
        i = argv.index("--world")
        world = int(argv[i + 1])
        del argv[i : i + 2]
    args = parse_args(__doc__.splitlines()[0], argv)  # checks the arguments before spawning
    if args.device.type == "cuda" and torch.cuda.device_count() < world:
        sys.exit(f"--device cuda needs {world} GPUs (one per process, as NCCL requires)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, argv), nprocs=world)


if __name__ == "__main__":
    main()
