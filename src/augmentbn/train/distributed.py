"""The engine's view of a distributed run (``torchrun --nproc_per_node N -m augmentbn train``).

One process per device; :func:`launch` initializes the process group from torchrun's environment
(NCCL on CUDA, gloo on the CPU) and :class:`DistContext` is what the engine asks: its rank, its
share of each batch, how to wrap the model (``DistributedDataParallel`` over the synchronized
layers of :func:`augmentbn.convert_sync_norm`), and the few collectives the loop needs. The rules:

- ``--train-batch`` is the global batch: each process takes ``train_batch / world_size`` images
  of every batch of one seeded order (:mod:`augmentbn.data.shard`), and the per-process losses
  are scaled so that the gradients are those of one process on the whole batch;
- evaluation deals whole batches round-robin and gathers the logits in order, so every image is
  seen once and ``metrics.json`` does not depend on the world size;
- only rank 0 touches the output folder; what it reads (a checkpoint, a finished run) reaches the
  others by broadcast, and an error it meets there is raised on every rank;
- a process that dies stops the others at their next collective (gloo: at once; NCCL and hung
  processes: after ``$AUGMENTBN_DIST_TIMEOUT`` seconds, 45 by default) with a :class:`RunError`.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed as groups
from .config import ConfigError

__all__ = ["DistContext", "is_shared", "launch", "mark_shared", "release", "should_report"]

T = TypeVar("T")
CONTROL_TIMEOUT = datetime.timedelta(hours=2)
"""How long the others wait while rank 0 alone works (a download, reading a checkpoint). A rank
that dies still stops them at once: gloo notices the closed connection."""
_SHARED = "_augmentbn_every_rank"  # an error every rank raises alike: rank 0 reports it
_COLLECTIVE_FAILURES = ("gloo", "nccl", "connection closed", "connection reset", "timed out")


def mark_shared(error: BaseException) -> BaseException:
    """Mark ``error`` as raised alike by every rank, so that only rank 0 prints it."""
    setattr(error, _SHARED, True)
    return error


def is_shared(error: BaseException) -> bool:
    return getattr(error, _SHARED, False)


def should_report(error: BaseException) -> bool:
    """Whether this process prints ``error``: rank 0 always; the others for their own errors."""
    return int(os.environ.get("RANK", "0")) == 0 or not is_shared(error)


@dataclass(frozen=True)
class DistContext:
    """A process's place in the run; the default is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = field(default=None, repr=False, compare=False)  # a gloo group, long timeout

    @classmethod
    def current(cls) -> DistContext:
        """The context of the initialized default process group (one process without one)."""
        if groups.group_size() <= 1:
            return cls()
        global _CURRENT
        world = dist.group.WORLD
        if _CURRENT is None or _CURRENT[0] is not world:
            control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            context = cls(dist.get_rank(), dist.get_world_size(), local, control)
            _CURRENT = (world, context)
        return _CURRENT[1]

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- before training -------------------------------------------------------------------

    def check_batch(self, train_batch: int) -> None:
        """The global batch must split evenly across the processes."""
        if train_batch % self.world_size:
            low = train_batch - train_batch % self.world_size
            options = " or ".join(str(b) for b in (low, low + self.world_size) if b > 0)
            raise mark_shared(
                ConfigError(
                    f"--train-batch {train_batch} is the global batch and must divide evenly "
                    f"across the {self.world_size} processes; use a multiple of "
                    f"{self.world_size} (e.g. {options})"
                )
            )

    def share(self, train_batch: int, test_batch: int) -> str:
        """The line printed at the start of a distributed run."""
        backend = dist.get_backend() if self.enabled else "none"
        return (
            f"distributed: {self.world_size} processes ({backend}); global train batch "
            f"{train_batch} = {train_batch // self.world_size} per process; evaluation batches "
            f"of {test_batch} dealt round-robin"
        )

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: ``cuda`` means ``cuda:<local rank>``."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def check_resume(self, state: dict[str, Any], path) -> None:
        saved = int(state.get("world_size", 1))
        if saved != self.world_size:
            raise mark_shared(
                ConfigError(
                    f"{path} was written by a run of {saved} process(es) and this run has "
                    f"{self.world_size}; resume with the same number of processes "
                    f"(torchrun --nproc_per_node {saved} ...), or start a new run with --overwrite"
                )
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (its normalization layers must already be
        synchronized: their running statistics agree, so buffers are not broadcast)."""
        if not self.enabled:
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        names = inspect.signature(ddp.__init__).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"
        return ddp(model, device_ids=ids, **{no_sync: False})

    # -- rank 0 alone --------------------------------------------------------------------------

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 and its result (or its error) shared with every rank."""
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = (True, fn())
            except Exception as error:
                payload[0] = (False, _picklable(error))
        dist.broadcast_object_list(payload, src=0, group=self.control)
        ok, value = payload[0]
        if not ok:
            raise mark_shared(value)
        return value

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the others (e.g. a download into a shared folder)."""
        if not self.enabled:
            return fn()
        if self.is_main:
            results: list[T] = []
            self.from_main(lambda: results.append(fn()))  # shares only success or the error
            return results[0]
        self.from_main(lambda: None)  # waits for rank 0
        return fn()

    # -- the loops -------------------------------------------------------------------------------

    def global_mean_loss(self, loss_sum: Tensor, count: int) -> tuple[Tensor, float]:
        """``(loss to backpropagate, whole-batch mean loss)`` from this rank's summed loss
        over ``count`` elements: scaled by ``world_size / total count``, DDP's average of the
        ranks' gradients is the gradient of the whole batch's mean loss."""
        totals = torch.stack(
            (loss_sum.detach().double(), loss_sum.new_tensor(count, dtype=torch.float64))
        )
        dist.all_reduce(totals)
        total, elements = totals.tolist()
        return loss_sum * (self.world_size / elements), total / elements

    def sum(self, *values: float) -> list[float]:
        """The sums over the ranks of ``values``."""
        if not self.enabled:
            return list(values)
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else None
        totals = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        return totals.tolist()

    def gather_batches(self, batches: list[T]) -> list[T]:
        """Every rank's evaluation batches (dealt round-robin) in their single-process order."""
        if not self.enabled:
            return batches
        shares: list[Any] = [None] * self.world_size
        dist.all_gather_object(shares, batches, group=self.control)
        total = sum(len(s) for s in shares)
        return [shares[b % self.world_size][b // self.world_size] for b in range(total)]


_CURRENT: tuple[Any, DistContext] | None = None
_KEPT = False  # launch() left the group up for release()


def _picklable(error: Exception) -> Exception:
    """``error``, or a RunError with its text where it cannot travel to the other ranks."""
    try:
        pickle.dumps(error)
    except Exception:
        from .engine import RunError

        return RunError(f"{type(error).__name__}: {error}")
    return error


def _collective_failure(error: BaseException) -> bool:
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(s in text for s in _COLLECTIVE_FAILURES)


@contextlib.contextmanager
def launch(device: torch.device) -> Iterator[DistContext]:
    """The process group of torchrun's environment for the duration of a command (nothing
    without ``WORLD_SIZE`` above 1): yields the :class:`DistContext`; a failed collective (a
    process that died or hangs) becomes a :class:`RunError` naming this rank.

    After an error every rank raised alike (:func:`mark_shared`), the group stays up until the
    caller has reported it and called :func:`release`, so that no rank exits (and has torchrun
    stop the others) before rank 0 has printed the message."""
    from .engine import RunError

    rank = int(os.environ.get("RANK", "0"))
    existing = groups.is_initialized()
    try:
        active = groups.init_from_environment(device)
    except (RuntimeError, ValueError, TimeoutError) as error:
        raise RunError(
            f"rank {rank}: cannot join the distributed run ({type(error).__name__}: {error}); "
            "start it with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        ) from error
    keep = False
    try:
        yield DistContext.current()
    except Exception as error:
        if not active:
            raise
        if is_shared(error):
            global _KEPT
            keep = _KEPT = not existing
            raise
        if not _collective_failure(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(
            f"rank {rank}: the distributed run failed ({first}); another process has probably "
            "stopped or hangs (see its output). last.pt, once written, holds the last finished "
            "epoch: resume with --resume and the same number of processes"
        ) from error
    finally:
        if active and not existing and not keep:
            _shutdown()


def release(error: BaseException) -> None:
    """After :func:`launch` let ``error`` through: wait until every rank has reported it (rank 0
    first), then end the process group."""
    global _KEPT
    if not (_KEPT and is_shared(error) and groups.is_initialized()):
        return
    _KEPT = False
    with contextlib.suppress(Exception):
        dist.barrier()
    _shutdown()


def _shutdown() -> None:
    global _CURRENT
    _CURRENT = None
    dist.destroy_process_group()
