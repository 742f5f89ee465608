"""``augmentbn.cam``: CAM maps, target layers, the energy-in-region number and the grid figure."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_grad_cam", reason="Grad-CAM needs the cam extra")

from augmentbn.cam import (
    CamError,
    compare_cams,
    compute_cams,
    default_target_layer,
    list_cam_methods,
    read_grid_metadata,
    region_energy,
    require_grad_cam,
    resolve_target_layer,
)
from augmentbn.models import create_model, list_models


def _model(norm="bn", seed=0):
    torch.manual_seed(seed)
    model = create_model(
        "resnet_cifar", norm=norm, num_classes=10, in_chans=1, model_kwargs={"depth": 8}
    )
    # a few training steps so that the running statistics and the maps are not trivial
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 10
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_maps_have_the_image_size_lie_in_unit_interval_and_repeat(method):
    model = _model("nabn")
    images = torch.randn(5, 1, 16, 12, generator=torch.Generator().manual_seed(1))
    classes = [0, 3, 5, 7, 9]
    first = compute_cams(model, images, classes, method=method)
    second = compute_cams(model, images, classes, method=method)
    assert first.shape == (5, 16, 12) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    assert first.max() > 0.99  # each map is scaled by its maximum
    np.testing.assert_array_equal(first, second)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_model_mode_is_restored():
    model = _model().train()
    compute_cams(model, torch.randn(2, 1, 16, 16), [1, 2])
    assert model.training


def _unit(x):
    """Each map shifted to 0 and divided by (1e-7 + its maximum), as pytorch_grad_cam does."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (1e-7 + x.amax(dim=(-2, -1), keepdim=True))


def test_gradcam_equals_its_formula():
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k α_k A_k) with α_k the spatial mean of
    ∂y_c/∂A_k, on the target layer's 4×4 map, upsampled bilinearly to 16×16."""
    model = _model()
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    classes = [4, 8]
    kept = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: kept.update(a=o))
    logits = model(images)
    handle.remove()
    activations = kept["a"]
    assert activations.shape[-2:] == (4, 4)
    score = logits[torch.arange(2), torch.tensor(classes)].sum()
    grads = torch.autograd.grad(score, activations)[0]
    cam = _unit(torch.relu((grads.mean(dim=(2, 3), keepdim=True) * activations).sum(1)))
    up = torch.nn.functional.interpolate(cam[:, None], size=(16, 16), mode="bilinear")[:, 0]
    expected = _unit(up).detach().numpy()
    np.testing.assert_allclose(compute_cams(model, images, classes), expected, atol=1e-5)


def _layer_output_and_pool_input(model, layer, x):
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o: seen.update(out=o)),
        model.avgpool.register_forward_hook(lambda m, i, o: seen.update(pooled=i[0])),
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen["out"], seen["pooled"]


def test_every_model_of_create_model_gets_its_last_feature_map():
    """The automatic target layer is the one whose output the global pooling reads."""
    for name in list_models():
        small = {"base_width": 4} if name.startswith("unet") else None
        model = create_model(name, num_classes=3, in_chans=1, model_kwargs=small).eval()
        if name.startswith("unet"):
            with pytest.raises(CamError, match="segmentation"):
                default_target_layer(model)
            continue
        layer_name, layer = resolve_target_layer(model)
        size = 64 if name.startswith("resnet") else 32
        out, pooled = _layer_output_and_pool_input(model, layer, torch.randn(1, 1, size, 64))
        assert out is pooled, name
        torchvision_resnet = name in ("resnet18", "resnet34", "resnet50")
        assert layer_name == ("layer4" if torchvision_resnet else "layer3")


