"""Batch statistics on the CPU: BatchNorm's own kernel against the layers' two ways.

    python benchmarks/batch_stats.py [--repeats 25] [--threads N] [--clock wall|cpu] [--quick]

``torch.batch_norm_update_stats`` (the statistics half of ``nn.BatchNorm``'s training forward)
against the compiled operators' two passes (``torch.ops.augmentbn.batch_moments``: a first
estimate of each channel's mean, then sums of the centered values) and the PyTorch
implementation's ``augmentbn._stats.moments_from_sums`` (one pass of per-row sums of ``x``
and ``x²``, combined in float64), on contiguous float32 input, each returning the per-channel
mean and biased variance. Also prints each one's largest relative error of the variance against
float64, on input shifted so that ``E[x²]/σ²`` is about 4 (within the sums' bound).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from _common import interleaved_medians, machine_line, markdown_table, parse_args

from augmentbn import _cpu_ops
from augmentbn._stats import moments_from_sums

SHAPES = [(8, 64, 32, 32), (128, 16, 32, 32), (4, 64, 56, 56), (2, 32, 16, 64, 64)]
QUICK_SHAPES = [(4, 4, 8, 8)]


def variance_error(variance: torch.Tensor, x: torch.Tensor) -> float:
    dims = (0, *range(2, x.dim()))
    reference = x.double().var(dim=dims, correction=0)
    return float(((variance.double() - reference) / reference).abs().max())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    if args.device.type != "cpu":
        raise SystemExit("batch_stats.py compares CPU kernels; run it with --device cpu")
    compiled = _cpu_ops.available()
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen) + 3**0.5  # E[x²]/σ² = 4
        variants = {
            "native": lambda x=x: torch.batch_norm_update_stats(x, None, None, 0.0),
            "sums": lambda x=x: moments_from_sums(x),
        }
        if compiled:
            variants["two-pass"] = lambda x=x: torch.ops.augmentbn.batch_moments(x)
        times = interleaved_medians(
            variants,
            args.repeats,
            args.device,
            args.clock,
        )
        native_var = torch.batch_norm_update_stats(x, None, None, 0.0)[1]
        sums = moments_from_sums(x)
        assert sums is not None
        others = [name for name in variants if name != "native"]
        row = ["×".join(map(str, shape)), f"{times['native']:.3f}"]
        errors = [f"{variance_error(native_var, x):.1e}"]
        for name in others:
            var = sums[1] if name == "sums" else torch.ops.augmentbn.batch_moments(x)[1]
            row += [f"{times[name]:.3f}", f"{times[name] / times['native']:.2f}×"]
            errors.append(f"{variance_error(var, x):.1e}")
        rows.append(row + errors)
    headers = ["input", "BatchNorm kernel ms"]
    for name in others:
        headers += [f"{name} ms", f"{name} × kernel"]
    headers += [f"{name} var error" for name in ("kernel", *others)]
    print(markdown_table(headers, rows))
    print()
    print(machine_line(args.device, args.repeats, args.clock))


if __name__ == "__main__":
    main(sys.argv[1:])
