"""Time of one training step of a CIFAR ResNet-20 with BN, NABN or IEBN in every BN position.

    python benchmarks/train_step.py [--repeats 25] [--device cpu|cuda] [--threads N]
        [--clock wall|cpu] [--quick]

A step is zero_grad, forward, cross-entropy, backward and an SGD step (momentum 0.9, weight
decay 5e-4) on a fixed random batch of 32×32 images. The networks start from the same
weights and take turns in a fresh random order within each repeat; the table gives medians.
On the CPU, the layers run on the compiled operators; the "PyTorch impl." rows run the same
networks without them (``augmentbn._cpu_ops``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from _common import interleaved_medians, machine_line, markdown_table, parse_args
from torch import nn

from augmentbn import _cpu_ops
from augmentbn.models import create_model

NORMS = {
    "BN": "bn",
    "NABN everywhere": "nabn",
    "IEBN everywhere": "iebn",
    "NABN everywhere, PyTorch impl.": "nabn",
    "IEBN everywhere, PyTorch impl.": "iebn",
}
BATCH_SIZES = (4, 64)


def build(norm: str) -> nn.Module:
    torch.manual_seed(0)
    placement = None if norm == "bn" else "all"
    return create_model("resnet20", norm=norm, num_classes=10, placement=placement)


def train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], object]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return step


def without_cpu_ops(step: Callable[[], object]) -> Callable[[], object]:
    """The step on the layers' PyTorch implementation (no compiled CPU operators)."""

    def run() -> object:
        with _cpu_ops.disabled():
            return step()

    return run


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    batch_sizes = (2,) if args.quick else BATCH_SIZES
    rows = []
    for batch in batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, 32, 32, generator=gen).to(args.device)
        labels = torch.randint(0, 10, (batch,), generator=gen).to(args.device)
        steps = {
            name: train_step(build(norm).to(args.device).train(), images, labels)
            for name, norm in NORMS.items()
        }
        for name in steps:
            if name.endswith("PyTorch impl."):
                steps[name] = without_cpu_ops(steps[name])
        times = interleaved_medians(steps, args.repeats, args.device, args.clock)
        for name in NORMS:
            rows.append([batch, name, f"{times[name]:.2f}", f"{times[name] / times['BN']:.3f}×"])
    print(markdown_table(["batch", "norm", "step ms", "× BN"], rows))
    print()
    print(machine_line(args.device, args.repeats, args.clock))


if __name__ == "__main__":
    main(sys.argv[1:])
