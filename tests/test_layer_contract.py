"""One contract for every implementation of the layers, on a table of hard inputs.

The implementations: the compiled CPU operators, the PyTorch implementation (the operators
turned off) and the Jittor backend. Each runs NABN (every noise type, with a given mean shift)
and IEBN for two training steps on inputs chosen to break naive statistics: means up to 10⁴
times the spread, a constant channel, two values per channel, 1d/2d/3d inputs, ``affine=False``,
``track_running_stats=False`` and ``momentum=None``. Outputs, every gradient and the running
statistics are compared with the one float64 reference (``reference.py``):

- in float32, within twice the error of ``nn.BatchNorm``'s own float32 on the same input
  (against its own float64) and of the reference's own float32, with a floor of 1e-6,
  relative to the largest reference value; where the shifted mean is large against the
  spread it normalizes by, float32 cannot hold ``x - μ'`` more exactly than its unit roundoff
  ``u`` times ``|μ'|/sqrt(v' + ε)`` (``nn.BatchNorm`` has the same on ``|μ|/σ``, but not NABN's
  ``|μ'| = |μ + δ|`` on a constant channel, nor IEBN's gate on a constant channel, where its
  elementwise kernel rounds ``μ·γ a s``), so the floor is at least ``2u`` times that;
- in float64, within 1e-10 for PyTorch, and Jittor's documented float64 limit
  (:data:`JITTOR_FLOAT64_TOLERANCE`).

gaussian_reject channels whose ``v' = mean(x²) - μ'²`` lies within 1e-3·mean(x²) of the clamp at
0 can flip branch by rounding: there only finiteness is checked.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from reference import iebn_reference, nabn_reference
from torch import nn

from augmentbn import _cpu_ops
from augmentbn.methods import get_method

IMPLEMENTATIONS = ["compiled", "pytorch", "jittor"]
METHODS = ["gaussian_clip", "gaussian_reject", "uniform", "iebn"]
C = 3
FLOAT32_FLOOR = 1e-6
FLOAT64_TOLERANCE = 1e-10
UNIT_ROUNDOFF = 2.0**-24  # float32
UNIT_ROUNDOFF = 2.0**-24  # float32
JITTOR_FLOAT64_TOLERANCE = 1e-7
"""Jittor's float64 limit: it computes float64 Vars in float64, but makes float32 constants of
Python floats (``eps``, ``momentum``, the 2 of ``2μ``), which costs about 1e-8 (measured: at
most 1.5e-8 on this table)."""


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    offsets: tuple[float, ...] = (0.0, 0.0, 0.0)
    scales: tuple[float, ...] = (1.0, 1.0, 1.0)
    layer: dict = field(default_factory=dict)


CASES = [
    Case("offset-1e4", (4, C, 5, 6), offsets=(1e4, -3e3, 0.5)),
    Case("offset-1e2-3d", (2, C, 3, 4, 5), offsets=(100.0, -250.0, 10.0), scales=(1.0, 2.0, 0.1)),
    Case("constant-channel", (4, C, 3, 3), offsets=(7.0, 0.0, -2.0), scales=(0.0, 1.0, 1.0)),
    Case("two-values-per-channel", (2, C)),
    Case("1d-sequence", (3, C, 7), offsets=(50.0, 0.0, -1.0)),
    Case("affine-false", (4, C, 3, 4), offsets=(3.0, 0.0, 0.0), layer={"affine": False}),
    Case("untracked", (4, C, 3, 4), layer={"track_running_stats": False}),
    Case("momentum-none", (4, C, 2, 3), offsets=(20.0, 0.0, 1.0), layer={"momentum": None}),
]
MEAN_SHIFT = (0.2, -0.15, 0.05)


def _inputs(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    view = (1, C, *([1] * (len(case.shape) - 2)))
    offsets, scales = np.reshape(case.offsets, view), np.reshape(case.scales, view)
    first = offsets + scales * rng.standard_normal(case.shape)
    second = offsets + scales * rng.standard_normal(case.shape) + 0.3 * np.reshape(scales, view)
    return [first, second]


def _params(method: str) -> dict[str, np.ndarray]:
    k = np.arange(C, dtype=np.float64)
    params = {"weight": 1.0 + 0.25 * k, "bias": 0.1 * k - 0.05}
    if method == "iebn":
        params |= {"weight_readjust": 0.3 - 0.2 * k, "bias_readjust": -0.5 + 0.1 * k}
    return params


def _layer_kwargs(method: str, case: Case) -> dict:
    kwargs = dict(case.layer)
    if method != "iebn":
        kwargs["noise"] = method
    return kwargs


# --------------------------------------------------------------------------------------------
# The float64 reference, and nn.BatchNorm's own float32 error
# --------------------------------------------------------------------------------------------


def _reference(method: str, case: Case, dtype=torch.float64) -> dict[str, np.ndarray]:
    """Outputs and gradients of the last step, running statistics after both steps."""
    momentum = case.layer.get("momentum", 0.1)
    tracked = case.layer.get("track_running_stats", True)
    affine = case.layer.get("affine", True)
    running_mean, running_var = np.zeros(C), np.ones(C)
    params = {
        k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in _params(method).items()
    }
    if not affine:
        params["weight"] = params["bias"] = None
    for step, array in enumerate(_inputs(case), start=1):
        x = torch.tensor(array, dtype=dtype, requires_grad=True)
        if method == "iebn":
            y = iebn_reference(
                x,
                params["weight"],
                params["bias"],
                params["weight_readjust"],
                params["bias_readjust"],
            )
            dims = [0, *range(2, x.dim())]
            count = x.numel() // C
            stats = (x.mean(dims), x.var(dims, unbiased=False) * count / (count - 1))
        else:
            shift = torch.tensor(MEAN_SHIFT, dtype=dtype)
            y, _, _, shifted, v = nabn_reference(x, params["weight"], params["bias"], shift, method)
            stats = (shifted, v)
        m = 1.0 / step if momentum is None else momentum
        running_mean = (1 - m) * running_mean + m * stats[0].detach().double().numpy()
        running_var = (1 - m) * running_var + m * stats[1].detach().double().numpy()
    grad = torch.tensor(np.random.default_rng(1).standard_normal(x.shape), dtype=dtype)
    y.backward(grad)
    result = {"output": y, "input.grad": x.grad}
    result |= {f"{k}.grad": p.grad for k, p in params.items() if p is not None}
    result = {k: v.detach().double().numpy() for k, v in result.items()}
    if tracked:
        result |= {"running_mean": running_mean, "running_var": running_var}
    return result


_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batch_norm_errors(case: Case) -> dict[str, float]:
    """``nn.BatchNorm``'s float32 error against its own float64, per quantity, on the case."""
    results = {}
    for dtype in (torch.float32, torch.float64):
        layer = _BATCH_NORM[len(case.shape)](C, **case.layer).to(dtype)
        with torch.no_grad():
            if layer.affine:
                layer.weight.copy_(torch.tensor(_params("bn")["weight"]))
                layer.bias.copy_(torch.tensor(_params("bn")["bias"]))
        for array in _inputs(case):
            x = torch.tensor(array, dtype=dtype, requires_grad=True)
            y = layer(x)
        y.backward(torch.tensor(np.random.default_rng(1).standard_normal(x.shape), dtype=dtype))
        out = {"output": y, "input.grad": x.grad}
        if layer.affine:
            out |= {"weight.grad": layer.weight.grad, "bias.grad": layer.bias.grad}
        if layer.track_running_stats:
            out |= {"running_mean": layer.running_mean, "running_var": layer.running_var}
        results[dtype] = {k: v.detach().double().numpy() for k, v in out.items()}
    return {
        k: _relative_error(results[torch.float32][k], results[torch.float64][k])
        for k in results[torch.float64]
    }


