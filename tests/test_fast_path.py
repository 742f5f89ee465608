"""The fast layers against the composite baselines of the benchmarks.

Across dtypes, memory formats, 1d/2d/3d, ``affine=False``, ``track_running_stats=False``,
``momentum=None``, CPU autocast and ``torch.compile``; and the benchmark scripts in quick mode.
Outputs and gradients of a layer in ``dtype`` are compared with the composite baseline in float64
on the same values, with the tolerance that ``nn.BatchNorm`` itself meets against float64
(``test_tolerances_are_batch_norms``).
"""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from reference import CompositeAugmentBatchNorm, CompositeIEBatchNorm
from torch import nn

import augmentbn as ab
import augmentbn._stats as stats
from augmentbn import _cpu_ops

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their _common

KINDS = ("gaussian_clip", "gaussian_reject", "uniform", "iebn")
OURS = {
    "nabn": {1: ab.AugmentBatchNorm1d, 2: ab.AugmentBatchNorm2d, 3: ab.AugmentBatchNorm3d},
    "iebn": {1: ab.IEBatchNorm1d, 2: ab.IEBatchNorm2d, 3: ab.IEBatchNorm3d},
}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SHAPES = {"1d-2D": (9, 5), "1d": (4, 5, 7), 2: (4, 5, 6, 7), 3: (3, 5, 3, 4, 5)}
C = 5
# Largest |actual - float64| / max|float64| allowed, for outputs and every gradient.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


def _dims(key) -> int:
    return 1 if isinstance(key, str) else key


def make_pair(kind, dims, **kwargs):
    """Our layer and the composite baseline, in float32, with the same random state."""
    gen = torch.Generator().manual_seed(0)
    if kind == "iebn":
        ours, base = OURS["iebn"][dims](C, **kwargs), CompositeIEBatchNorm(C, **kwargs)
    else:
        ours = OURS["nabn"][dims](C, noise=kind, **kwargs)
        base = CompositeAugmentBatchNorm(C, noise=kind, **kwargs)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if name == "weight" else 0))
    base.load_state_dict(ours.state_dict())
    return ours, base


def run(layer, x, grad, kind, mean_shift=None):
    """Output and gradients (input, then parameters) of one call."""
    x = x.detach().requires_grad_()
    args = () if kind == "iebn" or not layer.training else (mean_shift,)
    y = layer(x, *args)
    params = [p for p in layer.parameters() if p.requires_grad]
    return [y, *torch.autograd.grad(y, [x, *params], grad)]


def assert_close_as_batch_norm(actual, expected, dtype):
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == dtype or a.dtype == torch.float32  # float32 parameters under autocast
        error = (a.double() - e).abs().max() / e.abs().max().clamp(min=1e-12)
        assert error <= TOLERANCE[dtype], f"relative error {error:.2e} in {tuple(a.shape)}"


def inputs(shape, dtype, seed=0, memory_format=torch.contiguous_format):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    if len(shape) >= 4:
        x, grad = x.contiguous(memory_format=memory_format), grad.contiguous()
    return x, grad


SHIFT = torch.tensor([0.2, -0.2, 0.07, 0.0, -0.13])


def compare(
    kind, key, dtype, steps=2, memory_format=torch.contiguous_format, device="cpu", **kwargs
):
    """``steps`` training calls of ours (in ``dtype``, on ``device``) and of the float64
    baseline (on the CPU)."""
    ours, base = make_pair(kind, _dims(key), **kwargs)
    ours, base = ours.to(device, dtype), base.double()
    for step in range(steps):
        x, grad = inputs(SHAPES[key], dtype, seed=step, memory_format=memory_format)
        shift = SHIFT * (step + 1)
        got = run(ours, x.to(device), grad.to(device), kind, shift)
        expected = run(base, x.double(), grad.double(), kind, shift)
        assert_close_as_batch_norm([g.cpu() for g in got], expected, dtype)
    if ours.track_running_stats:
        for name in ("running_mean", "running_var"):
            got = getattr(ours, name).cpu()
            assert_close_as_batch_norm([got], [getattr(base, name)], dtype)
        assert ours.num_batches_tracked == base.num_batches_tracked == steps
    return ours, base


