"""augmentbn.functional against references written from DESIGN.md's formulas."""

import math

import pytest
import torch
from reference import iebn_reference, nabn_reference

from augmentbn import functional as AF

# Every test here runs on both implementations: the compiled CPU operators and PyTorch's.
pytestmark = pytest.mark.usefixtures("implementation")

NOISES = AF.NOISE_TYPES
SHAPES = [(6, 4), (5, 4, 7), (4, 4, 3, 5), (3, 4, 2, 3, 4)]  # 1d (2D and 3D input), 2d, 3d


def _inputs(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5
    C = shape[1]
    weight = torch.rand(C, generator=g, dtype=dtype) + 0.5
    bias = torch.randn(C, generator=g, dtype=dtype)
    shift = torch.tensor([0.2, -0.2, 0.07, 0.0], dtype=dtype)[:C]
    return x, weight, bias, shift


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("shape", SHAPES)
def test_nabn_training_output_matches_reference(noise, shape):
    x, weight, bias, shift = _inputs(shape)
    y = AF.augment_batch_norm(x, None, None, weight, bias, True, noise=noise, mean_shift=shift)
    expected = nabn_reference(x, weight, bias, shift, noise)[0]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("noise", NOISES)
def test_nabn_affine_false_matches_reference(noise):
    x, _, _, shift = _inputs((4, 4, 3, 5))
    y = AF.augment_batch_norm(x, None, None, None, None, True, noise=noise, mean_shift=shift)
    torch.testing.assert_close(
        y, nabn_reference(x, None, None, shift, noise)[0], rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("running_stats", AF.RUNNING_STATS)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_nabn_running_stats_follow_reference(noise, running_stats, momentum):
    C = 4
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    exp_m, exp_v = rm.clone(), rv.clone()
    for step in range(4):
        x, weight, bias, shift = _inputs((5, C, 3, 3), seed=step)
        shift = shift * (step - 1.5)
        AF.augment_batch_norm(
            x,
            rm,
            rv,
            weight,
            bias,
            True,
            momentum,
            running_stats=running_stats,
            noise=noise,
            mean_shift=shift,
        )
        _, mean, var, shifted, v = nabn_reference(x, weight, bias, shift, noise)
        if running_stats == "perturbed":
            new_m, new_v = shifted, v
        else:
            M = x.numel() // C
            new_m, new_v = mean, var * M / (M - 1)
        exp_m = (1 - momentum) * exp_m + momentum * new_m
        exp_v = (1 - momentum) * exp_v + momentum * new_v
    torch.testing.assert_close(rm, exp_m, rtol=0, atol=1e-12)
    torch.testing.assert_close(rv, exp_v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 3, 4), (3, 3, 2, 2, 3)])
def test_nabn_gradcheck(noise, shape):
    x, weight, bias, shift = _inputs(shape)
    shift = shift[: shape[1]]
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))

    def fn(x, weight, bias):
        return AF.augment_batch_norm(
            x, None, None, weight, bias, True, noise=noise, mean_shift=shift
        )

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize("noise", NOISES)
def test_nabn_gradcheck_affine_false(noise):
    x, _, _, shift = _inputs((4, 4, 3))
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: AF.augment_batch_norm(
            x, None, None, None, None, True, noise=noise, mean_shift=shift
        ),
        (x,),
    )


def test_nabn_reject_gradient_where_variance_is_clamped():
    # A constant channel has v' = max(-δ(2μ + δ), 0) = 0: the clamp is active and the variance
    # path must carry no gradient (gradcheck would fail on the unclamped formula).
    x, weight, bias, shift = _inputs((4, 4, 3, 3))
    x[:, 1] = 0.3
    x[:, 3] = 1.0 + 1e-3 * x[:, 3]
    shift = torch.tensor([0.1, 0.2, -0.15, 0.2], dtype=torch.float64)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))

    def fn(x, weight, bias):
        return AF.augment_batch_norm(
            x, None, None, weight, bias, True, eps=1e-2, noise="gaussian_reject", mean_shift=shift
        )

    assert torch.autograd.gradcheck(fn, (x, weight, bias))
    y = fn(x, weight, bias)
    torch.testing.assert_close(
        y,
        nabn_reference(x, weight, bias, shift, "gaussian_reject", eps=1e-2)[0],
        rtol=0,
        atol=1e-10,
    )


def test_nabn_backward_matches_autograd_of_reference():
    x, weight, bias, shift = _inputs((4, 4, 5, 5))
    grad = torch.randn(x.shape, dtype=torch.float64)
    for noise in NOISES:
        ours = [t.clone().requires_grad_() for t in (x, weight, bias)]
        ref = [t.clone().requires_grad_() for t in (x, weight, bias)]
        AF.augment_batch_norm(
            *ours[:1], None, None, *ours[1:], True, noise=noise, mean_shift=shift
        ).backward(grad)
        nabn_reference(*ref, shift, noise)[0].backward(grad)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)


