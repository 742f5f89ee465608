"""Lazy import of optional dependencies, with the ``pip install`` command when one is missing."""

from __future__ import annotations

import contextlib
import importlib
import io
from types import ModuleType

__all__ = ["MissingDependencyError", "import_optional"]


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` command.

    An ``ImportError``, so ``except ImportError`` still catches it; the command line prints it
    without a traceback.
    """


def import_optional(
    module: str, *, package: str, extra: str, purpose: str, quiet: bool = False
) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming
    ``pip install 'augmentbn[extra]'``.

    ``quiet`` swallows what the module prints while it is imported (some packages print
    warnings about their own optional dependencies).
    """
    try:
        if not quiet:
            return importlib.import_module(module)
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the `{package}` package: pip install 'augmentbn[{extra}]'"
        ) from err
