"""The compiled CPU operators (``augmentbn/csrc/cpu_ops.cpp``): building, when the layers take
them, the fallback, and the accuracy of their statistics.

Their results are held to the references and to the PyTorch implementation by the tests of
``test_functional.py`` and ``test_fast_path.py``, which run on both implementations.
"""

import copy
import shutil
import warnings

import pytest
import torch

import augmentbn as ab
import augmentbn.functional as AF
from augmentbn import _cpu_ops

HAS_COMPILER = any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))
needs_ops = pytest.mark.skipif(
    not HAS_COMPILER, reason="no C++ compiler: the PyTorch implementation is the only one"
)


@needs_ops
def test_they_build_where_a_compiler_is():
    assert _cpu_ops.available()
    assert hasattr(torch.ops.augmentbn, "augment_batch_norm_train")
    assert hasattr(torch.ops.augmentbn, "ie_batch_norm")


@needs_ops
def test_usable_for_contiguous_float_cpu_tensors_of_one_dtype():
    x = torch.randn(4, 3, 5, 5)
    w = torch.ones(3)
    assert _cpu_ops.usable(x, w, None)
    assert _cpu_ops.usable(x.double(), w.double())
    assert not _cpu_ops.usable(x.bfloat16(), w)
    assert not _cpu_ops.usable(x.half(), w)
    assert not _cpu_ops.usable(x.contiguous(memory_format=torch.channels_last), w)
    assert not _cpu_ops.usable(x.transpose(2, 3), w)
    assert not _cpu_ops.usable(x, w.double())  # parameters of another dtype
    assert not _cpu_ops.usable(torch.nn.Parameter(x), w)  # a Tensor subclass


def _refuse_python_statistics(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the PyTorch implementation ran")

    for name in ("batch_moments", "instance_mean"):
        monkeypatch.setattr(AF, name, refuse)


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "layer",
    [
        ab.AugmentBatchNorm2d(3),
        ab.AugmentBatchNorm2d(3, noise="gaussian_reject"),
        ab.AugmentBatchNorm2d(3, noise="uniform", running_stats="clean", momentum=None),
        ab.IEBatchNorm2d(3),
        ab.IEBatchNorm2d(3, affine=False, track_running_stats=False),
    ],
    ids=["clip", "reject", "uniform-clean-cumulative", "iebn", "iebn-bare"],
)
def test_layers_take_them_on_contiguous_cpu_input(layer, dtype, monkeypatch):
    _refuse_python_statistics(monkeypatch)
    layer = copy.deepcopy(layer).to(dtype)
    x = torch.randn(4, 3, 5, 5, dtype=dtype, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@needs_ops
@pytest.mark.parametrize(
    "make_input",
    [
        lambda: torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last),
        lambda: torch.randn(4, 3, 5, 5, dtype=torch.bfloat16),
    ],
    ids=["channels_last", "bfloat16"],
)
def test_other_inputs_take_the_pytorch_implementation(make_input, monkeypatch):
    _refuse_python_statistics(monkeypatch)
    with pytest.raises(AssertionError, match="PyTorch implementation ran"):
        ab.AugmentBatchNorm2d(3).to(make_input().dtype)(make_input())


def test_the_environment_variable_turns_them_off(monkeypatch):
    monkeypatch.setattr(_cpu_ops, "_state", {})
    monkeypatch.setenv(_cpu_ops.ENV_VAR, "0")
    monkeypatch.setattr(_cpu_ops, "_build", lambda: pytest.fail("built despite the variable"))
    assert not _cpu_ops.available()
    assert not _cpu_ops.usable(torch.randn(2, 3, 4))


def test_a_failed_build_warns_once_and_the_layers_go_on(monkeypatch):
    def no_compiler():
        raise OSError("c++: command not found")

    monkeypatch.setattr(_cpu_ops, "_state", {})
    monkeypatch.delenv(_cpu_ops.ENV_VAR, raising=False)
    monkeypatch.setattr(_cpu_ops, "_build", no_compiler)
    layer = ab.IEBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    with pytest.warns(RuntimeWarning, match=r"command not found.*pip install ninja"):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(layer(x), y)
    assert _cpu_ops._state == {"ok": False}


