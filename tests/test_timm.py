"""timm: augmentbn's norms by name in timm's factories, and convert_norm on timm's models."""

import pytest
import torch
from torch import nn

import augmentbn as ab
from augmentbn.convert import paper_placement

timm = pytest.importorskip("timm", reason='timm is not installed: pip install "augmentbn[timm]"')
from timm.layers import (  # noqa: E402
    BatchNormAct2d,
    create_norm_act_layer,
    create_norm_layer,
    get_norm_act_layer,
)

from augmentbn.integrations import timm as ab_timm  # noqa: E402
from augmentbn.integrations.timm import (  # noqa: E402
    AugmentBatchNormAct2d,
    GroupNormAct,
    IEBatchNormAct2d,
    InstanceNormAct2d,
)

NORM_ACT = {"nabn": AugmentBatchNormAct2d, "iebn": IEBatchNormAct2d}
NORM = {"nabn": ab.AugmentBatchNorm2d, "iebn": ab.IEBatchNorm2d}


@pytest.fixture(scope="module", autouse=True)
def registered():
    return ab_timm.register()


def _types(model):
    return [type(m) for m in model.modules()]


def _randomize_stats(model, seed=0):
    """Running statistics and affine parameters far from their defaults, so that a dropped or
    misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def test_register_is_idempotent_and_leaves_timm_names_alone(registered):
    norm = pytest.importorskip("timm.layers.create_norm")
    norm_act = pytest.importorskip("timm.layers.create_norm_act")
    # Every registry name and alias; timm's own names keep their classes (checked below).
    assert set(ab.layers.list_norm_layers()) <= set(registered)
    assert {"augmentbn", "gaubatchnorm", "ban"} <= set(registered)
    assert type(create_norm_layer("augmentbn", 8)) is ab.AugmentBatchNorm2d
    before = dict(norm._NORM_MAP), dict(norm_act._NORM_ACT_MAP)
    assert ab_timm.register() == registered
    assert (dict(norm._NORM_MAP), dict(norm_act._NORM_ACT_MAP)) == before
    assert norm._NORM_MAP["batchnorm"] is nn.BatchNorm2d
    assert norm._NORM_MAP["groupnorm"] is not ab.layers.get_norm_layer
    assert norm_act._NORM_ACT_MAP["batchnorm"] is BatchNormAct2d


def test_norm_and_norm_act_factories_by_name():
    assert type(create_norm_layer("nabn", 8)) is ab.AugmentBatchNorm2d
    assert type(create_norm_layer("iebn", 8)) is ab.IEBatchNorm2d
    assert create_norm_layer("nabn", 8, theta=0.05).theta == 0.05
    group = create_norm_layer("gn", 40)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 8  # gcd(40, 32)
    instance = create_norm_layer("in", 8)
    assert isinstance(instance, nn.InstanceNorm2d) and instance.affine

    layer = create_norm_act_layer("iebn", 8, act_layer="silu")
    assert type(layer) is IEBatchNormAct2d and isinstance(layer.act, nn.SiLU)
    assert type(create_norm_act_layer("nabn", 8, apply_act=False).act) is nn.Identity
    assert type(create_norm_act_layer("gn", 40)) is GroupNormAct
    assert type(create_norm_act_layer("in", 8)) is InstanceNormAct2d
    assert create_norm_act_layer("bn", 8, act_layer="relu").__class__ is BatchNormAct2d
    # a class or a partial with arguments, where timm wants a norm-act layer
    partial = get_norm_act_layer(ab.get_norm_layer("nabn", theta=0.3), act_layer="relu")
    built = partial(16)
    assert type(built) is AugmentBatchNormAct2d and built.theta == 0.3
    assert isinstance(built.act, nn.ReLU)


def test_norm_act_layers_compute_norm_then_act():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5)
    for name, plain in NORM.items():
        layer = create_norm_act_layer(name, 6, act_layer="silu").eval()
        _randomize_stats(layer)
        reference = plain(6).eval()
        reference.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x), nn.functional.silu(reference(x)), rtol=0, atol=0)
    instance = InstanceNormAct2d(6, act_layer="relu")
    expected = torch.relu(
        nn.functional.instance_norm(x, weight=instance.weight, bias=instance.bias)
    )
    torch.testing.assert_close(instance(x), expected)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
@pytest.mark.parametrize("norm", ["nabn", "iebn"])
def test_create_model_by_name(arch, norm):
    torch.manual_seed(0)
    model = timm.create_model(arch, norm_layer=norm, num_classes=3)
    baseline = timm.create_model(arch, num_classes=3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in baseline.modules())
    expected = NORM_ACT[norm] if arch == "efficientnet_b0" else NORM[norm]
    types = _types(model)
    assert types.count(expected) == n_bn and not any(issubclass(t, nn.BatchNorm2d) for t in types)
    # timm's state-dict names are kept: BatchNorm weights load as they are (IEBN adds its gate)
    _randomize_stats(baseline)
    missing, unexpected = model.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected
    assert all(k.endswith(("weight_readjust", "bias_readjust")) for k in missing)
    assert len(missing) == (2 * n_bn if norm == "iebn" else 0)
    x = torch.randn(2, 3, 32, 32)
    if norm == "nabn":  # evaluation is plain BatchNorm
        torch.testing.assert_close(model.eval()(x), baseline.eval()(x), rtol=1e-5, atol=1e-5)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_create_model_takes_layer_arguments_and_every_name():
    model = timm.create_model(
        "efficientnet_b0", norm_layer=ab.get_norm_layer("nabn", theta=0.3), num_classes=3
    )
    thetas = {m.theta for m in model.modules() if isinstance(m, AugmentBatchNormAct2d)}
    assert thetas == {0.3}
    for name, cls in (("gn", GroupNormAct), ("in", InstanceNormAct2d)):
        model = timm.create_model("efficientnet_b0", norm_layer=name, num_classes=3)
        assert cls in _types(model)
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "regnetx_002", "cspresnet50"])
def test_convert_norm_converts_every_batchnormact_and_back(arch):
    torch.manual_seed(0)
    model = _randomize_stats(timm.create_model(arch, num_classes=3)).eval()
    n = _types(model).count(BatchNormAct2d)
    assert n > 40
    acts = [m.act for m in model.modules() if isinstance(m, BatchNormAct2d)]
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)

    model = ab.convert_norm(model, "nabn", theta=0.1)
    types = _types(model)
    assert types.count(AugmentBatchNormAct2d) == n and BatchNormAct2d not in types
    assert [m.act for m in model.modules() if isinstance(m, AugmentBatchNormAct2d)] == acts
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # eval NABN is BatchNorm

    model = ab.convert_norm(model, "bn")
    assert _types(model).count(BatchNormAct2d) == n
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_convert_norm_to_iebn_keeps_the_activation_after_the_gate():
    torch.manual_seed(0)
    model = _randomize_stats(timm.create_model("efficientnet_b0", num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model = ab.convert_norm(model, "iebn")
    layers = [m for m in model.modules() if isinstance(m, IEBatchNormAct2d)]
    assert len(layers) == 49
    assert not torch.allclose(model(x), expected, atol=1e-3)  # the gate starts at sigmoid(-1)
    with torch.no_grad():
        for m in layers:  # a gate of sigmoid(30) = 1 (in float32) makes IEBN plain BatchNorm
            m.bias_readjust.fill_(30.0)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_paper_placement_on_timm_resnets():
    for arch, shortcut in (("resnet18", "downsample.1"), ("resnet26d", "downsample.2")):
        model = timm.create_model(arch, num_classes=3)
        names = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        shortcuts = {n for n in names if n.endswith(shortcut)}
        last = "bn2" if arch == "resnet18" else "bn3"
        lasts = {n for n in names if n.endswith(last) and n.startswith("layer")}
        assert shortcuts and lasts
        assert paper_placement(model, "nabn") == {"bn1"} | lasts | shortcuts
        assert paper_placement(model, "iebn") == names - shortcuts
        converted = ab.convert_norm(model, "iebn", placement="paper")
        kinds = {n: type(m) for n, m in converted.named_modules() if n in names}
        assert {n for n, t in kinds.items() if t is nn.BatchNorm2d} == shortcuts