# --- tolerances ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("key", list(SHAPES))
def test_tolerances_are_batch_norms(key, dtype):
    """nn.BatchNorm in ``dtype`` meets TOLERANCE against itself in float64: the bar we set."""
    bn = BATCH_NORM[_dims(key)](C)
    for step in range(2):
        x, grad = inputs(SHAPES[key], dtype, seed=step)
        got = run(bn.to(dtype), x, grad, "iebn")
        expected = run(copy.deepcopy(bn).double(), x.double(), grad.double(), "iebn")
        assert_close_as_batch_norm(got, expected, dtype)


# --- the fast path equals the composite baseline ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("implementation")
def test_matches_composite(kind, key, dtype):
    compare(kind, key, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_composite_float16(kind):
    compare(kind, 2, torch.float16)


@pytest.mark.parametrize(
    "key,memory_format", [(2, torch.channels_last), (3, torch.channels_last_3d)]
)
@pytest.mark.parametrize("kind", KINDS)
def test_channels_last(kind, key, memory_format):
    compare(kind, key, torch.float32, memory_format=memory_format)
    ours, _ = make_pair(kind, key)
    x = inputs(SHAPES[key], torch.float32, memory_format=memory_format)[0].requires_grad_()
    y = ours(x)
    y.backward(torch.ones_like(y))
    assert y.is_contiguous(memory_format=memory_format)  # as nn.BatchNorm
    assert x.grad.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize(
    "options",
    [{"affine": False}, {"momentum": None}, {"track_running_stats": False}],
    ids=["affine-false", "momentum-none", "no-running-stats"],
)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("implementation")
def test_options(kind, options):
    ours, base = compare(kind, 2, torch.float32, steps=3, **options)
    ours.eval(), base.eval()  # running statistics, or batch statistics without tracking
    x, grad = inputs(SHAPES[2], torch.float32, seed=7)
    assert_close_as_batch_norm(
        run(ours, x, grad, kind), run(base, x.double(), grad.double(), kind), torch.float32
    )


@pytest.mark.usefixtures("implementation")
def test_reject_with_clamped_variance_matches_composite():
    # A constant channel: mean(x²) - μ'² = -δ(2μ + δ) < 0, so max(·, 0) is active there.
    ours, base = make_pair("gaussian_reject", 2)
    base.double()
    x, grad = inputs(SHAPES[2], torch.float32)
    x[:, 1] = 0.3
    assert_close_as_batch_norm(
        run(ours, x, grad, "gaussian_reject", SHIFT),
        run(base, x.double(), grad.double(), "gaussian_reject", SHIFT),
        torch.float32,
    )


class _Shifted(nn.Module):
    """NABN with the fixed shift ``SHIFT``, for use inside ``nn.Sequential``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, SHIFT) if not isinstance(self.layer, IEBN_TYPES) else self.layer(x)


IEBN_TYPES = (ab.IEBatchNorm2d, CompositeIEBatchNorm)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("implementation")
def test_in_place_op_on_the_output(kind):
    ours, base = make_pair(kind, 2)
    x, grad = inputs(SHAPES[2], torch.float32)
    got = run(nn.Sequential(_Shifted(ours), nn.ReLU(inplace=True)), x, grad, "iebn")
    expected = run(
        nn.Sequential(_Shifted(base.double()), nn.ReLU()), x.double(), grad.double(), "iebn"
    )
    assert_close_as_batch_norm(got, expected, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_cpu_bfloat16(kind):
    conv = nn.Conv2d(3, C, 3)
    ours, base = make_pair(kind, 2)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 9, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(images)
        bn_out = nn.BatchNorm2d(C)(features)
        x = features.detach()
        grad = torch.randn(x.shape, generator=gen).to(x.dtype)
        got = run(ours, x, grad, kind, SHIFT)
    assert x.dtype == torch.bfloat16 and got[0].dtype == bn_out.dtype
    assert all(g.dtype == torch.float32 for g in got[2:])  # float32 parameters
    expected = run(base.double(), x.double(), grad.double(), kind, SHIFT)
    assert_close_as_batch_norm(got, expected, torch.bfloat16)
    torch.testing.assert_close(ours.running_mean, base.running_mean.float())


# --- CUDA (run where a GPU is present) ----------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_composite(kind, key, dtype):
    compare(kind, key, dtype, device="cuda")


@needs_cuda
@pytest.mark.parametrize(
    "key,memory_format", [(2, torch.channels_last), (3, torch.channels_last_3d)]
)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_channels_last(kind, key, memory_format):
    compare(kind, key, torch.float32, memory_format=memory_format, device="cuda")


@needs_cuda
@pytest.mark.parametrize(
    "options",
    [{"affine": False}, {"momentum": None}, {"track_running_stats": False}],
    ids=["affine-false", "momentum-none", "no-running-stats"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_options(kind, options):
    compare(kind, 2, torch.float32, steps=3, device="cuda", **options)


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_autocast_float16(kind):
    ours, base = make_pair(kind, 2)
    ours.cuda()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPES[2], generator=gen)
    grad = torch.randn(x.shape, generator=gen)
    with torch.autocast("cuda", dtype=torch.float16):
        x16 = x.cuda().half()
        got = run(ours, x16, grad.cuda().half(), kind, SHIFT)
    assert got[0].dtype == torch.float16
    assert all(g.dtype == torch.float32 for g in got[2:])  # float32 parameters
    expected = run(base.double(), x16.double().cpu(), grad.half().double(), kind, SHIFT)
    assert_close_as_batch_norm([g.cpu() for g in got], expected, torch.float16)
    torch.testing.assert_close(ours.running_mean.cpu(), base.running_mean.float())


# --- batch statistics from fused sums (contiguous float32 on the CPU) ------------------------


def _float64_moments(x):
    spatial = tuple(range(2, x.dim()))
    var, mean = torch.var_mean(x.double(), dim=(0, *spatial), correction=0)
    return mean, var, x.double().mean(dim=spatial)


@pytest.mark.parametrize(
    "size,row", [(60, 60), (2048, 2048), (3136, 1568), (8192, 2048), (4099, 4099), (8198, 8198)]
)
def test_sum_rows_divide_the_instances(size, row):
    assert stats.sum_row_length(size) == row  # 4099 is prime; 8198 = 2·4099 has no useful divisor


@pytest.mark.parametrize(
    "shape", [(8, 16, 32, 32), (4, 8, 56, 56), (2, 4, 8, 32, 32), (2, 3, 4099)]
)
@pytest.mark.parametrize("offset", [0.0, 1.5])
def test_moments_from_sums_match_float64(shape, offset):
    gen = torch.Generator().manual_seed(0)
    scale = torch.rand(shape[1], *(1,) * (len(shape) - 2), generator=gen) + 0.5
    x = torch.randn(shape, generator=gen) * scale + offset * scale  # E[x²]/σ² up to 3.25
    moments = stats.moments_from_sums(x)
    assert moments is not None and all(m.dtype == torch.float32 for m in moments)
    mean, var, instance_mean = moments
    ref_mean, ref_var, ref_instance_mean = _float64_moments(x)
    std = ref_var.sqrt()
    assert ((var.double() - ref_var) / ref_var).abs().max() <= 1e-6
    assert ((mean.double() - ref_mean) / std).abs().max() <= 1e-6
    assert ((instance_mean.double() - ref_instance_mean) / std).abs().max() <= 1e-6


def test_moments_from_sums_decline_what_they_cannot_do_accurately():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 32, 32, generator=gen)
    x[:, 3] += 10.0  # E[x²]/σ² = 101 on one channel
    assert stats.moments_from_sums(x) is None
    mean, var, instance_mean = stats.batch_moments(x)  # BatchNorm's own kernel instead
    ref_mean, ref_var, _ = _float64_moments(x)
    assert instance_mean is None
    assert ((var.double() - ref_var) / ref_var).abs().max() <= 1e-6
    assert ((mean.double() - ref_mean) / ref_var.sqrt()).abs().max() <= 1e-6
    for value in (0.0, float("nan"), float("inf")):  # 0/0, NaN, inf/inf
        y = torch.randn(8, 16, 32, 32, generator=gen)
        y[:, 5] = value
        assert stats.moments_from_sums(y) is None


class _Counter:
    """Counts calls of a private statistics function, delegating to it."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize(
    "offset,path", [(0.5, "sums"), (8.0, "native"), (0.5, "compiled"), (8.0, "compiled")]
)
@pytest.mark.parametrize("kind", KINDS)
def test_layers_on_the_sums_path_match_composite(kind, offset, path, monkeypatch):
    """Large inputs, whose statistics the Python implementation takes from the fused sums or,
    at a large offset, from BatchNorm's kernel, and the compiled operators from their own two
    passes."""
    if path == "compiled" and not _cpu_ops.available():
        pytest.skip("the compiled CPU operators could not be built on this machine")
    if path != "compiled":
        monkeypatch.setitem(_cpu_ops._state, "ok", False)
    native = _Counter(stats.native_stats)
    monkeypatch.setattr(stats, "native_stats", native)
    ours, base = make_pair(kind, 2)
    base.double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, C, 64, 64, generator=gen) * 2 + offset  # 163,840 values
    grad = torch.randn(x.shape, generator=gen)
    for _ in range(2):
        got = run(ours, x, grad, kind, SHIFT)
        expected = run(base, x.double(), grad.double(), kind, SHIFT)
        # The output and input gradient to TOLERANCE. The parameter gradients sum over 32,768
        # values per channel in float32: nn.BatchNorm2d's own weight gradient is off by 6e-7
        # on this input at offset 8, IEBN's (whose terms carry the gate) by up to 2.6e-6,
        # whichever kernel computed the statistics.
        assert_close_as_batch_norm(got[:2], expected[:2], torch.float32)
        for a, e in zip(got[2:], expected[2:], strict=True):
            assert (a.double() - e).abs().max() <= 4 * TOLERANCE[torch.float32] * e.abs().max()
    assert native.calls == (2 if path == "native" else 0)
    for name in ("running_mean", "running_var"):
        assert_close_as_batch_norm([getattr(ours, name)], [getattr(base, name)], torch.float32)


