"""The Jittor backend: parity with the PyTorch layers and models, the seed's usage, bad input.

Jittor compiles its core on first import (minutes, cached under ~/.cache/jittor) and its
operators on first use, so every Jittor test lives in this one module, where its cost shows.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import augmentbn as ab
from augmentbn.models import create_model as create_torch_model

if importlib.util.find_spec("jittor") is None:
    # Not pytest.importorskip("jittor"): that would import Jittor before augmentbn.jittor sets
    # its CPU defaults (use_mkl, nvcc_path), which must precede Jittor's first import.
    pytest.skip(
        "Jittor is not installed; pip install 'augmentbn[jittor]' (the dev extra includes it)",
        allow_module_level=True,
    )
abj = importlib.import_module("augmentbn.jittor")
AF = importlib.import_module("augmentbn.jittor.functional")
jt = importlib.import_module("jittor")

NOISES = ["gaussian_clip", "gaussian_reject", "uniform"]
SHAPE = {1: (6, 5, 4), 2: (4, 5, 3, 3), 3: (3, 5, 2, 3, 2)}
TORCH_NABN = {1: ab.AugmentBatchNorm1d, 2: ab.AugmentBatchNorm2d, 3: ab.AugmentBatchNorm3d}
JT_NABN = {1: abj.AugmentBatchNorm1d, 2: abj.AugmentBatchNorm2d, 3: abj.AugmentBatchNorm3d}
TOL = 1e-5  # float32, relative to max(1, max |reference|)


def _np(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, jt.Var):
        return value.numpy()
    return np.asarray(value)


def _jt(array):
    """A Var with the array's dtype (``jt.array`` alone rounds float64 to float32)."""
    return jt.array(array, dtype=str(array.dtype))