def test_nabn_eval_is_batch_norm_and_noise_free():
    x, weight, bias, _ = _inputs((4, 4, 3, 5))
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    y = AF.augment_batch_norm(x, rm, rv, weight, bias, False, theta=5.0)
    assert torch.equal(y, torch.nn.functional.batch_norm(x, rm, rv, weight, bias, False))
    # Without running statistics, eval uses batch statistics, still without noise.
    y = AF.augment_batch_norm(x, None, None, weight, bias, False)
    assert torch.equal(y, torch.nn.functional.batch_norm(x, None, None, weight, bias, True))


@pytest.mark.parametrize("shape", SHAPES)
def test_iebn_training_output_matches_reference(shape):
    x, weight, bias, _ = _inputs(shape)
    C = shape[1]
    w_r, b_r = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    y = AF.ie_batch_norm(x, None, None, weight, bias, w_r, b_r, True)
    torch.testing.assert_close(y, iebn_reference(x, weight, bias, w_r, b_r), rtol=0, atol=1e-10)


def test_iebn_eval_uses_running_stats_and_instance_gate():
    x, weight, bias, _ = _inputs((4, 4, 3, 5))
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    w_r, b_r = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y = AF.ie_batch_norm(x, rm.clone(), rv.clone(), weight, bias, w_r, b_r, False)
    torch.testing.assert_close(
        y, iebn_reference(x, weight, bias, w_r, b_r, rm, rv), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_iebn_running_stats_as_batch_norm(momentum):
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(4, momentum=momentum, dtype=torch.float64)
    for step in range(3):
        x, weight, bias, _ = _inputs((5, 4, 3, 3), seed=step)
        AF.ie_batch_norm(
            x,
            rm,
            rv,
            weight,
            bias,
            torch.zeros(4, dtype=torch.float64),
            torch.zeros(4, dtype=torch.float64),
            True,
            momentum,
        )
        bn(x)
    torch.testing.assert_close(rm, bn.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(rv, bn.running_var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 3, 4), (3, 3, 2, 2, 3)])
def test_iebn_gradcheck(training, shape):
    x, weight, bias, _ = _inputs(shape)
    C = shape[1]
    g = torch.Generator().manual_seed(1)
    w_r = torch.randn(C, generator=g, dtype=torch.float64)
    b_r = torch.randn(C, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    params = [t.requires_grad_() for t in (x, weight, bias, w_r, b_r)]

    def fn(x, weight, bias, w_r, b_r):
        running = (None, None) if training else (rm, rv)
        return AF.ie_batch_norm(x, *running, weight, bias, w_r, b_r, training)

    assert torch.autograd.gradcheck(fn, params)


def test_nonfinite_input_keeps_running_stats():
    x, weight, bias, shift = _inputs((4, 4, 3, 3))
    x[0, 2, 0, 0] = float("nan")
    x[1, 3, 1, 1] = float("inf")
    for fn in (
        lambda rm, rv: AF.augment_batch_norm(x, rm, rv, weight, bias, True, mean_shift=shift),
        lambda rm, rv: AF.ie_batch_norm(
            x,
            rm,
            rv,
            weight,
            bias,
            torch.zeros(4, dtype=torch.float64),
            torch.zeros(4, dtype=torch.float64),
            True,
        ),
    ):
        rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        y = fn(rm, rv)
        assert torch.isnan(y[:, 2]).any()  # the output shows the problem
        assert rm[2] == 0 and rv[2] == 1 and rm[3] == 0 and rv[3] == 1  # the running stats don't
        assert rm[0] != 0 and rv[1] != 1  # finite channels still update


# --- sample_mean_shift -----------------------------------------------------------------------


def _normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("theta,std", [(0.2, 1.0), (0.5, 0.4)])
def test_mean_shift_distributions(theta, std):
    n = 200_000
    g = torch.Generator().manual_seed(1234)
    inside = 2 * _normal_cdf(theta / std) - 1  # P(|z| <= θ)
    tol = 5 * math.sqrt(inside * (1 - inside) / n)

    clip = AF.sample_mean_shift(n, theta=theta, noise_std=std, noise="gaussian_clip", generator=g)
    assert clip.abs().max() <= theta
    at_bound = (clip.abs() == theta).double().mean().item()
    assert abs(at_bound - (1 - inside)) < tol
    assert abs(clip.mean().item()) < 5 * theta / math.sqrt(n)

    reject = AF.sample_mean_shift(
        n, theta=theta, noise_std=std, noise="gaussian_reject", generator=g
    )
    assert reject.abs().max() <= theta
    assert abs((reject == 0).double().mean().item() - (1 - inside)) < tol
    # Accepted values are N(0, s²) truncated to [-θ, θ]: symmetric.
    assert abs(reject[reject != 0].mean().item()) < 5 * theta / math.sqrt(n * inside)

    uniform = AF.sample_mean_shift(n, theta=theta, noise="uniform", generator=g)
    assert uniform.min() >= -theta and uniform.max() <= theta
    assert uniform.min() < -0.99 * theta and uniform.max() > 0.99 * theta
    assert abs(uniform.mean().item()) < 5 * theta / math.sqrt(3 * n)
    assert abs(uniform.var().item() - theta**2 / 3) < 0.01 * theta**2


def test_mean_shift_defaults_match_design():
    g = torch.Generator().manual_seed(0)
    clip = AF.sample_mean_shift(100_000, generator=g)
    assert abs((clip.abs() == 0.2).double().mean().item() - 0.8415) < 0.01


def test_mean_shift_seeded_and_dtype():
    a = AF.sample_mean_shift(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = AF.sample_mean_shift(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, b) and a.dtype == torch.float64


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"theta": -0.1}, "theta must be >= 0"),
        ({"noise_std": 0.0}, "noise_std must be > 0"),
        ({"noise": "laplace"}, "unknown noise"),
        ({"running_stats": "both"}, "unknown running_stats"),
    ],
)
def test_bad_noise_arguments_raise(kwargs, match):
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=match):
        AF.augment_batch_norm(x, None, None, training=True, **kwargs)


