"""Tests of augmentbn.models: every model with every norm, parameter counts, paper placements."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from augmentbn.layers import (
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    IEBatchNorm2d,
    IEBatchNorm3d,
)
from augmentbn.models import create_model, list_models, resnet_cifar

NORMS = ("bn", "nabn", "iebn", "gn", "in")
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164")
IMAGENET_RESNETS = ("resnet18", "resnet34", "resnet50")
NABN = (AugmentBatchNorm2d, AugmentBatchNorm3d)
IEBN = (IEBatchNorm2d, IEBatchNorm3d)
PLAIN_BN = (nn.BatchNorm2d, nn.BatchNorm3d)
NUM_CLASSES = 3

# name -> (input shape, model_kwargs); segmentation logits keep the input's spatial size.
INPUTS = {
    **{name: ((2, 3, 16, 16), {}) for name in CIFAR_RESNETS},
    "resnext29_8x64d": ((2, 3, 16, 16), {}),
    "resnet_cifar": ((2, 3, 16, 16), {"depth": 11, "block": "bottleneck"}),
    **{name: ((2, 3, 64, 64), {}) for name in IMAGENET_RESNETS},
    "unet": ((2, 1, 32, 32), {"base_width": 8}),
    "unet3d": ((2, 1, 16, 16, 32), {"base_width": 8}),
}
SEGMENTATION = {"unet", "unet3d"}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def of_type(model: nn.Module, types: tuple[type, ...]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) in types}


def test_list_models_covers_both_papers_2d_and_3d():
    assert set(list_models()) == set(INPUTS)
    assert list_models() == sorted(list_models())
    assert list_models("unet*") == ["unet", "unet3d"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_model_with_every_norm_runs_forward_and_backward(name, norm):
    torch.manual_seed(0)
    shape, model_kwargs = INPUTS[name]
    model = create_model(
        name, norm=norm, num_classes=NUM_CLASSES, in_chans=shape[1], model_kwargs=model_kwargs
    )
    x = torch.randn(shape)
    out = model(x)
    expected = (
        (shape[0], NUM_CLASSES, *shape[2:]) if name in SEGMENTATION else (shape[0], NUM_CLASSES)
    )
    assert out.shape == expected
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    norm_types = {
        "bn": PLAIN_BN,
        "nabn": NABN,
        "iebn": IEBN,
        "gn": (nn.GroupNorm,),
        "in": (nn.InstanceNorm2d, nn.InstanceNorm3d),
    }[norm]
    assert of_type(model, norm_types), f"{name} has no {norm} layer"
    if norm in ("gn", "in"):
        assert not of_type(model, PLAIN_BN)


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        ("resnet20", 10, 272_474),
        ("resnet32", 10, 466_906),
        ("resnet44", 10, 661_338),
        ("resnet56", 10, 855_770),
        ("resnet110", 10, 1_730_714),
        ("resnet164", 100, 1_727_284),
    ],
)
def test_cifar_resnet_parameter_counts(name, num_classes, expected):
    assert count_params(create_model(name, num_classes=num_classes)) == expected


def test_resnext29_parameter_count_matches_the_resnext_paper():
    # Xie et al. (2017), Table 7: ResNeXt-29 8×64d on CIFAR-10 has 34.4M parameters.
    params = count_params(create_model("resnext29_8x64d", num_classes=10))
    assert round(params / 1e6, 1) == 34.4


def _unet_params(c: int, k: int, w: int, kernel: int) -> int:
    """The U-Net layout written out: double convs (no conv bias, 2 affine norms each), 1×1 head."""

    def double(i: int, o: int, m: int | None = None) -> int:
        m = m or o
        return kernel * (i * m + m * o) + 2 * (m + o)

    encoder = double(c, w) + double(w, 2 * w) + double(2 * w, 4 * w) + double(4 * w, 8 * w)
    encoder += double(8 * w, 8 * w)
    decoder = (
        double(16 * w, 4 * w, 8 * w)
        + double(8 * w, 2 * w, 4 * w)
        + double(4 * w, w, 2 * w)
        + double(2 * w, w, w)
    )
    return encoder + decoder + w * k + k


@pytest.mark.parametrize(("name", "kernel"), [("unet", 9), ("unet3d", 27)])
def test_unet_parameter_count_matches_its_layout(name, kernel):
    for c, k, w in [(3, 2, 64), (1, 3, 8)]:
        model = create_model(name, num_classes=k, in_chans=c, model_kwargs={"base_width": w})
        assert count_params(model) == _unet_params(c, k, w, kernel)


@pytest.mark.parametrize("shape", [(2, 1, 36, 44), (2, 1, 16, 20, 18)])
def test_unet_keeps_sizes_that_are_not_multiples_of_16(shape):
    name = "unet" if len(shape) == 4 else "unet3d"
    model = create_model(name, num_classes=2, in_chans=1, model_kwargs={"base_width": 4})
    assert model(torch.randn(shape)).shape == (2, 2, *shape[2:])


def test_unet_with_transposed_convolutions():
    model = create_model(
        "unet", num_classes=2, in_chans=1, model_kwargs={"base_width": 4, "upsampling": "transpose"}
    )
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def _cifar_bn_counts(depth: int, bottleneck: bool) -> tuple[int, int, int]:
    """(all BNs, blocks, shortcut BNs) of a CIFAR ResNet, from its layout."""
    n = (depth - 2) // (9 if bottleneck else 6)
    blocks = 3 * n
    # Stage 1 changes the width only with bottlenecks (16 -> 64); stages 2 and 3 always do.
    shortcuts = 3 if bottleneck else 2
    per_block = 3 if bottleneck else 2
    return 1 + per_block * blocks + shortcuts, blocks, shortcuts


@pytest.mark.parametrize(
    ("name", "depth", "bottleneck"), [("resnet20", 20, False), ("resnet164", 164, True)]
)
def test_paper_placement_counts(name, depth, bottleneck):
    total, blocks, shortcuts = _cifar_bn_counts(depth, bottleneck)
    # DESIGN.md 1.1: NABN at the stem BN, the last BN of every block and every shortcut BN.
    model = create_model(name, norm="nabn", num_classes=10)
    assert len(of_type(model, NABN)) == 1 + blocks + shortcuts
    assert len(of_type(model, PLAIN_BN)) == total - (1 + blocks + shortcuts)
    last = "bn3" if bottleneck else "bn2"
    for block_name, block in model.named_modules():
        if block_name.count(".") == 1 and block_name.startswith("layer"):
            assert isinstance(getattr(block, last), AugmentBatchNorm2d)
            assert type(block.bn1) is nn.BatchNorm2d
    assert isinstance(model.bn1, AugmentBatchNorm2d)
    # DESIGN.md 1.2: IEBN everywhere except the shortcut, which keeps plain BN.
    model = create_model(name, norm="iebn", num_classes=10)
    assert len(of_type(model, IEBN)) == total - shortcuts
    plain = of_type(model, PLAIN_BN)
    assert len(plain) == shortcuts
    assert all(n.endswith("downsample.1") for n in plain)
    # placement="all" replaces every BN.
    model = create_model(name, norm="nabn", num_classes=10, placement="all")
    assert len(of_type(model, NABN)) == total and not of_type(model, PLAIN_BN)


def test_paper_placement_of_resnext_and_unet():
    # ResNeXt-29: stem + 9 blocks' bn3 + 3 shortcuts; U-Net: both BNs of its 9 double convs.
    model = create_model("resnext29_8x64d", norm="nabn", num_classes=10)
    assert len(of_type(model, NABN)) == 1 + 9 + 3
    model = create_model("resnext29_8x64d", norm="iebn", num_classes=10)
    assert set(of_type(model, PLAIN_BN)) == {f"layer{i}.0.downsample.1" for i in (1, 2, 3)}
    for name in ("unet", "unet3d"):
        model = create_model(name, norm="nabn", num_classes=2, model_kwargs={"base_width": 4})
        assert len(of_type(model, NABN)) == 18 and not of_type(model, PLAIN_BN)
        model = create_model(name, norm="iebn", num_classes=2, model_kwargs={"base_width": 4})
        assert len(of_type(model, IEBN)) == 18 and not of_type(model, PLAIN_BN)


@pytest.mark.parametrize("norm", ["nabn", "iebn"])
def test_torchvision_resnet50_state_dict_loads(norm):
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.resnet50().state_dict()
    model = create_model("resnet50", norm=norm, num_classes=1000)
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(
        k.rsplit(".", 1)[1] in ("weight_readjust", "bias_readjust") for k in result.missing_keys
    )
    # torchvision's ResNet-50: 53 BNs = stem + 16 bottlenecks × 3 + 4 shortcuts.
    replaced = of_type(model, NABN if norm == "nabn" else IEBN)
    assert len(replaced) == (1 + 16 + 4 if norm == "nabn" else 53 - 4)
    readjust = 2 * len(of_type(model, IEBN))
    assert len(result.missing_keys) == readjust
    loaded = dict(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_norm_kwargs_reach_the_layers():
    model = create_model("resnet20", norm="nabn", num_classes=10, theta=0.1, noise="uniform")
    layers = of_type(model, NABN).values()
    assert layers and all(m.theta == 0.1 and m.noise == "uniform" for m in layers)
    model = create_model("resnet20", norm="gn", num_classes=10, num_groups=4)
    assert all(m.num_groups == 4 for m in of_type(model, (nn.GroupNorm,)).values())
    model = create_model("resnet20", norm=IEBatchNorm2d, num_classes=10, eps=1e-3)
    assert len(of_type(model, IEBN)) == 21 and all(
        m.eps == 1e-3 for m in model.modules() if isinstance(m, IEBatchNorm2d)
    )


def test_initialization_as_the_references():
    torch.manual_seed(0)
    model = create_model("resnet56", norm="iebn", num_classes=10)
    conv = model.layer3[1].conv1  # 64 -> 64, 3×3: He-normal, std sqrt(2 / (64 · 9))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert conv.weight.mean().abs().item() < 0.005
    for m in of_type(model, IEBN).values():
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
        assert torch.equal(m.weight_readjust, torch.zeros_like(m.weight_readjust))
        assert torch.equal(m.bias_readjust, torch.full_like(m.bias_readjust, -1.0))


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_grayscale_input(name):
    model = create_model(name, num_classes=4, in_chans=1).eval()
    assert model.conv1.weight.shape[1] == 1
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)


def test_pretrained_stem_adapted_to_grayscale_keeps_the_response_to_gray_images():
    pytest.importorskip("torchvision")
    from augmentbn.models.resnet import _adapt_stem

    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
    gray = torch.randn(1, 1, 16, 16)
    for in_chans in (1, 2, 5):
        conv = _adapt_stem(rgb, in_chans, pretrained=True)
        expected = rgb(gray.expand(1, 3, 16, 16))
        torch.testing.assert_close(conv(gray.expand(1, in_chans, 16, 16)), expected)


def test_unet_spatial_dims_as_a_model_argument():
    model = create_model(
        "unet",
        norm="in",
        num_classes=2,
        in_chans=1,
        model_kwargs={"base_width": 4, "spatial_dims": 3},
    )
    assert of_type(model, (nn.InstanceNorm3d,)) and not of_type(model, (nn.InstanceNorm2d,))
    assert model(torch.randn(1, 1, 16, 16, 32)).shape == (1, 2, 16, 16, 32)


def test_resnet_cifar_any_valid_depth_and_clear_errors():
    assert len(resnet_cifar(8).layer1) == 1
    assert len(resnet_cifar(11, block="bottleneck").layer3) == 1
    with pytest.raises(ValueError, match="6n\\+2 for basic blocks, e.g. 20, 32, 44, 56, 110"):
        resnet_cifar(21)
    with pytest.raises(ValueError, match="9n\\+2 for bottleneck"):
        resnet_cifar(21, block="bottleneck")
    with pytest.raises(ValueError, match="block must be one of"):
        resnet_cifar(20, block="wide")


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21", num_classes=10)
    with pytest.raises(ValueError, match="placement='paper'"):
        create_model("resnet20", norm="gn", num_classes=10, placement="paper")
    with pytest.raises(ValueError, match="placement must be one of"):
        create_model("resnet20", norm="nabn", num_classes=10, placement="middle")
    with pytest.raises(ValueError, match="unknown norm"):
        create_model("resnet20", norm="ln", num_classes=10)
