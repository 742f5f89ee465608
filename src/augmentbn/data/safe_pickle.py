"""Reading pickles that hold only plain data (CIFAR's python batches) without running code.

``pickle.load`` calls whatever callable a file names, so a planted file can run anything. The
:class:`PlainUnpickler` here resolves only a fixed allowlist: NumPy's array and dtype
constructors (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``, under their NumPy 1 and
2 module names) and ``_codecs.encode`` with latin-1 (how Python 3 pickles bytes with protocol 2).
Every other name is refused, and object arrays, whose items could be anything, are refused too.
Dicts, lists, tuples, strings, bytes, numbers, booleans and ``None`` need no name.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

import numpy as np

__all__ = ["PlainUnpickler", "load_plain"]


def _plain_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array: only plain numbers are allowed")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build a {subtype!r}: only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    return _plain_dtype(np.dtype(spec, align, copy))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=_plain_dtype(dtype))
    return array.reshape(shape, order=order if order in ("C", "F") else "C")


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin-1")


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(f"{m}.multiarray", "_reconstruct"): _reconstruct for m in ("numpy.core", "numpy._core")},
    **{(f"{m}.numeric", "_frombuffer"): _frombuffer for m in ("numpy.core", "numpy._core")},
}


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and NumPy number arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a data file may hold only plain data and NumPy "
                "arrays, and this one asks to call other code (it may be malicious)"
            ) from None


def load_plain(file: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(file, encoding=encoding)`` restricted to plain data (see the module)."""
    return PlainUnpickler(file, encoding=encoding).load()
