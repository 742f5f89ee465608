"""convert_sync_norm / revert_sync_norm: the layer types, the state carried over, round trips."""

import pytest
import torch
from torch import nn

import augmentbn as ab
from augmentbn.layers import SyncBatchNorm1d, SyncBatchNorm2d
from augmentbn.models import create_model


def _model(norm="nabn"):
    """A CIFAR ResNet-8 with the paper's placement: NABN (or IEBN) and plain BN side by side,
    with non-trivial state."""
    torch.manual_seed(0)
    kw = {"theta": 0.3} if norm == "nabn" else {}
    model = create_model(
        "resnet_cifar",
        norm=norm,
        num_classes=10,
        placement="paper",
        model_kwargs={"depth": 8},
        **kw,
    )
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean"):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(17)
            if hasattr(m, "weight_readjust"):
                m.weight_readjust.normal_()
    return model


def _kinds(model):
    return {type(m) for m in model.modules()}


@pytest.mark.parametrize("norm", ["nabn", "iebn"])
def test_round_trip_keeps_state_types_and_outputs(norm):
    model = _model(norm).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    synced = ab.convert_sync_norm(model)
    plain_cls = ab.AugmentBatchNorm2d if norm == "nabn" else ab.IEBatchNorm2d
    sync_cls = ab.SyncAugmentBatchNorm2d if norm == "nabn" else ab.SyncIEBatchNorm2d
    assert sync_cls in _kinds(synced) and SyncBatchNorm2d in _kinds(synced)
    assert not _kinds(synced) & {plain_cls, nn.BatchNorm2d}
    # The same tensors: the optimizer made before the conversion still trains the model.
    assert all(p is params[k] for k, p in synced.named_parameters())
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for p in synced.parameters()
    }
    assert synced.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in synced.state_dict().items())
    assert not synced.training and torch.equal(synced(x), before)
    if norm == "nabn":
        layer = next(m for m in synced.modules() if isinstance(m, sync_cls))
        assert layer.theta == 0.3 and layer.noise == "gaussian_clip"

    back = ab.revert_sync_norm(synced)
    assert plain_cls in _kinds(back) and nn.BatchNorm2d in _kinds(back)
    assert not _kinds(back) & {sync_cls, SyncBatchNorm2d}
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())
    assert torch.equal(back(x), before)


def test_hyperparameters_mode_generator_and_group_carried_over():
    gen = torch.Generator().manual_seed(5)
    layer = ab.AugmentBatchNorm1d(
        4,
        eps=1e-3,
        momentum=None,
        affine=False,
        noise="uniform",
        noise_std=0.5,
        running_stats="clean",
        generator=gen,
        dtype=torch.float64,
    ).train()
    group = object()  # a stand-in: the group is only stored until the layer synchronizes
    synced = ab.convert_sync_norm(layer, process_group=group)
    assert type(synced) is ab.SyncAugmentBatchNorm1d and synced.process_group is group
    for name in ("eps", "momentum", "affine", "noise", "noise_std", "running_stats", "theta"):
        assert getattr(synced, name) == getattr(layer, name), name
    assert synced.generator is gen and synced.training and synced.weight is None
    assert synced.running_mean is layer.running_mean and synced.running_mean.dtype == torch.float64
    reverted = ab.revert_sync_norm(synced)
    assert type(reverted) is ab.AugmentBatchNorm1d and reverted.generator is gen
    assert reverted.momentum is None and reverted.running_stats == "clean"


def test_shared_layers_stay_shared_and_a_layer_converts_itself():
    shared = nn.BatchNorm1d(3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    synced = ab.convert_sync_norm(model)
    assert synced[0] is synced[2] and type(synced[0]) is SyncBatchNorm1d
    assert type(ab.convert_sync_norm(nn.BatchNorm1d(3))) is SyncBatchNorm1d
    untracked = ab.convert_sync_norm(nn.BatchNorm1d(3, track_running_stats=False))
    assert untracked.running_mean is None and untracked.num_batches_tracked is None


def test_other_layers_are_left_alone():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(MyBN(3), nn.GroupNorm(1, 3), nn.SyncBatchNorm(3))
    kinds = [type(m) for m in ab.convert_sync_norm(model)]
    assert kinds == [MyBN, nn.GroupNorm, nn.SyncBatchNorm]
    # A foreign nn.SyncBatchNorm does not know its dimensionality: revert leaves it.
    assert type(ab.revert_sync_norm(model)[2]) is nn.SyncBatchNorm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_norm_on_cuda_becomes_torch_sync_batch_norm_and_back():
    model = nn.Sequential(nn.BatchNorm3d(3), ab.IEBatchNorm3d(3)).cuda()
    synced = ab.convert_sync_norm(model)
    assert [type(m) for m in synced] == [nn.SyncBatchNorm, ab.SyncIEBatchNorm3d]
    assert [type(m) for m in ab.revert_sync_norm(synced)] == [nn.BatchNorm3d, ab.IEBatchNorm3d]
