"""The modules: nn.BatchNorm's behaviour, state dicts, and bad input."""

import copy
import pickle

import pytest
import torch
from reference import iebn_reference, nabn_reference
from torch import nn

import augmentbn as ab

NABN = [ab.AugmentBatchNorm1d, ab.AugmentBatchNorm2d, ab.AugmentBatchNorm3d]
IEBN = [ab.IEBatchNorm1d, ab.IEBatchNorm2d, ab.IEBatchNorm3d]
BN = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]
SHAPE = {1: (6, 5, 4), 2: (4, 5, 3, 3), 3: (3, 5, 2, 3, 2)}


def _x(dims, seed=0, dtype=torch.float32):
    return torch.randn(SHAPE[dims], generator=torch.Generator().manual_seed(seed), dtype=dtype) + 1


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("noise", ["gaussian_clip", "gaussian_reject", "uniform"])
def test_nabn_module_training_matches_reference(dims, noise):
    layer = NABN[dims - 1](5, noise=noise, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    x = _x(dims, dtype=torch.float64)
    shift = torch.linspace(-0.2, 0.2, 5, dtype=torch.float64)
    y = layer(x, mean_shift=shift)
    expected, _, _, shifted, v = nabn_reference(x, layer.weight, layer.bias, shift, noise)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.running_mean, 0.1 * shifted, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * v, rtol=0, atol=1e-12)
    assert layer.num_batches_tracked.item() == 1


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_iebn_module_training_matches_reference(dims):
    layer = IEBN[dims - 1](5, dtype=torch.float64)
    with torch.no_grad():
        layer.weight_readjust.normal_()
        layer.bias_readjust.normal_()
    x = _x(dims, dtype=torch.float64)
    expected = iebn_reference(
        x, layer.weight, layer.bias, layer.weight_readjust, layer.bias_readjust
    )
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-10)


def test_iebn_initialization():
    layer = ab.IEBatchNorm2d(7)
    assert layer.weight_readjust.shape == (7,) and torch.all(layer.weight_readjust == 0)
    assert torch.all(layer.bias_readjust == -1) and torch.all(layer.weight == 1)
    with torch.no_grad():
        layer.bias_readjust.fill_(3.0)
    layer.reset_parameters()
    assert torch.all(layer.bias_readjust == -1)


@pytest.mark.parametrize("momentum", [None, 0.1])
@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d])
def test_momentum_none_is_cumulative_average(cls, momentum):
    kwargs = {"running_stats": "clean"} if cls is ab.AugmentBatchNorm2d else {}
    layer, bn = cls(5, momentum=momentum, **kwargs), nn.BatchNorm2d(5, momentum=momentum)
    for step in range(4):
        x = _x(2, seed=step)
        layer(x, **({"mean_shift": torch.zeros(5)} if cls is ab.AugmentBatchNorm2d else {}))
        bn(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert layer.num_batches_tracked == bn.num_batches_tracked == 4


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_nabn_eval_equals_batch_norm_exactly(dims):
    bn = BN[dims - 1](5)
    for step in range(3):
        bn(_x(dims, seed=step))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    layer = NABN[dims - 1](5, theta=1.0, generator=torch.Generator().manual_seed(0))
    layer.load_state_dict(bn.state_dict())
    bn.eval(), layer.eval()
    x = _x(dims, seed=9)
    assert torch.equal(layer(x), bn(x))
    layer.generator = torch.Generator().manual_seed(123)  # eval is independent of the generator
    assert torch.equal(layer(x), bn(x))


def test_same_generator_seed_same_training_output():
    x = _x(2)
    outs = []
    for _ in range(2):
        layer = ab.AugmentBatchNorm2d(5, theta=0.5, generator=torch.Generator().manual_seed(7))
        outs.append(torch.stack([layer(x), layer(x)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0][0], outs[0][1])  # fresh noise at every step


def test_track_running_stats_false_uses_batch_stats_in_eval_without_noise():
    layer = ab.AugmentBatchNorm2d(5, track_running_stats=False, theta=1.0).eval()
    assert layer.running_mean is None
    x = _x(2)
    assert torch.equal(
        layer(x), nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, True)
    )
    ie = ab.IEBatchNorm2d(5, track_running_stats=False).eval()
    expected = iebn_reference(x, ie.weight, ie.bias, ie.weight_readjust, ie.bias_readjust)
    torch.testing.assert_close(ie(x), expected)


@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d])
def test_affine_false(cls):
    layer = cls(5, affine=False)
    assert layer.weight is None and layer.bias is None
    x = _x(2).requires_grad_()
    (layer(x) * torch.randn(SHAPE[2])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d])
