"""Fixtures shared by the test modules."""

import os

import pytest

from augmentbn import _cpu_ops


@pytest.fixture(params=["compiled", "python"])
def implementation(request, monkeypatch):
    """Run a test on each implementation of the layers: the compiled CPU operators, and the
    PyTorch one that every other device, dtype and layout takes (``augmentbn._cpu_ops``)."""
    if request.param == "python":
        monkeypatch.setitem(_cpu_ops._state, "ok", False)
    elif not _cpu_ops.available():
        pytest.skip("the compiled CPU operators could not be built on this machine")
    return request.param


try:  # property tests: the same examples on every CI run; fresh ones on a developer's
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis comes with the dev extra
    pass