# --- torch.compile ---------------------------------------------------------------------------


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ab.AugmentBatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        ab.AugmentBatchNorm2d(8, noise="gaussian_reject", momentum=None),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        ab.AugmentBatchNorm2d(8, noise="uniform", running_stats="clean"),
        nn.Conv2d(8, 8, 3, padding=1),
        ab.IEBatchNorm2d(8, momentum=None),
        nn.ReLU(inplace=True),
    )


def test_compile_fullgraph_matches_eager():
    import torch._inductor.config

    # eager's random draws; patch() restores the entry (a monkeypatch's undo would hide it from
    # every later torch.export in the session)
    with torch._inductor.config.patch(fallback_random=True):
        _compile_fullgraph_matches_eager()


def _compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = _small_net()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    for step in range(2):
        outputs = []
        for net in (eager, compiled):
            torch.manual_seed(step)
            y = net(x)
            (y * y).sum().backward()
            outputs.append(y)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4)
    for b, c in zip(eager.buffers(), compiled_net.buffers(), strict=True):
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    assert compiled_net[4].num_batches_tracked == 2  # momentum=None: a cumulative average
    torch._dynamo.reset()


# --- the benchmark scripts run -----------------------------------------------------------------


@pytest.mark.parametrize("script", ["layers", "train_step", "batch_stats"])
def test_benchmark_script_quick(script, capsys):
    spec = importlib.util.spec_from_file_location(f"_bench_{script}", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    header, rows = table[0], table[2:]
    assert ("sums × kernel" if script == "batch_stats" else "× BN") in header
    assert len(rows) >= (1 if script == "batch_stats" else 3)
    assert "BatchNorm" in out or "BN" in out
