"""Forward + backward time and saved-for-backward memory of each layer, relative to BatchNorm.

    python benchmarks/layers.py [--repeats 25] [--device cpu|cuda] [--threads N]
        [--clock wall|cpu] [--quick]

Every layer runs in training mode on the same input; one call is a forward pass and
``torch.autograd.grad`` of the output (input and parameter gradients, nothing accumulated).
The layers take turns in a fresh random order within each repeat; the table gives medians.
On the CPU, ours run on the compiled operators; the "PyTorch impl." rows show two of them
without (``augmentbn._cpu_ops``).
"Saved" is what autograd keeps for the backward pass (distinct storages packed by saved-tensor
hooks), as a ratio to BatchNorm's.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _common import interleaved_medians, machine_line, markdown_table, parse_args
from reference import CompositeAugmentBatchNorm, CompositeIEBatchNorm
from torch import nn

import augmentbn as ab
from augmentbn import _cpu_ops

SHAPES = [(8, 64, 32, 32), (128, 16, 32, 32), (4, 64, 56, 56), (2, 32, 16, 64, 64)]
QUICK_SHAPES = [(2, 4, 4, 4), (2, 4, 2, 3, 3)]
NOISES = ("gaussian_clip", "gaussian_reject", "uniform")


def layer_factories(ndim: int) -> dict[str, Callable[[int], nn.Module]]:
    """Name -> ``num_features -> layer`` for ``ndim``-D input; BatchNorm first."""
    bn = {4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[ndim]
    nabn = {4: ab.AugmentBatchNorm2d, 5: ab.AugmentBatchNorm3d}[ndim]
    iebn = {4: ab.IEBatchNorm2d, 5: ab.IEBatchNorm3d}[ndim]
    factories: dict[str, Callable[[int], nn.Module]] = {"BatchNorm": bn}
    for noise in NOISES:
        factories[f"NABN {noise}"] = lambda c, noise=noise: nabn(c, noise=noise)
    factories["IEBN"] = iebn
    factories["NABN gaussian_clip, PyTorch impl."] = lambda c: PyTorchImplementation(nabn(c))
    factories["IEBN, PyTorch impl."] = lambda c: PyTorchImplementation(iebn(c))
    for noise in NOISES:
        factories[f"composite NABN {noise}"] = lambda c, noise=noise: CompositeAugmentBatchNorm(
            c, noise=noise
        )
    factories["composite IEBN"] = CompositeIEBatchNorm
    return factories


class PyTorchImplementation(nn.Module):
    """A layer run on its PyTorch implementation: what it costs without the compiled CPU
    operators (no C++ compiler, ``AUGMENTBN_CPU_OPS=0``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _cpu_ops.disabled():
            return self.layer(x)


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of ``layer(x)``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(storages.values())


def run_shape(shape: Sequence[int], args: argparse.Namespace) -> list[list[object]]:
    device = args.device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    layers = {
        name: make(shape[1]).to(device).train()
        for name, make in layer_factories(len(shape)).items()
    }

    def step(layer: nn.Module) -> Callable[[], object]:
        inputs = [x, *layer.parameters()]
        return lambda: torch.autograd.grad(layer(x), inputs, grad)

    times = interleaved_medians(
        {name: step(layer) for name, layer in layers.items()}, args.repeats, device, args.clock
    )
    memory = {name: saved_bytes(layer, x) for name, layer in layers.items()}
    rows = []
    for name in layers:
        rows.append(
            [
                "×".join(map(str, shape)),
                name,
                f"{times[name]:.3f}",
                f"{times[name] / times['BatchNorm']:.2f}×",
                f"{memory[name] / 2**20:.2f}",
                f"{memory[name] / memory['BatchNorm']:.2f}×",
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        rows += run_shape(shape, args)
    headers = ["input", "layer", "fwd+bwd ms", "time × BN", "saved MiB", "saved × BN"]
    print(markdown_table(headers, rows))
    print()
    print(machine_line(args.device, args.repeats, args.clock))
    if args.device.type == "cpu" and importlib.util.find_spec("jittor") is not None:
        # The Jittor layers against Jittor's own BatchNorm (benchmarks/jittor_layers.py).
        sys.path.insert(0, str(Path(__file__).parent))
        import jittor_layers

        print("\n## Jittor\n")
        jittor_layers.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    main(sys.argv[1:])
