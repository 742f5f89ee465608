"""A short demonstration of the layers: training-mode statistics and eval-mode equality.

Run with ``python -m augmentbn.demo``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import AugmentBatchNorm2d, IEBatchNorm2d
from .functional import NOISE_TYPES


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16, 12, 12) * 2.0 + 0.5
    print(f"input {tuple(x.shape)}: mean {x.mean():+.4f}, std {x.std():.4f}\n")
    print(f"{'layer':<32} {'train mean':>11} {'train std':>10} {'eval == BatchNorm2d':>20}")
    layers = [
        (f"AugmentBatchNorm2d({noise})", AugmentBatchNorm2d(16, noise=noise))
        for noise in NOISE_TYPES
    ]
    layers.append(("IEBatchNorm2d", IEBatchNorm2d(16)))
    for name, layer in layers:
        bn = nn.BatchNorm2d(16)
        for _ in range(5):
            y = layer(x)
            bn(x)
        layer.eval(), bn.eval()
        bn.load_state_dict(layer.state_dict(), strict=False)
        same = torch.equal(layer(x), bn(x))
        note = "yes" if same else "no (per-instance gate)"
        print(f"{name:<32} {y.mean().item():>+11.4f} {y.std().item():>10.4f} {note:>20}")
    print(
        "\nNABN shifts the batch mean by a random δ in training only; in eval it is BatchNorm.\n"
        "IEBN multiplies BatchNorm's output by sigmoid(w·mean(x) + b) per instance, in eval too."
    )


if __name__ == "__main__":
    main()