@needs_ops
@pytest.mark.parametrize("offset", [0.0, 1e3, -3e4])
@pytest.mark.parametrize("shape", [(8, 5, 16, 16), (3, 5, 7, 11, 13), (16, 5, 3000)])
def test_statistics_are_accurate_far_from_zero(shape, offset):
    """Two passes (the shifted-data algorithm) keep the float32 statistics within 1e-6 of
    float64 (relative to the spread), beyond the rounding of the stored result, however large the
    mean is against the spread. With momentum 1 the running averages of a clean NABN are the
    batch mean and the unbiased variance."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([2.0, 0.5, 1.0, 3.0, 1e-2]).view(1, 5, *(1,) * (len(shape) - 2))
    x = torch.randn(shape, generator=gen) * scale + offset
    layer = {3: ab.AugmentBatchNorm1d, 4: ab.AugmentBatchNorm2d, 5: ab.AugmentBatchNorm3d}
    nabn = layer[len(shape)](5, momentum=1.0, running_stats="clean")
    nabn(x, torch.zeros(5))
    dims = [d for d in range(x.dim()) if d != 1]
    mean, var = x.double().mean(dims), x.double().var(dims)
    rounding = torch.finfo(torch.float32).eps
    mean_error = (nabn.running_mean.double() - mean).abs()
    assert (mean_error <= rounding * mean.abs() + 1e-6 * var.sqrt()).all()
    var_error = (nabn.running_var.double() - var).abs()
    assert (var_error <= (rounding + 1e-6) * var).all()


@needs_ops
@pytest.mark.parametrize("layer", [ab.AugmentBatchNorm2d(8, momentum=1.0), ab.IEBatchNorm2d(8)])
def test_results_do_not_depend_on_the_thread_count(layer):
    """Rows are summed in parallel, channels reduced in order: bit-identical results."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, 64, 64, generator=gen) * 3 + 2
    grad = torch.randn(x.shape, generator=gen)
    shift = () if isinstance(layer, ab.IEBatchNorm2d) else (torch.linspace(-0.2, 0.2, 8),)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 4):
            torch.set_num_threads(count)
            net = copy.deepcopy(layer)
            x_ = x.clone().requires_grad_()
            y = net(x_, *shift)
            y.backward(grad)
            results.append([y, x_.grad, *(p.grad for p in net.parameters()), *net.buffers()])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_ops
def test_strided_parameters_take_the_pytorch_implementation():
    """The operators write running statistics through raw pointers: only contiguous ones."""
    x = torch.randn(4, 3, 5, 5)
    strided = torch.zeros(6)[::2]
    assert not _cpu_ops.usable(x, None, None, strided, torch.ones(3))
    running_mean, running_var = strided, torch.ones(6)[::2]
    AF.augment_batch_norm(
        x, running_mean, running_var, training=True, momentum=1.0, mean_shift=torch.zeros(3)
    )
    torch.testing.assert_close(running_mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(running_var, x.var((0, 2, 3), correction=0))


@needs_ops
def test_disabled_switches_them_off_within_the_block_only():
    x = torch.randn(4, 3, 5, 5)
    with _cpu_ops.disabled():
        assert not _cpu_ops.usable(x)
    assert _cpu_ops.usable(x)


@needs_ops
def test_direct_calls_with_wrong_sizes_are_refused_not_read_out_of_bounds():
    """The operators' own guard, for callers of torch.ops.augmentbn that skip functional.py."""
    x = torch.randn(4, 8, 5)
    ops = torch.ops.augmentbn
    with pytest.raises(RuntimeError, match="running_mean must have 8 values"):
        ops.augment_batch_norm_train(
            x, None, None, torch.zeros(8), torch.zeros(2), torch.ones(2), 0.1, None, 0, 0, 1e-5
        )
    with pytest.raises(RuntimeError, match="weight must have 8 values"):
        ops.ie_batch_norm(
            x, torch.ones(3), None, torch.zeros(8), torch.zeros(8), None, None, 0.1, None, 1, 1e-5
        )
    with pytest.raises(RuntimeError, match="contiguous, non-empty"):
        ops.batch_moments(torch.randn(0, 8, 5))
    with pytest.raises(RuntimeError, match="contiguous, non-empty"):
        ops.batch_moments(torch.randn(4, 8, 5).transpose(1, 2))


def test_a_failed_build_names_the_compiler_error():
    log = (
        "Error building extension 'augmentbn_cpu_ops': [1/2] c++ -MMD -O3 -c cpu_ops.cpp\n"
        "cpu_ops.cpp:12:3: error: 'foo' was not declared in this scope\n"
        "   12 |   foo();\n"
        "ninja: build stopped: subcommand failed."
    )
    assert _cpu_ops._reason(log) == "cpu_ops.cpp:12:3: error: 'foo' was not declared in this scope"
    assert _cpu_ops._reason("c++: command not found") == "c++: command not found"


@pytest.mark.parametrize(
    "platform,openmp", [("linux", "-fopenmp"), ("darwin", None), ("win32", "/openmp")]
)
def test_openmp_only_where_the_platform_compiler_has_it(platform, openmp, monkeypatch):
    monkeypatch.setattr(_cpu_ops.sys, "platform", platform)
    cflags = _cpu_ops._compiler_flags()["extra_cflags"]
    assert (openmp in cflags) if openmp else not any("openmp" in flag for flag in cflags)