def test_state_dict_round_trips_with_batch_norm(cls):
    bn = nn.BatchNorm2d(5)
    bn(_x(2))
    with torch.no_grad():
        bn.weight.normal_()
    layer = cls(5)
    result = layer.load_state_dict(bn.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"weight_readjust", "bias_readjust"}
    for key, value in bn.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value)
    back = nn.BatchNorm2d(5)
    shared = {k: v for k, v in layer.state_dict().items() if k in back.state_dict()}
    back.load_state_dict(shared, strict=True)
    if cls is ab.AugmentBatchNorm2d:
        back.load_state_dict(layer.state_dict(), strict=True)  # the very same keys


def test_iebn_state_dict_shapes():
    sd = ab.IEBatchNorm2d(5).state_dict()
    assert sd["weight_readjust"].shape == (5,) and sd["bias_readjust"].shape == (5,)
    assert list(sd) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "weight_readjust",
        "bias_readjust",
    ] or set(sd) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "weight_readjust",
        "bias_readjust",
    }


def test_reset_running_stats_and_repr():
    layer = ab.AugmentBatchNorm2d(5, noise="uniform", theta=0.3)
    layer(_x(2))
    layer.reset_running_stats()
    assert torch.all(layer.running_mean == 0) and torch.all(layer.running_var == 1)
    assert layer.num_batches_tracked == 0
    text = repr(layer)
    assert "theta=0.3" in text and "noise='uniform'" in text and "running_stats='perturbed'" in text


def test_device_dtype_and_copies():
    layer = ab.AugmentBatchNorm2d(
        5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    assert layer.weight.dtype == torch.float64 and layer.running_mean.dtype == torch.float64
    assert (
        ab.IEBatchNorm2d(5, device="cpu", dtype=torch.float64).bias_readjust.dtype == torch.float64
    )
    clone = copy.deepcopy(layer)
    assert torch.equal(clone(_x(2, dtype=torch.float64)), layer(_x(2, dtype=torch.float64)))
    pickle.loads(pickle.dumps(ab.IEBatchNorm2d(3)))


def test_aliases():
    assert ab.GauBatchNorm2d is ab.AugmentBatchNorm2d
    assert ab.BAN2d is ab.IEBatchNorm2d


def test_sync_batchnorm_conversion_leaves_our_layers_alone():
    model = nn.Sequential(nn.Conv2d(3, 5, 1), ab.AugmentBatchNorm2d(5), ab.IEBatchNorm2d(5))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], ab.AugmentBatchNorm2d)
    assert isinstance(converted[2], ab.IEBatchNorm2d)


# --- bad input: the layer and the problem are named, nothing is updated ----------------------


@pytest.mark.parametrize("cls", NABN + IEBN)
def test_wrong_rank_raises(cls):
    layer = cls(5)
    bad = torch.randn(4, 5, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected .*D input, got 6D"):
        layer(bad)
    assert layer.num_batches_tracked == 0


@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm2d, ab.IEBatchNorm2d])
def test_wrong_channels_raises(cls):
    layer = cls(5)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected 5 channels"):
        layer(torch.randn(4, 6, 3, 3))
    assert layer.num_batches_tracked == 0 and torch.all(layer.running_mean == 0)


@pytest.mark.parametrize("cls", [ab.AugmentBatchNorm1d, ab.AugmentBatchNorm2d, ab.IEBatchNorm1d])
def test_one_value_per_channel_in_training_raises(cls):
    layer = cls(5)
    x = torch.randn(1, 5) if cls is not ab.AugmentBatchNorm2d else torch.randn(1, 5, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(x)
    assert layer.num_batches_tracked == 0
    layer.eval()(x)  # fine with running statistics


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"theta": -1.0}, "theta must be >= 0"),
        ({"noise_std": -1.0}, "noise_std must be > 0"),
        ({"noise": "gaussian"}, "unknown noise"),
        ({"running_stats": "ema"}, "unknown running_stats"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"AugmentBatchNorm2d: {match}"):
        ab.AugmentBatchNorm2d(5, **kwargs)


def test_bad_mean_shift_raises_and_updates_nothing():
    layer = ab.AugmentBatchNorm2d(5)
    with pytest.raises(ValueError, match="mean_shift must have shape"):
        layer(_x(2), mean_shift=torch.zeros(1, 5))
    assert torch.all(layer.running_mean == 0)


def test_nonfinite_input_does_not_poison_running_stats():
    layer = ab.AugmentBatchNorm2d(5)
    x = _x(2)
    x[0, 0, 0, 0] = float("nan")
    layer(x)
    assert torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_var).all()
    assert layer.running_mean[0] == 0 and layer.running_var[0] == 1


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
@pytest.mark.parametrize("layer", [ab.AugmentBatchNorm2d(3), ab.IEBatchNorm2d(3)])
def test_empty_input_in_eval_gives_empty_output(layer, shape):
    """As nn.BatchNorm2d in eval mode: nothing to normalize, no error."""
    assert layer.eval()(torch.randn(shape)).shape == shape