def test_bad_mean_shift_shape_raises_and_updates_nothing():
    x = torch.randn(4, 3, 2, 2)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"mean_shift must have shape \(3,\)"):
        AF.augment_batch_norm(x, rm, rv, training=True, mean_shift=torch.zeros(4))
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


def test_one_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        AF.augment_batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        AF.ie_batch_norm(
            torch.randn(1, 3, 1, 1), None, None, None, None, torch.zeros(3), torch.zeros(3), True
        )


@pytest.mark.parametrize("layer", ["nabn", "iebn"])
def test_first_derivatives_under_create_graph_and_no_second(layer):
    """The backward passes are once-differentiable: create_graph=True gives the gradient, and
    differentiating it again raises instead of returning wrong second derivatives."""
    x, weight, bias, shift = _inputs((4, 4, 3, 5))
    x.requires_grad_()
    zeros = torch.zeros(4, dtype=x.dtype)

    def forward():
        if layer == "nabn":
            return AF.augment_batch_norm(x, None, None, weight, bias, True, mean_shift=shift)
        return AF.ie_batch_norm(x, None, None, weight, bias, zeros, zeros - 1, True)

    (expected,) = torch.autograd.grad((forward() ** 3).sum(), x)
    (grad,) = torch.autograd.grad((forward() ** 3).sum(), x, create_graph=True)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    assert grad.requires_grad
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


@pytest.mark.parametrize(
    "name,bad",
    [
        ("weight", torch.ones(3)),
        ("bias", torch.zeros(4, 1)),
        ("running_mean", torch.zeros(5)),
        ("running_var", torch.ones(2)),
    ],
)
@pytest.mark.parametrize("layer", ["nabn", "iebn"])
def test_per_channel_tensors_of_the_wrong_shape_are_refused(layer, name, bad):
    x, weight, bias, shift = _inputs((4, 4, 3, 5))
    args = {
        "running_mean": torch.zeros(4, dtype=x.dtype),
        "running_var": torch.ones(4, dtype=x.dtype),
        "weight": weight,
        "bias": bias,
    }
    args[name] = bad.to(x.dtype)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(4,\).*got \("):
        if layer == "nabn":
            AF.augment_batch_norm(x, **args, training=True, mean_shift=shift)
        else:
            zeros = torch.zeros(4, dtype=x.dtype)
            AF.ie_batch_norm(x, **args, weight_readjust=zeros, bias_readjust=zeros, training=True)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer", ["nabn", "iebn"])
def test_running_statistics_come_both_or_neither(layer, training):
    x = _inputs((4, 4, 3, 5))[0]
    with pytest.raises(ValueError, match="running_mean and running_var together"):
        if layer == "nabn":
            AF.augment_batch_norm(x, torch.zeros(4, dtype=x.dtype), None, training=training)
        else:
            zeros = torch.zeros(4, dtype=x.dtype)
            AF.ie_batch_norm(x, zeros, None, None, None, zeros, zeros, training=training)


@pytest.mark.parametrize("layer", ["nabn", "iebn"])
def test_updating_the_running_statistics_counts_as_a_modification(layer):
    """Autograd's version counters see the in-place update (a pending backward that saved the
    buffers then fails loudly rather than use changed values)."""
    x, weight, bias, shift = _inputs((4, 4, 3, 5))
    running_mean, running_var = torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype)
    versions = running_mean._version, running_var._version
    if layer == "nabn":
        AF.augment_batch_norm(x, running_mean, running_var, weight, bias, True, mean_shift=shift)
    else:
        zeros = torch.zeros(4, dtype=x.dtype)
        AF.ie_batch_norm(x, running_mean, running_var, weight, bias, zeros, zeros, True)
    assert running_mean._version > versions[0] and running_var._version > versions[1]
