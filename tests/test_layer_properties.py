"""Property-based tests of the PyTorch layers, and the layer defects of issue 13.

``hypothesis`` draws shapes, dtypes (float16, bfloat16, float32, float64), memory formats,
strides, ``affine``, tracking, momentum and mean shifts (including gaussian_reject channels whose
variance clamps); every training step is compared with the float64 reference, every eval step
with ``F.batch_norm`` (NABN) or the reference at the running statistics (IEBN).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import iebn_reference, nabn_reference

import augmentbn as ab
from augmentbn import _cpu_ops
from augmentbn.layers import clamp_counts, warn_if_clamped

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Largest |actual - float64| / max|float64| for outputs and gradients: what nn.BatchNorm itself
# meets against float64 in each dtype (tests/test_fast_path.py checks these are BatchNorm's).
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3.2e-2,
}
NABN = {1: ab.AugmentBatchNorm1d, 2: ab.AugmentBatchNorm2d, 3: ab.AugmentBatchNorm3d}
IEBN = {1: ab.IEBatchNorm1d, 2: ab.IEBatchNorm2d, 3: ab.IEBatchNorm3d}
NOISES = ("gaussian_clip", "gaussian_reject", "uniform")


@st.composite
def layer_cases(draw):
    dims = draw(st.sampled_from([1, 2, 3]))
    channels = draw(st.integers(1, 4))
    batch = draw(st.integers(2, 4))
    spatial = draw(st.lists(st.integers(1, 4), min_size=dims, max_size=dims))
    if dims == 1 and draw(st.booleans()):
        spatial = []  # (N, C)
    shape = (batch, channels, *spatial)
    dtype = draw(st.sampled_from(list(TOLERANCE)))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    return {
        "shape": shape,
        "dims": dims,
        "dtype": dtype,
        "layout": layout,
        "method": draw(st.sampled_from([*NOISES, "iebn"])),
        "affine": draw(st.booleans()),
        "track": draw(st.booleans()),
        "momentum": draw(st.sampled_from([0.1, 0.5, None])),
        "offset": draw(st.sampled_from([0.0, 2.0, 30.0])),
        "shift": draw(
            st.lists(
                st.floats(-0.25, 0.25, width=32, allow_subnormal=False),
                min_size=channels,
                max_size=channels,
            )
        ),
        "seed": draw(st.integers(0, 2**16)),
        "compiled": draw(st.booleans()),
    }


def _lay_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last" and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "strided":  # every other element of a twice-as-wide tensor
        wide = torch.repeat_interleave(x, 2, dim=-1)
        return wide[..., ::2]
    return x


def _relative(actual: torch.Tensor, expected: torch.Tensor, scale: float = 0.0) -> float:
    """``max|actual - expected|`` over ``max|expected|``, or over ``scale``, the size of the
    terms that cancel into ``expected`` (a gradient near 0), when that is larger."""
    if expected.numel() == 0:
        return 0.0
    scale = max(expected.abs().max().item(), scale, 1e-12)
    return (actual.double() - expected).abs().max().item() / scale


def _near_clamp(x64: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """gaussian_reject channels within 1e-3·mean(x²) of the clamp, where rounding decides."""
    dims = [0, *range(2, x64.dim())]
    sq = (x64 * x64).mean(dims)
    raw = sq - (x64.mean(dims) + shift) ** 2
    return raw.abs() < 1e-3 * sq


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layer_cases())
def test_layers_match_the_float64_reference(case):
    torch.manual_seed(case["seed"])
    dtype, method = case["dtype"], case["method"]
    # The values the layer sees, exactly: the reference runs on them in float64.
    x64 = (torch.randn(case["shape"], dtype=torch.float64) + case["offset"]).to(dtype).double()
    shift = torch.tensor(case["shift"], dtype=torch.float64).to(dtype).double()
    classes = IEBN if method == "iebn" else NABN
    kwargs = {} if method == "iebn" else {"noise": method}
    layer = classes[case["dims"]](
        case["shape"][1],
        affine=case["affine"],
        track_running_stats=case["track"],
        momentum=case["momentum"],
        **kwargs,
    ).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) * 0.2 + p.detach().float())
    params64 = {n: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}

    x = _lay_out(x64.to(dtype), case["layout"]).detach().requires_grad_()
    grad = torch.randn(case["shape"], dtype=torch.float64)

    def implementation():
        return _NullContext() if case["compiled"] else _cpu_ops.disabled()

    with implementation():
        extra = {} if method == "iebn" else {"mean_shift": shift.to(dtype)}
        y = layer(x, **extra)
        y.backward(grad.to(dtype))

    x_ref = x64.clone().requires_grad_()
    if method == "iebn":
        y_ref = iebn_reference(
            x_ref,
            params64.get("weight"),
            params64.get("bias"),
            params64["weight_readjust"],
            params64["bias_readjust"],
        )
        keep = torch.ones(case["shape"][1], dtype=torch.bool)
    else:
        y_ref, *_ = nabn_reference(
            x_ref, params64.get("weight"), params64.get("bias"), shift, method
        )
        keep = ~_near_clamp(x64, shift) if method == "gaussian_reject" else keep_all(case)
    y_ref.backward(grad)

    tol = TOLERANCE[dtype]
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()

    def by_channel(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1)[keep]

    scales = _gradient_scales(x64, grad, y_ref.detach(), params64, shift, method)
    assert _relative(by_channel(y), by_channel(y_ref.detach()), scales["output"]) <= tol
    assert _relative(by_channel(x.grad), by_channel(x_ref.grad), scales["input"]) <= tol
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all()
        assert _relative(p.grad[keep], params64[name].grad[keep], scales[name]) <= tol, name

    # Evaluation: NABN is F.batch_norm at the running statistics; IEBN the reference there.
    layer.eval()
    with torch.no_grad(), implementation():
        y_eval = layer(x)
    if not case["track"]:
        return
    if method == "iebn":
        y_eval_ref = iebn_reference(
            x64,
            params64.get("weight"),
            params64.get("bias"),
            params64["weight_readjust"],
            params64["bias_readjust"],
            layer.running_mean.double(),
            layer.running_var.double(),
        )
    else:
        w, b = params64.get("weight"), params64.get("bias")
        y_eval_ref = F.batch_norm(
            x64, layer.running_mean.double(), layer.running_var.double(), w, b, False
        )
    assert _relative(y_eval, y_eval_ref.detach()) <= tol


def _gradient_scales(x64, grad, y_ref, params64, shift, method) -> dict[str, float]:
    """The size of the terms each output and gradient sums, which may cancel to nearly 0 (two
    values per channel, say): ``|γ x̂| + |β|`` for the output, ``|g|·|γ|·s`` for the input,
    ``sum |g|·|∂y/∂p|`` bounds for the parameters."""
    dims = [0, *range(2, x64.dim())]
    mean, var = x64.mean(dims), x64.var(dims, unbiased=False)
    used = var if method == "iebn" else var + shift**2
    invstd = (used.clamp(min=0) + 1e-5).rsqrt()
    gamma = params64["weight"].detach().abs() if "weight" in params64 else torch.ones_like(mean)
    xhat = ((x64 - (mean + (0 if method == "iebn" else shift)).view(1, -1, *[1] * (x64.dim() - 2)))
            * invstd.view(1, -1, *[1] * (x64.dim() - 2))).abs()  # fmt: skip
    g = grad.abs()
    instance = x64.abs().mean(list(range(2, x64.dim()))) if x64.dim() > 2 else x64.abs()
    beta = params64["bias"].detach().abs() if "bias" in params64 else torch.zeros_like(mean)
    view = (1, -1, *[1] * (x64.dim() - 2))
    scales = {
        "output": ((xhat * gamma.view(view)).amax() + beta.max()).item(),
        "input": (g.max() * (gamma * invstd).max() * 4).item(),
        "weight": (g * xhat).sum(dims).max().item(),
        "bias": g.sum(dims).max().item(),
    }
    gate_terms = (g * xhat).sum(dims).max() * gamma.max()
    scales["weight_readjust"] = (gate_terms * (1 + instance.max())).item()
    scales["bias_readjust"] = gate_terms.item()
    return scales


def keep_all(case) -> torch.Tensor:
    return torch.ones(case["shape"][1], dtype=torch.bool)


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------
# gaussian_reject where the seed's variance clamps to 0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reject_gradients_on_clamped_channels_match_the_reference(dtype, compiled):
    # Channel 0: mean 3, std 1, δ = 0.2: v' = σ² - δ(2μ + δ) ≈ 1 - 1.24 < 0, clamped, and far
    # (0.24) from the clamp against mean(x²) ≈ 10. Channel 1 is not clamped.
    torch.manual_seed(0)
    x64 = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    x64[:, 0] = (x64[:, 0] - x64[:, 0].mean()) / x64[:, 0].std(unbiased=False) + 3.0
    shift = torch.tensor([0.2, 0.1], dtype=torch.float64)
    assert not _near_clamp(x64, shift).any()
    layer = ab.AugmentBatchNorm2d(2, noise="gaussian_reject").to(dtype)
    x = x64.to(dtype).requires_grad_()
    grad = torch.randn_like(x64)
    context = _NullContext() if compiled else _cpu_ops.disabled()
    with context:
        y = layer(x, mean_shift=shift.to(dtype))
        y.backward(grad.to(dtype))
    assert clamp_counts(layer) == {"": 1}
    x_ref = x64.clone().requires_grad_()
    y_ref, *_ = nabn_reference(
        x_ref,
        torch.ones(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        shift,
        "gaussian_reject",
    )
    y_ref.backward(grad)
    for channel in (0, 1):  # the clamped channel within the tolerance of the other
        assert _relative(x.grad[:, channel], x_ref.grad[:, channel]) <= TOLERANCE[dtype]
        assert _relative(y[:, channel], y_ref[:, channel].detach()) <= TOLERANCE[dtype]


def test_clamped_channels_are_counted_on_the_device_and_warned_once(recwarn):
    import augmentbn.layers.augment as augment_module

    augment_module._warned_clamping = False
    layer = ab.AugmentBatchNorm2d(2, noise="gaussian_reject")
    x = torch.randn(4, 2, 3, 3) + torch.tensor([5.0, 0.0]).view(1, 2, 1, 1)
    for _ in range(3):
        layer(x, mean_shift=torch.tensor([0.2, 0.0]))
    model = torch.nn.Sequential(layer, ab.AugmentBatchNorm2d(2))  # clip layers are not counted
    assert warn_if_clamped(model) == 3
    assert warn_if_clamped(model) == 0  # reset after reading
    layer(x, mean_shift=torch.tensor([0.2, 0.0]))
    assert warn_if_clamped(model) == 1
    warned = [w for w in recwarn if "clamped to 0 on 3 channel-steps" in str(w.message)]
    assert len(warned) == 1 and "layer '0'" in str(warned[0].message)
    assert "clamped_channels" not in layer.state_dict()


# --------------------------------------------------------------------------------------------
# The smaller layer defects
# --------------------------------------------------------------------------------------------


def test_uniform_noise_refuses_an_infinite_bound():
    with pytest.raises(ValueError, match="theta must be finite for noise='uniform'"):
        ab.AugmentBatchNorm2d(3, noise="uniform", theta=math.inf)
    with pytest.raises(ValueError, match="theta must be finite"):
        ab.functional.sample_mean_shift(3, noise="uniform", theta=math.inf)
    # A Gaussian with no bound is meaningful: clip and reject leave z as it is.
    layer = ab.AugmentBatchNorm2d(3, theta=math.inf)
    layer(torch.randn(4, 3, 2, 2))


@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d])
def test_cumulative_average_keeps_float64_precision(cls):
    torch.manual_seed(0)
    ours = cls(3, momentum=None, dtype=torch.float64)
    kwargs = {"noise": "uniform", "running_stats": "clean"} if cls is ab.AugmentBatchNorm2d else {}
    ours = cls(3, momentum=None, dtype=torch.float64, **kwargs)
    theirs = torch.nn.BatchNorm2d(3, momentum=None, dtype=torch.float64)
    for _ in range(7):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1
        theirs(x)
        ours(x, mean_shift=torch.zeros(3, dtype=torch.float64)) if kwargs else ours(x)
    for name in ("running_mean", "running_var"):
        error = (getattr(ours, name) - getattr(theirs, name)).abs().max().item()
        assert error < 1e-13, (name, error)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d], ids=["nabn", "iebn"])
def test_an_empty_batch_trains_like_batch_norm(cls, compiled):
    layer = cls(3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    with _NullContext() if compiled else _cpu_ops.disabled():
        y = layer(x)
    assert y.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    after = layer.state_dict()
    for key in ("running_mean", "running_var"):
        assert torch.equal(before[key], after[key])
    # nn.BatchNorm counts the (empty) batch too.
    reference = torch.nn.BatchNorm2d(3)
    reference(torch.randn(0, 3, 4, 4))
    assert after["num_batches_tracked"] == reference.num_batches_tracked