def assert_close(actual, expected, tol=TOL, what=""):
    actual, expected = _np(actual), _np(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


def _data(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)
    return x, grad_out


def _copy_params(torch_layer, jittor_layer, seed=1):
    """Random parameters, the same in both layers."""
    rng = np.random.default_rng(seed)
    for name, param in torch_layer.named_parameters():
        value = (rng.standard_normal(param.shape) * 0.5 + 1.0).astype(_np(param).dtype)
        with torch.no_grad():
            param.copy_(torch.from_numpy(value))
        getattr(jittor_layer, name).update(_jt(value))


def _train_step(torch_layer, jittor_layer, x, grad_out, **kwargs):
    """One training step in both: outputs and gradients of sum(y·g) for input and parameters."""
    tx = torch.tensor(x, requires_grad=True)
    torch_kwargs = {k: torch.from_numpy(v) for k, v in kwargs.items()}
    ty = torch_layer(tx, **torch_kwargs)
    names = [n for n, _ in torch_layer.named_parameters()]
    torch_grads = torch.autograd.grad(
        (ty * torch.from_numpy(grad_out)).sum(), [tx, *torch_layer.parameters()]
    )
    jx = _jt(x)
    jy = jittor_layer(jx, **{k: _jt(v) for k, v in kwargs.items()})
    params = [getattr(jittor_layer, n) for n in names]
    jittor_grads = jt.grad((jy * _jt(grad_out)).sum(), [jx, *params])
    return (ty, torch_grads), (jy, jittor_grads), ["input", *names]


def _assert_step_matches(torch_layer, jittor_layer, x, grad_out, tol=TOL, **kwargs):
    (ty, tg), (jy, jg), names = _train_step(torch_layer, jittor_layer, x, grad_out, **kwargs)
    assert_close(jy, ty, tol, "output")
    for name, a, b in zip(names, jg, tg, strict=True):
        assert_close(a, b, tol, f"gradient of {name}")
    for name in ("running_mean", "running_var"):
        assert_close(getattr(jittor_layer, name), getattr(torch_layer, name), tol, name)
    assert int(jittor_layer.num_batches_tracked.item()) == int(torch_layer.num_batches_tracked)


# --- parity with the PyTorch layers ------------------------------------------------------------


@pytest.mark.parametrize("running_stats", ["perturbed", "clean"])
@pytest.mark.parametrize("noise", NOISES)
def test_nabn_training_and_eval_match_pytorch(noise, running_stats):
    tl = ab.AugmentBatchNorm2d(5, noise=noise, running_stats=running_stats)
    jl = abj.AugmentBatchNorm2d(5, noise=noise, running_stats=running_stats)
    _copy_params(tl, jl)
    for step, shift in enumerate(([0.2, -0.2, 0.05, 0.0, -0.13], [0.1, 0.0, -0.2, 0.2, 0.01])):
        x, grad_out = _data(SHAPE[2], seed=step)
        _assert_step_matches(tl, jl, x, grad_out, mean_shift=np.array(shift, np.float32))
    tl.eval(), jl.eval()
    x, _ = _data(SHAPE[2], seed=5)
    assert_close(jl(jt.array(x)), tl(torch.from_numpy(x)))


@pytest.mark.parametrize("dims", [1, 3])
def test_nabn_1d_3d_match_pytorch(dims):
    tl, jl = TORCH_NABN[dims](5, momentum=None), JT_NABN[dims](5, momentum=None)
    _copy_params(tl, jl)
    for step in range(2):
        x, grad_out = _data(SHAPE[dims], seed=step)
        shift = np.linspace(-0.2, 0.2, 5).astype(np.float32)
        _assert_step_matches(tl, jl, x, grad_out, mean_shift=shift)


def test_reject_clamped_variance_matches_pytorch():
    """A shift large enough that mean(x²) - μ'² < 0: the max(·, 0) branch, output and grads.

    There ``v' = 0`` and the output is ``(x - μ')/sqrt(ε)``, which amplifies float32 rounding
    300-fold, so this compares in float64 (to 1e-7: Jittor keeps Python scalars such as ``ε``
    in float32, a relative 1e-8 here).
    """
    tl = ab.AugmentBatchNorm2d(5, noise="gaussian_reject", theta=10.0, dtype=torch.float64)
    jl = abj.AugmentBatchNorm2d(5, noise="gaussian_reject", theta=10.0, dtype="float64")
    _copy_params(tl, jl)
    x, grad_out = _data(SHAPE[2], dtype=np.float64)
    shift = np.array([3, 0, -4, 0, 0], np.float64)
    _assert_step_matches(tl, jl, x, grad_out, tol=1e-7, mean_shift=shift)


def test_iebn_training_and_eval_match_pytorch():
    tl, jl = ab.IEBatchNorm2d(5), abj.IEBatchNorm2d(5)
    _copy_params(tl, jl)
    for step in range(2):
        x, grad_out = _data(SHAPE[2], seed=step)
        _assert_step_matches(tl, jl, x, grad_out)
    tl.eval(), jl.eval()
    x, _ = _data(SHAPE[2], seed=5)
    assert_close(jl(jt.array(x)), tl(torch.from_numpy(x)))


def test_iebn_1d_matches_pytorch():
    tl, jl = ab.IEBatchNorm1d(5), abj.IEBatchNorm1d(5)
    _copy_params(tl, jl)
    x, grad_out = _data((6, 5))
    _assert_step_matches(tl, jl, x, grad_out)


def test_plain_batch_norm_matches_torch_nn():
    tl, jl = torch.nn.BatchNorm2d(5), abj.BatchNorm2d(5)
    _copy_params(tl, jl)
    x, grad_out = _data(SHAPE[2])
    _assert_step_matches(tl, jl, x, grad_out)


def test_untracked_statistics_and_affine_false():
    x, _ = _data(SHAPE[2])
    for tl, jl in (
        (
            ab.AugmentBatchNorm2d(5, track_running_stats=False, affine=False),
            abj.AugmentBatchNorm2d(5, track_running_stats=False, affine=False),
        ),
        (
            ab.IEBatchNorm2d(5, track_running_stats=False),
            abj.IEBatchNorm2d(5, track_running_stats=False),
        ),
    ):
        assert jl.running_mean is None and (jl.weight is None) == (tl.weight is None)
        tl.eval(), jl.eval()  # batch statistics, no noise
        assert_close(jl(jt.array(x)), tl(torch.from_numpy(x)))


# --- the functional API ------------------------------------------------------------------------


def test_functional_matches_pytorch_functional():
    x, _ = _data(SHAPE[2])
    weight, bias = np.linspace(0.5, 1.5, 5, dtype=np.float32), np.arange(5, dtype=np.float32)
    shift = np.array([0.2, -0.2, 0.0, 0.1, -0.05], np.float32)
    t_rm, t_rv = torch.zeros(5), torch.ones(5)
    j_rm, j_rv = jt.zeros(5).stop_grad(), jt.ones(5).stop_grad()
    ty = ab.functional.augment_batch_norm(
        torch.from_numpy(x),
        t_rm,
        t_rv,
        torch.from_numpy(weight),
        torch.from_numpy(bias),
        True,
        noise="uniform",
        mean_shift=torch.from_numpy(shift),
    )
    jy = AF.augment_batch_norm(
        jt.array(x),
        j_rm,
        j_rv,
        jt.array(weight),
        jt.array(bias),
        True,
        noise="uniform",
        mean_shift=jt.array(shift),
    )
    assert_close(jy, ty)
    assert_close(j_rm, t_rm, what="running_mean")
    assert_close(j_rv, t_rv, what="running_var")
    ones, zeros = np.ones(5, np.float32), np.zeros(5, np.float32)
    ty = ab.functional.ie_batch_norm(
        torch.from_numpy(x),
        None,
        None,
        None,
        None,
        torch.from_numpy(ones),
        torch.from_numpy(zeros),
        True,
    )
    jy = AF.ie_batch_norm(
        jt.array(x), None, None, None, None, jt.array(ones), jt.array(zeros), True
    )
    assert_close(jy, ty)


def test_sample_mean_shift_distributions_and_seeds():
    theta, n = 0.2, 20000
    rng = np.random.default_rng
    clip = AF.sample_mean_shift(n, theta=theta, noise="gaussian_clip", generator=rng(0)).numpy()
    reject = AF.sample_mean_shift(n, theta=theta, noise="gaussian_reject", generator=rng(1))
    uniform = AF.sample_mean_shift(n, theta=theta, noise="uniform", generator=rng(2)).numpy()
    reject = reject.numpy()
    # P(|z| > 0.2) = 0.8415 for z ~ N(0, 1): clip lands on ±θ, reject returns 0.
    assert abs(np.mean(np.abs(clip) == np.float32(theta)) - 0.8415) < 0.015
    assert abs(np.mean(reject == 0) - 0.8415) < 0.015 and np.abs(reject).max() <= theta
    assert np.abs(uniform).max() <= theta and abs(uniform.mean()) < 0.005
    assert abs(uniform.std() - theta / np.sqrt(3)) < 0.005
    again = AF.sample_mean_shift(n, theta=theta, noise="gaussian_clip", generator=rng(0))
    np.testing.assert_array_equal(again.numpy(), clip)
    jt.set_seed(3)
    first = AF.sample_mean_shift(8, theta=1.0).numpy()
    jt.set_seed(3)
    np.testing.assert_array_equal(AF.sample_mean_shift(8, theta=1.0).numpy(), first)


def test_layer_generator_gives_fresh_reproducible_noise():
    x, _ = _data(SHAPE[2])
    outs = []
    for _ in range(2):
        layer = abj.AugmentBatchNorm2d(5, theta=0.5, generator=np.random.default_rng(7))
        outs.append([layer(jt.array(x)).numpy() for _ in range(2)])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert not np.array_equal(outs[0][0], outs[0][1])  # a fresh δ at every step


# --- the seed's GauBatchNorm -------------------------------------------------------------------


def test_seed_usage_example():
    """The seed's README example, as written apart from the import line.

    Its 1-D input is one unbatched sample of 3 features: training mode has no batch statistics
    for it and says so; evaluation normalizes it with the running statistics.
    """
    from augmentbn.jittor import GauBatchNorm

    x = jt.array([1, 2, 3])
    y = jt.array([4, 5, 6])

    num_features = 3
    bn = GauBatchNorm(num_features)

    with pytest.raises(
        ValueError,
        match=r"GauBatchNorm: an input of shape \(3,\) is one "
        r"unbatched sample.*jt.stack\(\[x, y\]\)",
    ):
        bn(x), bn(y)

    bn.is_train = False
    out_x, out_y = bn(x), bn(y)

    assert int(bn.num_batches_tracked.item()) == 0  # the failed training call changed nothing
    assert out_x.shape == (3,)
    assert_close(out_x, np.array([1, 2, 3]) / np.sqrt(1 + 1e-5))
    assert_close(out_y, np.array([4, 5, 6]) / np.sqrt(1 + 1e-5))
    # The same two samples as a batch train as the error message says.
    bn.is_train = True
    assert bn(jt.stack([x, y])).shape == (2, 3)
    assert int(bn.num_batches_tracked.item()) == 1


def test_gau_batch_norm_is_reject_nabn_matching_pytorch():
    jl = abj.GauBatchNorm(5)
    assert (jl.noise, jl.theta, jl.running_stats, jl.sync) == (
        "gaussian_reject",
        0.2,
        "perturbed",
        True,
    )
    tl = ab.AugmentBatchNorm2d(5, noise="gaussian_reject")
    _copy_params(tl, jl)
    x, grad_out = _data(SHAPE[2])
    _assert_step_matches(
        tl, jl, x, grad_out, mean_shift=np.array([0.1, 0, -0.2, 0, 0.05], np.float32)
    )
    with pytest.raises(ValueError, match=r"GauBatchNorm: expected an input of shape \(N, 5"):
        jl(jt.array([1.0, 2.0, 3.0]))
    assert not abj.GauBatchNorm(3, is_train=False).is_train


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [abj.AugmentBatchNorm1d, abj.AugmentBatchNorm2d, abj.AugmentBatchNorm3d, abj.IEBatchNorm2d],
)
def test_wrong_rank_raises(cls):
    layer = cls(5)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected .*D input, got 6D"):
        layer(jt.zeros((4, 5, 2, 2, 2, 2)))
    assert int(layer.num_batches_tracked.item()) == 0


