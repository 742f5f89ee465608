"""What the benchmark scripts share: arguments, interleaved timing, tables, the machine line."""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

# The reference implementations (tests/reference.py) are the baselines of the layer benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and one repeat: checks that the script runs",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=25,
        help="interleaved repeats; the median is reported (default 25)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for CPU runs (default: torch's choice)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: CPU time of this process, "
        "robust to other processes' load on a shared CPU machine",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    clock: str = "wall",
    inner: int = 1,
    warmup: int = 2,
) -> dict[str, float]:
    """Median milliseconds per call of each function.

    Every repeat runs every function ``inner`` times, in a fresh random order, so that a burst of
    load on a shared machine hits all of them alike. ``clock="cpu"`` counts this process's CPU
    time instead of elapsed time (CPU runs only)."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            start = timer()
            for _ in range(inner):
                fn()
            _sync(device)
            samples[name].append((timer() - start) * 1e3 / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(device: torch.device, repeats: int, clock: str) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"torch {torch.__version__}, {device.type} ({where}), {clock} clock, {repeats} "
        f"interleaved repeats, medians; load average at the end: {load}"
    )
