"""Forward + backward time of the Jittor layers relative to ``jittor.nn.BatchNorm``.

For each input shape, every layer runs ``y = layer(x)`` and the gradients of ``sum(y·g)`` with
respect to ``x``, ``weight`` and ``bias``, in training mode (running statistics included), then
synchronizes. Layers are interleaved round by round, so drift of the machine hits all alike;
the table gives the median time per step and its ratio to Jittor's BatchNorm. The target for
our layers is at most 1.1×.

    python benchmarks/jittor_layers.py            # 3 shapes of DESIGN.md 2, 25 rounds
    python benchmarks/jittor_layers.py --quick    # 1 small shape, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import augmentbn.jittor as abj  # sets Jittor's CPU defaults before the first import of jittor

import jittor as jt  # isort: skip

SHAPES = ((8, 64, 32, 32), (128, 16, 32, 32), (4, 64, 56, 56))
QUICK_SHAPES = ((8, 32, 16, 16),)


def layers(channels: int) -> dict[str, jt.nn.Module]:
    """The layers to time, the reference first."""
    return {
        "jittor nn.BatchNorm": jt.nn.BatchNorm(channels),
        "BatchNorm2d (torch semantics)": abj.BatchNorm2d(channels),
        "AugmentBatchNorm2d clip": abj.AugmentBatchNorm2d(channels, noise="gaussian_clip"),
        "AugmentBatchNorm2d reject": abj.AugmentBatchNorm2d(channels, noise="gaussian_reject"),
        "AugmentBatchNorm2d uniform": abj.AugmentBatchNorm2d(channels, noise="uniform"),
        "GauBatchNorm (seed API)": abj.GauBatchNorm(channels),
        "IEBatchNorm2d": abj.IEBatchNorm2d(channels),
    }


def step_fn(layer: jt.nn.Module, x: jt.Var, grad_out: jt.Var) -> Callable[[], None]:
    params = [p for p in (layer.weight, layer.bias) if isinstance(p, jt.Var)]

    def step() -> None:
        loss = (layer(x) * grad_out).sum()
        grads = jt.grad(loss, [x, *params])
        jt.sync(grads)
        jt.sync_all(True)  # the running-statistics updates too

    return step


def time_steps(step: Callable[[], None], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - start) / number


def bench_shape(shape: tuple[int, ...], rounds: int, number: int, warmup: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal(shape).astype(np.float32))
    grad_out = jt.array(rng.standard_normal(shape).astype(np.float32))
    steps = {name: step_fn(layer, x, grad_out) for name, layer in layers(shape[1]).items()}
    for step in steps.values():
        time_steps(step, warmup)  # compiles the kernels
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, number))
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["jittor nn.BatchNorm"]
    return [(name, 1e3 * m, m / reference) for name, m in medians.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median)")
    parser.add_argument("--number", type=int, default=3, help="steps per timing")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = args.rounds or (5 if args.quick else 25)
    print(
        f"jittor {jt.__version__}, use_cuda={jt.flags.use_cuda}, rounds={rounds}, "
        f"steps per timing={args.number}; forward+backward, training mode"
    )
    for shape in shapes:
        print(f"\ninput {'x'.join(map(str, shape))}")
        print(f"| {'layer':<30} | {'ms':>8} | {'vs jittor BN':>12} |")
        print(f"|{'-' * 32}|{'-' * 10}|{'-' * 14}|")
        for name, ms, ratio in bench_shape(shape, rounds, args.number, warmup=3):
            print(f"| {name:<30} | {ms:8.3f} | {ratio:11.2f}x |")


if __name__ == "__main__":
    main()