@pytest.mark.parametrize("cls", [abj.AugmentBatchNorm2d, abj.IEBatchNorm2d])
def test_wrong_channels_and_one_value_per_channel_raise(cls):
    layer = cls(5)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected 5 channels"):
        layer(jt.zeros((4, 6, 3, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(jt.zeros((1, 5, 1, 1)))
    assert int(layer.num_batches_tracked.item()) == 0
    assert np.all(layer.running_mean.numpy() == 0)
    layer.eval()(jt.zeros((1, 5, 1, 1)))  # fine with running statistics


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"theta": -1.0}, "theta must be >= 0"),
        ({"noise_std": 0.0}, "noise_std must be > 0"),
        ({"noise": "gaussian"}, "unknown noise"),
        ({"running_stats": "ema"}, "unknown running_stats"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"AugmentBatchNorm2d: {match}"):
        abj.AugmentBatchNorm2d(5, **kwargs)
    with pytest.raises(ValueError, match=match):
        AF.augment_batch_norm(jt.zeros((4, 5, 2, 2)), None, None, training=True, **kwargs)


def test_bad_mean_shift_and_generator_raise_and_update_nothing():
    layer = abj.AugmentBatchNorm2d(5)
    x, _ = _data(SHAPE[2])
    with pytest.raises(ValueError, match=r"AugmentBatchNorm2d: mean_shift must have shape \(5,\)"):
        layer(jt.array(x), mean_shift=jt.zeros((1, 5)))
    assert int(layer.num_batches_tracked.item()) == 0 and np.all(layer.running_mean.numpy() == 0)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        abj.AugmentBatchNorm2d(5, generator=torch.Generator())
    with pytest.raises(ValueError, match="device must be None"):
        AF.sample_mean_shift(5, device="cuda")


def test_nonfinite_input_keeps_running_stats_of_its_channels():
    for layer in (abj.AugmentBatchNorm2d(4), abj.IEBatchNorm2d(4)):
        x, _ = _data((4, 4, 3, 3))
        x[0, 2, 0, 0], x[1, 3, 1, 1] = np.nan, np.inf
        y = layer(jt.array(x)).numpy()
        assert np.isnan(y[:, 2]).any()  # the output shows the problem
        mean, var = layer.running_mean.numpy(), layer.running_var.numpy()
        assert mean[2] == 0 and var[2] == 1 and mean[3] == 0 and var[3] == 1
        assert mean[0] != 0 and var[1] != 1  # finite channels still update


def test_layer_state_reset_and_repr():
    layer = abj.IEBatchNorm2d(5)
    assert list(layer.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "weight_readjust",
        "bias_readjust",
    ]
    assert np.all(layer.bias_readjust.numpy() == -1) and np.all(layer.weight_readjust.numpy() == 0)
    assert layer.running_mean.is_stop_grad() and not layer.weight.is_stop_grad()
    layer(jt.array(_data(SHAPE[2])[0]))
    layer.bias_readjust.update(jt.zeros(5))
    layer.reset_parameters()
    assert np.all(layer.running_mean.numpy() == 0) and np.all(layer.bias_readjust.numpy() == -1)
    assert int(layer.num_batches_tracked.item()) == 0
    text = repr(abj.AugmentBatchNorm2d(5, noise="uniform", theta=0.3))
    assert "theta=0.3" in text and "noise='uniform'" in text


# --- models and weight conversion --------------------------------------------------------------


def _randomize_norm_state(model):
    """Non-trivial running statistics and affine parameters, so that eval exercises them."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith(("running_mean", "bias", "readjust")):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.3)


@pytest.mark.parametrize(
    "name,norm", [("resnet20", "nabn"), ("resnet164", "iebn"), ("unet", "nabn")]
)
def test_models_mirror_pytorch_names_shapes_and_layers(name, norm):
    kwargs = {"model_kwargs": {"base_width": 4}} if name == "unet" else {}
    tm = create_torch_model(name, norm=norm, num_classes=10, **kwargs)
    jm = abj.create_model(name, norm=norm, num_classes=10, **kwargs)
    t_state, j_state = tm.state_dict(), jm.state_dict()
    assert set(t_state) == set(j_state)
    for key, value in t_state.items():
        assert value.numel() == j_state[key].numel(), key
    t_norms = {n: type(m).__name__ for n, m in tm.named_modules() if "Norm" in type(m).__name__}
    j_norms = {n: type(m).__name__ for n, m in jm.named_modules() if n in t_norms}
    assert j_norms == t_norms  # the same placement: paper's NABN/IEBN sites, plain BN elsewhere


def test_resnet20_nabn_eval_logits_match_pytorch_both_ways():
    tm = create_torch_model("resnet20", norm="nabn", num_classes=10)
    _randomize_norm_state(tm)
    tm.eval()
    jm = abj.create_model("resnet20", norm="nabn", num_classes=10)
    result = abj.from_torch_state_dict(jm, tm.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    jm.eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x))
    assert_close(jm(jt.array(x)), expected, tol=1e-4)

    back = create_torch_model("resnet20", norm="nabn", num_classes=10)
    back.load_state_dict(abj.to_torch_state_dict(jm), strict=True)
    for key, value in tm.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(back.eval()(torch.from_numpy(x)), expected)


def test_unet_iebn_eval_matches_pytorch():
    kwargs = {"num_classes": 2, "in_chans": 1, "model_kwargs": {"base_width": 4}}
    tm = create_torch_model("unet", norm="iebn", **kwargs)
    _randomize_norm_state(tm)
    jm = abj.create_model("unet", norm="iebn", **kwargs)
    abj.from_torch_state_dict(jm, tm.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 1, 36, 36)).astype(np.float32)
    with torch.no_grad():
        expected = tm.eval()(torch.from_numpy(x))
    assert_close(jm.eval()(jt.array(x)), expected, tol=1e-4)


def test_conversion_errors_name_the_keys():
    jm = abj.create_model("resnet20", norm="bn", num_classes=10)
    state = create_torch_model("resnet20", norm="bn", num_classes=10).state_dict()
    state["extra.weight"] = state.pop("fc.bias")
    with pytest.raises(
        KeyError,
        match=r"missing keys \['fc.bias'\].*unexpected keys "
        r"\['extra.weight'\]",
    ):
        abj.from_torch_state_dict(jm, state)
    state = create_torch_model("resnet20", norm="bn", num_classes=7).state_dict()
    with pytest.raises(ValueError, match="'fc.bias' has shape"):
        abj.from_torch_state_dict(jm, state)
    with pytest.raises(
        ValueError, match="placement='paper' applies to norms with a paper placement"
    ):
        abj.create_model("resnet20", norm="bn", num_classes=10, placement="paper")


def test_resnet20_nabn_trains_a_step():
    model = abj.create_model("resnet20", norm="nabn", num_classes=10)
    optimizer = jt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    labels = jt.array(np.array([0, 1, 2, 3]))
    before = model.fc.weight.numpy().copy()
    loss = jt.nn.cross_entropy_loss(model(x), labels)
    optimizer.step(loss)
    assert np.isfinite(loss.item()) and not np.array_equal(model.fc.weight.numpy(), before)
    assert int(model.bn1.num_batches_tracked.item()) == 1
    assert model.bn1.running_mean.is_stop_grad()


# --- distributed (MPI) ------------------------------------------------------------------------

_MPI_SCRIPT = """
import sys
import numpy as np
import augmentbn.jittor as abj
import jittor as jt

out = sys.argv[1]
rank = jt.rank
full = np.random.default_rng(123).normal(2.0, 3.0, size=(6, 4, 3, 3)).astype("float32")
shard = jt.array(full[rank * 3:(rank + 1) * 3])
# A different generator on each rank: the rule is that rank 0's draw is used everywhere.
nabn = abj.AugmentBatchNorm2d(4, theta=0.5, noise="uniform",
                              generator=np.random.default_rng(10 + rank))
iebn = abj.IEBatchNorm2d(4)
iebn.weight_readjust.assign(jt.array(np.linspace(-1, 1, 4).astype("float32")))
results = {"nabn": nabn(shard).numpy(), "iebn": iebn(shard).numpy(), "in_mpi": jt.in_mpi}
for name, layer in (("nabn", nabn), ("iebn", iebn)):
    results[name + "_rm"] = layer.running_mean.numpy()
    results[name + "_rv"] = layer.running_var.numpy()
np.savez(f"{out}/rank{rank}.npz", **results)
"""


@pytest.mark.skipif(
    shutil.which("mpirun") is None or shutil.which("mpicc") is None,
    reason="MPI test needs mpirun and mpicc (Debian: openmpi-bin libopenmpi-dev)",
)
def test_mpi_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    script = tmp_path / "mpi_run.py"
    script.write_text(_MPI_SCRIPT)
    env = {**os.environ, "use_mkl": "0", "nvcc_path": "", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    subprocess.run(
        ["mpirun", "--allow-run-as-root", "-np", "2", sys.executable, str(script), str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert all(bool(r["in_mpi"]) for r in ranks)
    full = np.random.default_rng(123).normal(2.0, 3.0, size=(6, 4, 3, 3)).astype("float32")
    x = torch.from_numpy(full)
    delta = AF.sample_mean_shift(
        4, theta=0.5, noise="uniform", generator=np.random.default_rng(10)
    ).numpy()
    expected = {}
    rm, rv = torch.zeros(4), torch.ones(4)
    expected["nabn"] = ab.functional.augment_batch_norm(
        x, rm, rv, training=True, theta=0.5, noise="uniform", mean_shift=torch.from_numpy(delta)
    )
    expected["nabn_rm"], expected["nabn_rv"] = rm, rv
    rm, rv = torch.zeros(4), torch.ones(4)
    expected["iebn"] = ab.functional.ie_batch_norm(
        x, rm, rv, torch.ones(4), torch.zeros(4), torch.linspace(-1, 1, 4), -torch.ones(4), True
    )
    expected["iebn_rm"], expected["iebn_rv"] = rm, rv
    for name in ("nabn", "iebn"):
        got = np.concatenate([r[name] for r in ranks])
        np.testing.assert_allclose(got, expected[name].numpy(), rtol=0, atol=1e-5)
        for r in ranks:  # every process holds the statistics of the whole batch
            np.testing.assert_allclose(r[name + "_rm"], expected[name + "_rm"].numpy(), atol=1e-6)
            np.testing.assert_allclose(r[name + "_rv"], expected[name + "_rv"].numpy(), atol=1e-5)
