"""The compiled CPU operators (``csrc/cpu_ops.cpp``): built on first use, optional.

They run the layers' forward and backward (NABN in training, IEBN always) with the per-channel
algebra in C++, which at small batches is most of a Python layer's cost (BENCHMARKS.md). The
first call on a machine compiles them with ``torch.utils.cpp_extension`` (20-30 s; cached in
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Without a C++ compiler or
``ninja``, or with ``AUGMENTBN_CPU_OPS=0`` in the environment, the layers use their PyTorch
implementation in :mod:`augmentbn.functional`, with the same results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "disabled", "usable"]

ENV_VAR = "AUGMENTBN_CPU_OPS"
SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_ops.cpp"
_DTYPES = (torch.float32, torch.float64)
_log = logging.getLogger(__name__)
_state: dict[str, bool] = {}


def _build() -> None:
    """Compile and load the operators into ``torch.ops.augmentbn``; raises on failure."""
    # torch.utils.cpp_extension logs a warning about CUDA at import on machines without it.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_log.setLevel(level)
    try:  # pip's ninja puts its binary beside its package, not necessarily on PATH
        import ninja

        path = os.environ.get("PATH", "")
        if ninja.BIN_DIR not in path.split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    except ImportError:
        pass
    _log.info("augmentbn: loading the CPU operators (compiled on first use, 20-30 s)")
    cpp_extension.load(
        name="augmentbn_cpu_ops",
        sources=[str(SOURCE)],
        **_compiler_flags(),
        is_python_module=False,
        verbose=False,
    )


def _compiler_flags() -> dict[str, list[str]]:
    """Optimization, and OpenMP for ``at::parallel_for`` where torch itself uses it: on Linux,
    ``-fopenmp`` links ``libgomp.so.1``, the runtime torch has already loaded. Apple's clang has
    no OpenMP; there the rows are summed on one thread. (Built and tested on Linux with GCC.)"""
    if sys.platform == "win32":
        return {"extra_cflags": ["/O2", "/openmp"]}
    if sys.platform == "darwin":
        return {"extra_cflags": ["-O3"]}
    return {"extra_cflags": ["-O3", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}


def _reason(message: str, limit: int = 400) -> str:
    """The telling part of a build error: the compiler's first ``error:`` lines, else its end."""
    lines = message.strip().splitlines()
    errors = [line.strip() for line in lines if ": error" in line or "error:" in line]
    return " ".join(errors[:2] or lines[-3:])[-limit:]


def available() -> bool:
    """Whether the compiled operators are loaded, building them on the first call.

    A failed build warns once, naming the fix, and the layers go on in PyTorch."""
    if "ok" not in _state:
        if os.environ.get(ENV_VAR, "1") == "0":
            _state["ok"] = False
        else:
            try:
                _build()
                _state["ok"] = hasattr(torch.ops.augmentbn, "augment_batch_norm_train")
            except Exception as error:  # a compiler's, ninja's or the loader's error
                _state["ok"] = False
                warnings.warn(
                    "augmentbn: could not build the compiled CPU operators "
                    f"({type(error).__name__}: {_reason(str(error))}). The layers run "
                    "their PyTorch implementation instead: the same results, slower at small "
                    "batches. To build them, install a C++ compiler and `pip install ninja`; "
                    f"to skip them without this warning, set {ENV_VAR}=0.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["ok"]


def usable(input: Tensor, *tensors: Tensor | None) -> bool:
    """Whether a layer's call on ``input`` with these parameters and buffers can take the
    compiled operators: contiguous float32 or float64 tensors on the CPU, all of one dtype, a
    non-empty input, outside ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` (a
    recorded graph must not depend on the operators being loaded), with the operators built."""
    if (
        type(input) is not Tensor
        or not input.is_cpu
        or input.dtype not in _DTYPES
        or not input.is_contiguous()
        or input.numel() == 0
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    ):
        return False
    dtype = input.dtype
    for t in tensors:
        if t is not None and (t.dtype != dtype or not t.is_cpu or not t.is_contiguous()):
            return False
    return available()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, the layers take their PyTorch implementation (for comparisons and
    debugging; a backward pass follows its forward pass)."""
    previous = _state.get("ok")
    _state["ok"] = False
    try:
        yield
    finally:
        if previous is None:
            del _state["ok"]
        else:
            _state["ok"] = previous