def test_region_energy_by_hand():
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0, 0]]])
    regions = np.array([[[1, 0], [0, 1]], [[1, 1], [0, 0]], [[1, 1], [1, 1]]], dtype=bool)
    shares = region_energy(maps, regions)
    assert shares[0] == pytest.approx((1 + 4) / 10)
    assert shares[1] == pytest.approx(0.5 / 1.0)
    assert np.isnan(shares[2])  # an empty map has no energy to share
    with pytest.raises(CamError, match="shape"):
        region_energy(maps, regions[:, :1])
    with pytest.raises(CamError, match="non-negative"):
        region_energy(-maps, regions)


def test_compare_cams_grid_metadata_and_energy(tmp_path):
    models = {"bn": _model("bn"), "nabn": _model("nabn", seed=1)}
    images = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    regions = images[:, 0].numpy() > 0
    targets = [1, 2, 3]
    result = compare_cams(models, images, targets=targets, regions=regions)
    assert list(result.maps) == ["bn", "nabn"]
    for label, model in models.items():
        maps = compute_cams(model, images, targets)
        np.testing.assert_array_equal(result.maps[label], maps)
        np.testing.assert_allclose(result.energy[label], region_energy(maps, regions))
        logits = model(images)
        assert result.metadata["predictions"][label] == logits.argmax(1).tolist()
        probs = torch.softmax(logits, 1).amax(1).tolist()
        assert result.metadata["confidences"][label] == pytest.approx(probs, abs=1e-6)
    assert len(result.figure.axes) == 3 * 3
    path = result.save(tmp_path / "grid.png")
    meta = read_grid_metadata(path)
    assert (meta["rows"], meta["cols"]) == (3, 3)
    assert meta["labels"] == ["input", "bn", "nabn"]
    assert meta["target_class"] == "true" and meta["targets"] == targets
    assert meta["energy_mean"]["bn"] == pytest.approx(float(np.nanmean(result.energy["bn"])))


def test_predicted_class_is_the_default_without_targets():
    model = _model()
    images = torch.randn(2, 1, 16, 16)
    result = compare_cams({"bn": model}, images, method="gradcam")
    predicted = model(images).argmax(1).tolist()
    assert result.metadata["target_class"] == "predicted"
    np.testing.assert_array_equal(result.maps["bn"], compute_cams(model, images, predicted))
    flagged = compare_cams({"bn": model}, images, targets=[0, 1], predicted=True)
    np.testing.assert_array_equal(flagged.maps["bn"], result.maps["bn"])


def test_grayscale_is_drawn_in_gray_and_colour_in_colour():
    images = torch.rand(1, 1, 16, 16)
    gray = compare_cams({"bn": _model()}, images, display=images.numpy())
    base = gray.figure.axes[0].get_images()[0]
    assert base.get_cmap().name == "gray" and base.get_array().ndim == 2
    torch.manual_seed(0)
    colour_model = create_model("resnet20", num_classes=10).eval()
    rgb = torch.rand(1, 3, 16, 16)
    colour = compare_cams({"bn": colour_model}, rgb, display=rgb.numpy())
    assert colour.figure.axes[0].get_images()[0].get_array().shape == (16, 16, 3)


def test_unknown_method_and_layer_list_the_valid_ones():
    model = _model()
    images = torch.randn(1, 1, 16, 16)
    assert {"gradcam", "gradcamplusplus", "scorecam", "hirescam"} <= set(list_cam_methods())
    with pytest.raises(CamError, match=r"unknown CAM method 'gradkam'.*gradcam, .*gradcam\+\+"):
        compute_cams(model, images, [0], method="gradkam")
    with pytest.raises(CamError, match=r"no layer 'layer9'.*layer1, .*layer3\.0"):
        compute_cams(model, images, [0], target_layer="layer9")
    deeper = compute_cams(model, images, [0], target_layer="layer2")
    assert deeper.shape == (1, 16, 16)


def test_models_without_a_rule_need_a_target_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    with pytest.raises(CamError, match="no default target layer for Sequential.*0, 1"):
        default_target_layer(model)


def test_missing_grad_cam_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match=r"grad-cam.*pip install 'augmentbn\[cam\]'"):
        require_grad_cam()
