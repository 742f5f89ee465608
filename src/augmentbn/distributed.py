"""Process groups for the synchronized layers, and initialization from torchrun's environment.

The distributed rule of DESIGN.md 1.1: per-channel statistics are reduced across the group
first, and every process applies the same ``δ``, so that N processes on N shards of a batch give
what one process gives on the whole batch. :func:`gather_batch_stats` is the forward half of
that rule: one ``all_gather`` per layer of each rank's count, mean, biased variance (and ``δ``),
combined exactly as for the union of the shards (Chan, Golub & LeVeque's pairwise update)::

    n = Σ_r n_r,   μ = Σ_r n_r μ_r / n,   σ² = Σ_r n_r (σ²_r + (μ_r - μ)²) / n

Each rank's moments come from BatchNorm's own two-pass kernel, so nothing subtracts large sums
(no ``E[x²] - μ²`` cancellation in float32), and ranks with unequal or empty shards weigh by
their counts, as ``nn.SyncBatchNorm`` does.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ._stats import native_stats, stats_dtype

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "GroupStats",
    "all_gather_rows",
    "gather_batch_stats",
    "group_size",
    "init_from_environment",
    "is_initialized",
    "start_gather_batch_stats",
    "sync_group",
    "timeout",
]

TIMEOUT_ENV = "AUGMENTBN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 45.0
"""Seconds a collective waits for the other processes before it fails: a process that hangs
stops the others with an error within a minute (one that dies stops them at once)."""


def is_initialized() -> bool:
    """Whether ``torch.distributed`` is built in and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def group_size(group=None) -> int:
    """The number of processes in ``group`` (``None``: the default group); 1 without one."""
    return dist.get_world_size(group) if is_initialized() else 1


def sync_group(process_group, training: bool) -> tuple[bool, object]:
    """``(synchronize, group)``: a layer synchronizes in training mode when a process group of
    more than one process exists, as ``nn.SyncBatchNorm`` does; ``group`` is ``process_group``
    or the default group."""
    if not training or not is_initialized():
        return False, None
    group = process_group if process_group is not None else dist.group.WORLD
    return dist.get_world_size(group) > 1, group


def timeout() -> datetime.timedelta:
    """The collectives' timeout: ``$AUGMENTBN_DIST_TIMEOUT`` seconds, else 45."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init_from_environment(device: torch.device) -> bool:
    """Initialize the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for CUDA, gloo otherwise, with
    :func:`timeout`. Returns whether a group of more than one process is now initialized;
    without ``WORLD_SIZE`` above 1 (not under torchrun) nothing happens."""
    if is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout())
    return True


def all_gather_rows(row: Tensor, group, async_op: bool = False):
    """``(world, len(row))``: every rank's ``row``, in group-rank order (one collective). With
    ``async_op``, ``(rows, work)``: the rows are there after ``work.wait()``."""
    out = row.new_empty(dist.get_world_size(group) * row.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    work = gather(out, row, group=group, async_op=async_op)
    rows = out.view(-1, row.numel())
    return (rows, work) if async_op else rows


@dataclass(frozen=True)
class GroupStats:
    """Per-channel statistics of the whole group's batch, in the statistics dtype.

    ``count`` is the number of values per channel (a float64 scalar tensor), ``mean`` and ``var``
    (biased) are ``(C,)``, and ``shift`` is the first rank's ``δ`` (``None`` when none was given).
    """

    count: Tensor
    mean: Tensor
    var: Tensor
    shift: Tensor | None

    def check(self, where: str) -> None:
        """The check of ``nn.BatchNorm`` on the whole group's batch: more than one value per
        channel. Made on the CPU only, where reading the count costs no synchronization."""
        if self.count.device.type == "cpu" and self.count.item() <= 1:
            raise ValueError(
                f"{where}: expected more than 1 value per channel in training mode, got "
                f"{int(self.count.item())} across the whole process group; batch statistics "
                "need at least 2 values per channel (use a larger batch, or eval mode)"
            )

    def unbiased_var(self) -> Tensor:
        """``σ²·n/(n - 1)``, the variance ``nn.BatchNorm`` keeps in its running average."""
        return self.var * (self.count / (self.count - 1)).to(self.var.dtype)


def gather_batch_stats(input: Tensor, group, shift: Tensor | None = None) -> GroupStats:
    """The group-wide mean and biased variance of every channel of ``input`` (this rank's
    shard), and the first rank's ``shift``: one ``all_gather`` of ``(n_r, μ_r, σ²_r, δ_r)``."""
    return start_gather_batch_stats(input, group, shift)()


def start_gather_batch_stats(
    input: Tensor, group, shift: Tensor | None = None
) -> Callable[[], GroupStats]:
    """:func:`gather_batch_stats` started: the collective runs while the caller goes on, and
    calling the result waits for it and returns the statistics."""
    C = input.shape[1]
    dtype = stats_dtype(input)
    count = input.numel() // C if C else 0
    if count:
        mean, var = native_stats(input.detach())
    else:  # an empty shard weighs nothing
        mean = var = input.new_zeros(C, dtype=dtype)
    parts = [mean.new_full((1,), float(count)), mean, var]
    if shift is not None:
        parts.append(shift.to(mean))
    # float64 keeps the counts exact and the combination accurate; it is 3C + 1 numbers.
    rows, work = all_gather_rows(torch.cat(parts).to(torch.float64), group, async_op=True)

    def finish() -> GroupStats:
        work.wait()
        counts, means, variances = rows[:, :1], rows[:, 1 : C + 1], rows[:, C + 1 : 2 * C + 1]
        total = counts.sum()
        weights = counts / total.clamp(min=1)
        group_mean = (weights * means).sum(0)
        # Empty shards have zero moments and weight: they add nothing (unless the mean is not
        # finite, and then neither is the channel's variance).
        group_var = (weights * (variances + (means - group_mean).square())).sum(0)
        return GroupStats(
            count=total,
            mean=group_mean.to(dtype),
            var=group_var.to(dtype),
            shift=rows[0, 2 * C + 1 :].to(dtype) if shift is not None else None,
        )

    return finish