def _reference_float32_errors(method, case, expected) -> dict[str, float]:
    """The reference's own float32 error against its float64, per quantity."""
    ref32 = _reference(method, case, dtype=torch.float32)
    return {k: _relative_error(ref32[k], v) for k, v in expected.items()}


def _conditioning(method: str, case: Case, channels: np.ndarray) -> float:
    """``max |μ'|/sqrt(v' + ε)`` over the compared channels and both steps (``δ = 0`` for IEBN)."""
    worst = 0.0
    shift = np.zeros(C) if method == "iebn" else np.array(MEAN_SHIFT)
    for array in _inputs(case):
        dims = tuple(d for d in range(array.ndim) if d != 1)
        mean, var = array.mean(dims), array.var(dims)
        shifted = mean + shift
        if method == "gaussian_reject":
            used = np.maximum((array * array).mean(dims) - shifted**2, 0.0)
        else:
            used = var + shift**2
        ratio = np.abs(shifted) / np.sqrt(used + 1e-5)
        worst = max(worst, float(ratio[channels].max(initial=0.0)))
    return worst


def _relative_error(actual: np.ndarray, expected: np.ndarray, mask=None) -> float:
    if mask is not None:
        actual, expected = actual[..., mask], expected[..., mask]
    if expected.size == 0:
        return 0.0
    scale = max(float(np.abs(expected).max()), 1e-30)
    return float(np.abs(actual - expected).max()) / scale


