"""Which batches of an epoch a process loads when ``world_size`` processes share it.

An epoch is one sequence of positions ``0..count-1`` in the epoch's order (one seeded
permutation, the same in every process and at any world size), cut into batches of
``batch_size``:

- in training, ``batch_size`` is the global batch: every batch is cut into ``world_size``
  contiguous slices (sizes differing by at most one, the first ranks taking the larger), and a
  process takes its slice of every batch. A final batch with fewer items than processes cannot
  be shared and is dropped;
- in evaluation, whole batches are dealt round-robin (batch ``b`` to rank ``b mod world_size``),
  so that every item is seen exactly once, in the batch it has in one process.
"""

from __future__ import annotations

import math

__all__ = ["batch_plan", "check_shard"]


def check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")


def batch_plan(
    count: int,
    batch_size: int,
    *,
    train: bool,
    drop_last: bool,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[int, int]]:
    """The ``[start, stop)`` position ranges of this process's batches, in order."""
    check_shard(rank, world_size)
    batches = count // batch_size if drop_last else math.ceil(count / batch_size)
    ranges = [(b * batch_size, min((b + 1) * batch_size, count)) for b in range(batches)]
    if world_size == 1:
        return ranges
    if not train:
        return ranges[rank::world_size]
    plan = []
    for lo, hi in ranges:
        if hi - lo < world_size:
            continue
        share, extra = divmod(hi - lo, world_size)
        start = lo + rank * share + min(rank, extra)
        plan.append((start, start + share + (rank < extra)))
    return plan
