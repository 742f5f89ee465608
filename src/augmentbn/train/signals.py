"""SIGTERM (what job schedulers send) handled like Ctrl-C: raised as an exception, so that the
run stops between two Python operations, ``finally`` blocks run and no temporary file is left.

Neither writes a checkpoint: ``last.pt`` keeps the end of the last finished epoch, from which
``--resume`` continues exactly as if nothing had happened (as after ``kill -9``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "sigterm_raises"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise(signum, frame) -> None:
    raise Terminated("terminated by SIGTERM")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (main thread only; elsewhere signal
    handlers cannot be set and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