# --------------------------------------------------------------------------------------------
# The implementations
# --------------------------------------------------------------------------------------------


def _run_torch(method, case, dtype) -> dict[str, np.ndarray]:
    spec = get_method("iebn" if method == "iebn" else "nabn")
    dims = max(len(case.shape) - 2, 1)
    layer = spec.layer_class("torch", dims)(C, **_layer_kwargs(method, case)).to(dtype)
    with torch.no_grad():
        for name, value in _params(method).items():
            if getattr(layer, name, None) is not None:
                getattr(layer, name).copy_(torch.tensor(value))
    extra = {} if method == "iebn" else {"mean_shift": torch.tensor(MEAN_SHIFT, dtype=dtype)}
    for array in _inputs(case):
        x = torch.tensor(array, dtype=dtype, requires_grad=True)
        layer.zero_grad()
        y = layer(x, **extra)
    y.backward(torch.tensor(np.random.default_rng(1).standard_normal(x.shape), dtype=dtype))
    out = {"output": y, "input.grad": x.grad}
    out |= {f"{n}.grad": p.grad for n, p in layer.named_parameters()}
    if layer.track_running_stats:
        out |= {"running_mean": layer.running_mean, "running_var": layer.running_var}
    return {k: v.detach().double().numpy() for k, v in out.items()}


def _run_jittor(method, case, dtype) -> dict[str, np.ndarray]:
    jt = importlib.import_module("jittor")
    spec = get_method("iebn" if method == "iebn" else "nabn")
    dims = max(len(case.shape) - 2, 1)
    name = "float32" if dtype == torch.float32 else "float64"
    layer = spec.layer_class("jittor", dims)(C, dtype=name, **_layer_kwargs(method, case))
    for param, value in _params(method).items():
        if getattr(layer, param, None) is not None:
            getattr(layer, param).update(jt.array(value, dtype=name))
    extra = {} if method == "iebn" else {"mean_shift": jt.array(np.array(MEAN_SHIFT), dtype=name)}
    for array in _inputs(case):
        x = jt.array(array, dtype=name)
        y = layer(x, **extra)
    grad = jt.array(np.random.default_rng(1).standard_normal(case.shape), dtype=name)
    params = [p for p in ("weight", "bias", "weight_readjust", "bias_readjust")]
    params = [p for p in params if getattr(layer, p, None) is not None]
    grads = jt.grad((y * grad).sum(), [x, *(getattr(layer, p) for p in params)])
    out = {"output": y, "input.grad": grads[0]}
    out |= {f"{p}.grad": g for p, g in zip(params, grads[1:], strict=True)}
    if layer.track_running_stats:
        out |= {"running_mean": layer.running_mean, "running_var": layer.running_var}
    return {k: v.numpy().astype(np.float64) for k, v in out.items()}


def _run(implementation, method, case, dtype):
    if implementation == "jittor":
        return _run_jittor(method, case, dtype)
    if implementation == "pytorch":
        with _cpu_ops.disabled():
            return _run_torch(method, case, dtype)
    return _run_torch(method, case, dtype)


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    if request.param == "compiled" and not _cpu_ops.available():
        pytest.skip("the compiled CPU operators could not be built here")
    if request.param == "jittor":
        if importlib.util.find_spec("jittor") is None:
            pytest.skip("Jittor is not installed; pip install 'augmentbn[jittor]'")
        importlib.import_module("augmentbn.jittor")  # its CPU defaults precede Jittor's import
    return request.param


