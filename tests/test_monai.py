"""MONAI: augmentbn's norms by name in MONAI's ``Norm`` factory and networks."""

import pytest
import torch
from torch import nn

import augmentbn as ab

pytest.importorskip("monai", reason='MONAI is not installed: pip install "augmentbn[monai]"')
from monai.losses import DiceLoss
from monai.networks.layers.factories import Norm
from monai.networks.nets import BasicUNet, UNet

from augmentbn.integrations import monai as ab_monai

LAYERS = {
    "nabn": (ab.AugmentBatchNorm1d, ab.AugmentBatchNorm2d, ab.AugmentBatchNorm3d),
    "iebn": (ab.IEBatchNorm1d, ab.IEBatchNorm2d, ab.IEBatchNorm3d),
}
KWARGS = {"nabn": ({"theta": 0.3}, "theta", 0.3), "iebn": ({"momentum": 0.2}, "momentum", 0.2)}
SIZE = {2: 32, 3: 16}


@pytest.fixture(scope="module", autouse=True)
def registered():
    return ab_monai.register()


def test_register_is_idempotent_and_leaves_monai_names_alone(registered):
    # Every registry name and alias; MONAI's own names keep their classes (checked below).
    assert set(ab.layers.list_norm_layers()) <= set(registered)
    assert {"augmentbn", "gaubatchnorm", "ban"} <= set(registered)
    assert type(Norm["augmentbn", 2](num_features=4)) is ab.AugmentBatchNorm2d
    components = dict(Norm.components)
    assert ab_monai.register() == registered
    assert Norm.components == components
    assert Norm["batch", 2] is nn.BatchNorm2d and Norm["instance", 3] is nn.InstanceNorm3d
    assert Norm["group", 2] is nn.GroupNorm
    for name, classes in LAYERS.items():
        for dims in (1, 2, 3):
            assert Norm[name, dims] is classes[dims - 1]
    assert Norm["bn", 3] is nn.BatchNorm3d
    assert Norm["gn", 2](num_features=40).num_groups == 8  # gcd(40, 32)
    assert Norm["in", 2](num_features=4).affine


def _unet(kind, dims, norm):
    if kind == "UNet":
        return UNet(
            spatial_dims=dims,
            in_channels=1,
            out_channels=2,
            channels=(4, 8, 16),
            strides=(2, 2),
            num_res_units=1,
            norm=norm,
        )
    return BasicUNet(
        spatial_dims=dims, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), norm=norm
    )


def _norms(model):
    kinds = (nn.modules.batchnorm._BatchNorm, ab.layers.BatchNormBase)
    return [m for m in model.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("kind", ["UNet", "BasicUNet"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["nabn", "iebn"])
def test_networks_take_each_method_by_name_and_with_arguments(kind, dims, method):
    n = len(_norms(_unet(kind, dims, "batch")))
    assert n > 0
    x = torch.randn(2, 1, *[SIZE[dims]] * dims)
    kwargs, attribute, value = KWARGS[method]
    for norm in (method, (method, kwargs)):
        model = _unet(kind, dims, norm)
        layers = _norms(model)
        assert len(layers) == n
        assert {type(m) for m in layers} == {LAYERS[method][dims - 1]}
        if isinstance(norm, tuple):
            assert {getattr(m, attribute) for m in layers} == {value}
        assert model(x).shape == (2, 2, *x.shape[2:])


@pytest.mark.parametrize(
    ("kind", "dims", "method"), [("UNet", 3, "nabn"), ("BasicUNet", 2, "iebn")]
)
def test_training_steps_with_dice_loss(kind, dims, method):
    torch.manual_seed(0)
    model = _unet(kind, dims, method)
    size = SIZE[dims]
    x = torch.randn(2, 1, *[size] * dims)
    # a learnable target: foreground where the input is positive
    target = torch.cat([(x <= 0), (x > 0)], 1).float()
    loss_fn = DiceLoss(softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        loss = loss_fn(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for layer in _norms(model):
        assert layer.num_batches_tracked.item() == 5
        assert not torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean))
