"""convert_norm on torchvision's ResNets and on arbitrary modules."""

import pytest
import torch
from torch import nn

import augmentbn as ab
from augmentbn.convert import paper_placement

torchvision = pytest.importorskip("torchvision", reason="convert tests use torchvision's ResNets")


def _trained_resnet(builder, seed=0):
    torch.manual_seed(seed)
    model = builder(num_classes=10)
    # Give every BN non-trivial state, as a trained model would have.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(17)
    return model.eval()


@pytest.mark.parametrize("to", ["nabn", "iebn"])
def test_resnet18_eval_unchanged_for_nabn_and_round_trip(to):
    model = _trained_resnet(torchvision.models.resnet18)
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = ab.convert_norm(model, to, placement="all")
    kinds = {type(m) for m in converted.modules()}
    assert (ab.AugmentBatchNorm2d if to == "nabn" else ab.IEBatchNorm2d) in kinds
    assert nn.BatchNorm2d not in kinds
    assert not converted.training
    if to == "nabn":
        assert (converted(x) - before).abs().max().item() == 0
    back = ab.convert_norm(converted, "bn")
    assert {type(m) for m in back.modules()} & {ab.AugmentBatchNorm2d, ab.IEBatchNorm2d} == set()
    assert (back(x) - before).abs().max().item() == 0
    for key, value in back.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_num_batches_tracked_dtype_and_train_mode_carry_over():
    model = _trained_resnet(torchvision.models.resnet18).double().train()
    converted = ab.convert_norm(model, "nabn", theta=0.3, noise="uniform")
    layer = converted.bn1
    assert layer.training and layer.running_mean.dtype == torch.float64
    assert (
        layer.num_batches_tracked.item() == 17 and layer.theta == 0.3 and layer.noise == "uniform"
    )


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def test_paper_placement_on_resnet18_and_resnet50():
    # NABN: stem + last BN of every block + shortcut BNs.
    r18 = ab.convert_norm(torchvision.models.resnet18(), "nabn", placement="paper")
    assert _count(r18, ab.AugmentBatchNorm2d) == 1 + 8 + 3
    assert _count(r18, nn.BatchNorm2d) == 8  # bn1 of each basic block
    assert isinstance(r18.layer1[0].bn2, ab.AugmentBatchNorm2d)
    assert isinstance(r18.layer2[0].downsample[1], ab.AugmentBatchNorm2d)
    r50 = ab.convert_norm(torchvision.models.resnet50(), "nabn", placement="paper")
    assert _count(r50, ab.AugmentBatchNorm2d) == 1 + 16 + 4
    # IEBN: every BN but the shortcut's.
    r50 = ab.convert_norm(torchvision.models.resnet50(), "iebn", placement="paper")
    assert _count(r50, ab.IEBatchNorm2d) == 1 + 16 * 3
    assert _count(r50, nn.BatchNorm2d) == 4
    assert type(r50.layer3[0].downsample[1]) is nn.BatchNorm2d


def test_paper_placement_unknown_architecture_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(
        ValueError, match="placement='paper' needs to know the role of each norm layer"
    ):
        ab.convert_norm(model, "nabn", placement="paper")
    with pytest.raises(ValueError, match="register_block"):
        paper_placement(model, "iebn")


def test_filter_and_any_module():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm3d(4)))
    converted = ab.convert_norm(model, "iebn", filter=lambda name, m: name != "1")
    assert type(converted[1]) is nn.BatchNorm1d
    assert type(converted[2][0]) is ab.IEBatchNorm3d
    # A norm layer itself is converted and returned.
    assert type(ab.convert_norm(nn.BatchNorm2d(3), "nabn")) is ab.AugmentBatchNorm2d


def test_shared_layer_stays_shared():
    bn = nn.BatchNorm2d(4)
    model = nn.ModuleDict({"a": bn, "b": nn.Sequential(bn)})
    converted = ab.convert_norm(model, "nabn")
    assert converted["a"] is converted["b"][0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep BatchNorm.s state"):
        ab.convert_norm(nn.BatchNorm2d(3), "gn")
    with pytest.raises(ValueError, match="unknown placement"):
        ab.convert_norm(nn.BatchNorm2d(3), "nabn", placement="some")
    with pytest.raises(ValueError, match="takes no layer arguments"):
        ab.convert_norm(nn.BatchNorm2d(3), "bn", theta=0.1)


def test_norm_factory():
    assert type(ab.create_norm_layer("nabn", 8, spatial_dims=3, theta=0.1)) is ab.AugmentBatchNorm3d
    assert type(ab.create_norm_layer("iebn", 8, spatial_dims=1)) is ab.IEBatchNorm1d
    gn = ab.create_norm_layer("gn", 48)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 16
    assert ab.create_norm_layer("in", 8).affine
    assert ab.get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        ab.get_norm_layer("ln")


def test_sync_batchnorm_converts_as_a_2d_layer():
    model = _trained_resnet(torchvision.models.resnet18)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n = sum(type(m) is nn.SyncBatchNorm for m in synced.modules())
    assert n == 20
    converted = ab.convert_norm(synced, "nabn")
    assert sum(type(m) is ab.AugmentBatchNorm2d for m in converted.modules()) == n
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    back = ab.convert_norm(nn.Sequential(nn.SyncBatchNorm(4)), "bn")
    assert type(back[0]) is nn.BatchNorm2d


class _MyBatchNorm(nn.BatchNorm2d):
    """A subclass convert_norm does not know: its forward may differ from BatchNorm's."""


@pytest.mark.parametrize(
    ("model", "kwargs", "reason"),
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), {}, "it has no BatchNorm layer"),
        (nn.Sequential(nn.GroupNorm(2, 4)), {}, "it has no BatchNorm layer"),
        (
            nn.Sequential(_MyBatchNorm(4)),
            {},
            "BatchNorm-like layers of types it does not convert (",
        ),
        (
            nn.Sequential(nn.BatchNorm2d(4)),
            {"filter": lambda name, layer: False},
            "placement or filter excluded all of its 1 BatchNorm layers",
        ),
    ],
)
def test_a_call_that_converts_nothing_warns_why(model, kwargs, reason):
    with pytest.warns(UserWarning, match="converted no layer of Sequential") as record:
        ab.convert_norm(model, "nabn", **kwargs)
    assert len(record) == 1 and reason in str(record[0].message)
    if isinstance(model[0], _MyBatchNorm):
        assert "._MyBatchNorm); it converts nn.BatchNorm1d/2d/3d" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller


def test_a_call_that_converts_something_does_not_warn(recwarn):
    ab.convert_norm(nn.Sequential(nn.BatchNorm2d(4), _MyBatchNorm(4)), "iebn")
    assert not [w for w in recwarn if "converted no layer" in str(w.message)]
