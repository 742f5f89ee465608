"""Checkpoints written atomically (temporary file, then rename) and read safely (tensors and plain
data only), with every RNG state they need for an exact resume.

A checkpoint holds only tensors and plain Python data (dict, list, tuple, str, int, float, bool,
None), so :func:`load_checkpoint` reads it with ``torch.load(..., weights_only=True)``: opening a
file never runs code from it. NumPy's generator state is therefore stored as a dict of lists.
"""

from __future__ import annotations

import errno
import io
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "OutputError",
    "atomic_write",
    "capture_rng",
    "describe_os_error",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "augmentbn-checkpoint-2"
"""Version 2 holds plain data only (version 1 held NumPy arrays, which a safe load refuses)."""

REQUIRED_KEYS = ("config", "epoch", "model")
"""What every checkpoint holds; a resumable one also holds :data:`RESUME_KEYS`."""
RESUME_KEYS = ("optimizer", "scheduler", "history", "best", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


class OutputError(RuntimeError):
    """A run's output could not be written (no space, read-only, no permission); the message
    names the path and says that the previous file is unchanged."""


_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on the device: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a folder on a writable one",
    errno.EACCES: "permission denied: choose a folder you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you may write to",
}


def describe_os_error(error: OSError) -> str:
    """What an ``OSError`` means for the user, e.g. ``"no space left on the device: ..."``."""
    if error.errno in _ERRNO_WORDS:
        return f"{_ERRNO_WORDS[error.errno]} [{errno.errorcode[error.errno]}]"
    return f"{error.strerror or error} [{errno.errorcode.get(error.errno or 0, 'OSError')}]"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader sees the old file or the new one, never half of one. An ``OSError`` (full disk,
    read-only file system, no permission) becomes an :class:`OutputError` naming ``path``; the
    previous file is left as it was.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _output_error(path, error, existed) from error
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _output_error(path, error, existed) from error
        raise


def _output_error(path: Path, error: OSError, existed: bool) -> OutputError:
    kept = f"the previous {path.name} is unchanged" if existed else "nothing was written"
    return OutputError(f"cannot write {path}: {describe_os_error(error)}; {kept}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically. It is serialized in memory first, so that a full disk shows
    as an ``OSError`` of the file write (an :class:`OutputError`), not as torch's zip error."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_checkpoint(path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``);
    ``resume=True`` also requires what continuing the run needs. A clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {describe_os_error(error)}") from error
    except Exception as error:  # pickle, zip or torch errors
        message = str(error)
        refused = re.search(r"GLOBAL ([\w.]+)", message)
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: it asks to call {refused.group(1)}, and a checkpoint "
                "may hold only tensors and plain data (anything else could run code when the "
                f"file is opened). augmentbn's checkpoints (format '{FORMAT}') hold nothing "
                "else; older ones and other tools' files may. Load it with "
                "torch.load(path, weights_only=False) only if you trust where it came from"
            ) from error
        reason = message.partition("WeightsUnpickler error:")[2].strip() or message
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(error).__name__}: "
            f"{reason.splitlines()[0] if reason else ''}. The file is damaged or not a torch "
            "checkpoint"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an augmentbn training checkpoint (no '{FORMAT}' marker); "
            "a plain state dict can be loaded with "
            "model.load_state_dict(torch.load(path, weights_only=True))"
        )
    missing = [k for k in (*REQUIRED_KEYS, *(RESUME_KEYS if resume else ())) if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is damaged")
    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state dict of tensors")
    if not isinstance(state["config"], dict):
        raise CheckpointError(
            f"checkpoint {path}: 'config' is a {type(state['config']).__name__}, not a mapping"
        )
    if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool):
        raise CheckpointError(f"checkpoint {path}: 'epoch' is {state['epoch']!r}, not an integer")
    return state


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators and of ``generators``, as
    tensors and plain data."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    state = {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