def _near_clamp_channels(method: str, case: Case) -> np.ndarray:
    """gaussian_reject channels whose ``v'`` lies within 1e-3·mean(x²) of 0 in some step."""
    near = np.zeros(C, dtype=bool)
    if method != "gaussian_reject":
        return near
    for array in _inputs(case):
        dims = tuple(d for d in range(array.ndim) if d != 1)
        mean, sq = array.mean(dims), (array * array).mean(dims)
        raw = sq - (mean + np.array(MEAN_SHIFT)) ** 2
        near |= np.abs(raw) < 1e-3 * sq
    return near


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_contract(implementation, method, case, dtype):
    expected = _reference(method, case)
    actual = _run(implementation, method, case, dtype)
    assert set(actual) == set(expected)
    near = _near_clamp_channels(method, case)
    if dtype == torch.float64:
        limit = JITTOR_FLOAT64_TOLERANCE if implementation == "jittor" else FLOAT64_TOLERANCE
        tolerance = dict.fromkeys(expected, limit)
    else:
        bn = _batch_norm_errors(case)
        ref32 = _reference_float32_errors(method, case, expected)
        floor = max(FLOAT32_FLOOR, 2 * UNIT_ROUNDOFF * _conditioning(method, case, ~near))
        tolerance = {k: max(2 * bn.get(k, 0.0), 2 * ref32[k], floor) for k in expected}
    for key, reference in expected.items():
        assert np.isfinite(actual[key]).all(), f"{implementation} {method}: {key} not finite"
        error = _relative_error(_channels_last(actual[key]), _channels_last(reference), ~near)
        assert error <= tolerance[key], (
            f"{implementation} {method} {case.name} {dtype}: {key} error {error:.3g} > "
            f"{tolerance[key]:.3g}"
        )


def _channels_last(a: np.ndarray) -> np.ndarray:
    """Per-channel values (``(C,)``) as they are; ``(N, C, *S)`` with the channels last."""
    return a if a.ndim == 1 else np.moveaxis(a, 1, -1)


# --------------------------------------------------------------------------------------------
# Checks before state
# --------------------------------------------------------------------------------------------

BAD_CALLS = {
    "wrong-rank": ((4, C, 5), None),
    "wrong-channels": ((4, C + 1, 2, 2), None),
    "one-value-per-channel": ((1, C, 1, 1), None),
    "mean-shift-shape": ((4, C, 2, 2), np.zeros(C + 1)),
    "mean-shift-2d": ((4, C, 2, 2), np.zeros((1, C))),
}


def _state(layer, implementation) -> dict[str, np.ndarray]:
    if implementation == "jittor":
        names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return {n: getattr(layer, n).numpy().copy() for n in names}
    return {k: v.detach().clone().numpy() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("method", ["gaussian_clip", "iebn"])
@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_bad_input_changes_no_buffer_or_counter(implementation, method, bad):
    shape, mean_shift = BAD_CALLS[bad]
    if method == "iebn" and mean_shift is not None:
        pytest.skip("IEBN takes no mean shift")
    spec = get_method("iebn" if method == "iebn" else "nabn")
    backend = "jittor" if implementation == "jittor" else "torch"
    layer = spec.layer_class(backend, 2)(C, momentum=None)
    x = np.random.default_rng(0).standard_normal(shape)
    if implementation == "jittor":
        jt = importlib.import_module("jittor")
        args = (jt.array(x, dtype="float32"),)
        extra = {} if mean_shift is None else {"mean_shift": jt.array(mean_shift)}
    else:
        args = (torch.tensor(x, dtype=torch.float32),)
        extra = {} if mean_shift is None else {"mean_shift": torch.tensor(mean_shift)}
    layer(_good_input(implementation))  # one good step first: the counter and statistics move
    before = _state(layer, implementation)
    context = _cpu_ops.disabled() if implementation == "pytorch" else _NoContext()
    with context, pytest.raises(ValueError, match=_BAD_MESSAGES[bad]):
        layer(*args, **extra)
    after = _state(layer, implementation)
    for key, value in before.items():
        assert np.array_equal(value, after[key], equal_nan=True), key


_BAD_MESSAGES = {
    "wrong-rank": "expected 4D input",
    "wrong-channels": "expected 3 channels",
    "one-value-per-channel": "more than 1 value per channel",
    "mean-shift-shape": "mean_shift must have shape",
    "mean-shift-2d": "mean_shift must have shape",
}


def _good_input(implementation):
    x = np.random.default_rng(2).standard_normal((4, C, 2, 2)) + 1.0
    if implementation == "jittor":
        return importlib.import_module("jittor").array(x, dtype="float32")
    return torch.tensor(x, dtype=torch.float32)


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
