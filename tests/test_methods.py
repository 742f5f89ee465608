"""The method registry and everything derived from it: every name and alias of every method,
through every entry point, accepts the same names and builds the same layers in the same places.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import augmentbn as ab
from augmentbn.methods import (
    DEFAULT_THETA,
    PLACEMENTS,
    ROLE_ATTRIBUTE,
    MethodSpec,
    NormPlan,
    Param,
    get_method,
    list_methods,
    method_names,
    register_method,
)
from augmentbn.models import create_model

# Every accepted name (canonical and aliases, and an upper-case spelling), with its method.
NAMES = sorted({*method_names(), *(n.upper() for n in method_names())})
EXPECTED_CLASSES = {
    "bn": nn.BatchNorm2d,
    "nabn": ab.AugmentBatchNorm2d,
    "iebn": ab.IEBatchNorm2d,
    "gn": nn.GroupNorm,
    "in": nn.InstanceNorm2d,
}
HAS_JITTOR = importlib.util.find_spec("jittor") is not None


def _canonical(name: str) -> str:
    return method_names()[name.lower()]


def _norm_sites(model) -> dict[str, str]:
    """``qualified name -> class name`` of every norm layer of a PyTorch or Jittor model."""
    norm_words = ("Norm", "BAN")
    return {
        name: type(m).__name__
        for name, m in model.named_modules()
        if name and any(w in type(m).__name__ for w in norm_words)
    }


def test_the_registry_lists_the_five_methods_and_their_aliases():
    assert list_methods() == ["bn", "nabn", "iebn", "gn", "in"]
    assert list_methods(backend="jittor") == ["bn", "nabn", "iebn"]
    assert {_canonical(a) for a in ("augmentbn", "AugmentBN", "gaubatchnorm", "augment")} == {
        "nabn"
    }
    assert _canonical("ban") == "iebn" and _canonical("batchnorm") == "bn"
    assert tuple(list_methods()) == ab.layers.NORM_LAYERS


def test_unknown_names_are_refused_everywhere_with_the_valid_names():
    from augmentbn.train import TrainConfig
    from augmentbn.train.config import ConfigError

    for call in (
        lambda: get_method("batchnrom"),
        lambda: ab.get_norm_layer("batchnrom"),
        lambda: create_model("resnet20", norm="batchnrom", num_classes=3),
        lambda: ab.convert_norm(nn.BatchNorm2d(3), "batchnrom"),
    ):
        with pytest.raises(ValueError, match="unknown norm 'batchnrom'.*bn, nabn, iebn, gn, in"):
            call()
    with pytest.raises(ConfigError, match="unknown norm 'batchnrom'"):
        TrainConfig(norm="batchnrom").validate()


@pytest.mark.parametrize("name", NAMES)
def test_get_norm_layer_builds_the_methods_class(name):
    method = _canonical(name)
    layer = ab.get_norm_layer(name)(8)
    assert type(layer) is EXPECTED_CLASSES[method]
    expected = EXPECTED_CLASSES[method].__name__
    for dims in (1, 2, 3):
        built = type(ab.create_norm_layer(name, 8, spatial_dims=dims)).__name__
        assert built == expected.replace("2d", f"{dims}d")


def _placements(method: str):
    spec = get_method(method)
    return [None, *PLACEMENTS] if spec.paper_roles is not None else [None, "all"]


@pytest.mark.parametrize("name", NAMES)
def test_create_model_builds_the_same_sites_for_every_name_of_a_method(name):
    method = _canonical(name)
    for placement in _placements(method):
        by_alias = create_model("resnet20", norm=name, num_classes=3, placement=placement)
        by_name = create_model("resnet20", norm=method, num_classes=3, placement=placement)
        assert _norm_sites(by_alias) == _norm_sites(by_name)
    if get_method(method).paper_roles is None:
        with pytest.raises(ValueError, match="placement='paper' applies to norms with a paper"):
            create_model("resnet20", norm=name, num_classes=3, placement="paper")


def test_paper_placement_puts_each_method_at_its_papers_sites():
    nabn = _norm_sites(create_model("resnet20", norm="nabn", num_classes=3))
    iebn = _norm_sites(create_model("resnet20", norm="iebn", num_classes=3))
    # NABN: stem, last BN of each block (bn2), shortcut BNs; everything else BatchNorm.
    assert {k for k, v in nabn.items() if v == "AugmentBatchNorm2d"} == {
        "bn1",
        *(f"layer{s}.{b}.bn2" for s in (1, 2, 3) for b in range(3)),
        "layer2.0.downsample.1",
        "layer3.0.downsample.1",
    }
    # IEBN: every BN except the shortcuts'.
    assert {k for k, v in iebn.items() if v == "BatchNorm2d"} == {
        "layer2.0.downsample.1",
        "layer3.0.downsample.1",
    }
    # The U-Net: every BN of the double convolutions, for both methods.
    unet = create_model("unet", norm="nabn", num_classes=2, model_kwargs={"base_width": 4})
    assert set(_norm_sites(unet).values()) == {"AugmentBatchNorm2d"}


@pytest.mark.parametrize("name", [n for n in NAMES if get_method(_canonical(n)).batchnorm_state])
def test_convert_norm_matches_create_model_for_every_name(name):
    method = _canonical(name)
    for placement in ("all", "paper") if method != "bn" else ("all",):
        built = create_model("resnet20", norm=method, num_classes=3, placement=placement)
        converted = ab.convert_norm(
            create_model("resnet20", norm="bn", num_classes=3), name, placement=placement
        )
        assert _norm_sites(converted) == _norm_sites(built)
        # The roles the model declared travel with the converted layers.
        assert {n: getattr(m, ROLE_ATTRIBUTE, None) for n, m in converted.named_modules()} == {
            n: getattr(m, ROLE_ATTRIBUTE, None) for n, m in built.named_modules()
        }


@pytest.mark.parametrize("name", ["gn", "in", "GroupNorm"])
def test_convert_norm_refuses_methods_without_batchnorm_state(name):
    with pytest.raises(ValueError, match="build the model with it instead"):
        ab.convert_norm(nn.BatchNorm2d(4), name)


def test_torchvision_models_get_the_paper_placement_by_conversion():
    pytest.importorskip("torchvision")
    model = create_model("resnet18", norm="augmentbn", num_classes=2)
    sites = _norm_sites(model)
    assert sites["bn1"] == "AugmentBatchNorm2d" and sites["layer1.0.bn2"] == "AugmentBatchNorm2d"
    assert sites["layer1.0.bn1"] == "BatchNorm2d"
    assert sites["layer2.0.downsample.1"] == "AugmentBatchNorm2d"


@pytest.mark.parametrize("name", NAMES)
def test_train_config_and_cli_accept_every_name(name):
    pytest.importorskip("yaml")
    from augmentbn.cli import build_parser, config_from_args
    from augmentbn.train import TrainConfig

    method = _canonical(name)
    config = TrainConfig(norm=name, train_batch=4).validate()
    assert config.resolved_norm == method
    args = build_parser().parse_args(["train", "--norm", name])
    parsed, _ = config_from_args(args)
    assert parsed.resolved_norm == method
    for placement in _placements(method):
        TrainConfig(norm=name, placement=placement, train_batch=4).validate()


def test_the_cli_help_lists_every_method_and_alias():
    from augmentbn.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for name in method_names():
        assert name in text
    assert "one of gaussian_clip, gaussian_reject, uniform" in text


def test_reference_architectures_take_any_registered_prefix():
    from augmentbn.train.config import resolve_arch

    assert resolve_arch("iebn_resnet", "bn") == ("resnet", "iebn")
    assert resolve_arch("augmentbn_resnet", "bn") == ("resnet", "nabn")
    assert resolve_arch("resnext29_8x64d", "iebn") == ("resnext29_8x64d", "iebn")


def test_noise_defaults_are_the_references():
    assert DEFAULT_THETA == {"gaussian_clip": 0.2, "gaussian_reject": 0.2, "uniform": 0.3}
    assert ab.AugmentBatchNorm2d(3).noise == "gaussian_clip"
    assert ab.GauBatchNorm2d(3).noise == "gaussian_clip"  # the paper's PyTorch name
    assert ab.AugmentBatchNorm2d(3).theta == 0.2
    assert ab.AugmentBatchNorm2d(3, noise="uniform").theta == 0.3
    assert ab.AugmentBatchNorm2d(3, noise="uniform", theta=0.1).theta == 0.1
    assert ab.get_norm_layer("nabn", noise="uniform")(3).theta == 0.3
    assert get_method("nabn").resolve({})["theta"] == 0.2


def test_registry_checks_method_arguments_before_building():
    with pytest.raises(ValueError, match="unknown noise 'gauss'"):
        ab.get_norm_layer("nabn", noise="gauss")
    with pytest.raises(ValueError, match="theta must be >= 0"):
        create_model("resnet20", norm="nabn", num_classes=3, theta=-1.0)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        ab.get_norm_layer("gn", num_groups=0)


def test_a_new_method_is_one_registry_entry():
    spec = MethodSpec(
        name="testnorm_registry",
        title="a test entry: BatchNorm with another momentum",
        aliases=("tnr",),
        layers={"torch": ("torch.nn:BatchNorm1d", "torch.nn:BatchNorm2d", "torch.nn:BatchNorm3d")},
        params=(Param("momentum", float, 0.5, "momentum"),),
        paper_roles=frozenset({"last"}),
        batchnorm_state=True,
    )
    register_method(spec)
    try:
        assert ab.get_norm_layer("TNR")(4).momentum == 0.5
        model = create_model("resnet20", norm="tnr", num_classes=3)
        lasts = [m for n, m in model.named_modules() if n.endswith("bn2")]
        assert all(m.momentum == 0.5 for m in lasts)
        assert model.bn1.momentum == 0.1  # not a paper site: plain BatchNorm
        with pytest.raises(ValueError, match="already registered"):
            register_method(spec)
    finally:
        from augmentbn.methods import registry

        del registry._METHODS["testnorm_registry"]
        for alias in ("testnorm_registry", "tnr"):
            del registry._BY_NAME[alias]


def test_norm_plan_takes_any_callable_as_torchvision_does():
    plan = NormPlan.from_layer(nn.BatchNorm2d)
    assert isinstance(plan(4, "shortcut"), nn.BatchNorm2d)
    model = create_model("resnet20", norm=ab.layers.factory.group_norm, num_classes=3)
    assert {type(m) for m in model.modules() if "Norm" in type(m).__name__} == {nn.GroupNorm}
    with pytest.raises(ValueError, match="unknown norm role"):
        NormPlan("nabn")(4, "middle")


@pytest.mark.skipif(not HAS_JITTOR, reason="Jittor is not installed (augmentbn[jittor])")
@pytest.mark.parametrize(
    "name", [n for n in NAMES if get_method(_canonical(n)).has_backend("jittor")]
)
def test_jittor_builds_the_same_layers_in_the_same_places(name):
    import augmentbn.jittor as ajt

    method = _canonical(name)
    for placement in _placements(method):
        theirs = ajt.create_model("resnet20", norm=name, num_classes=3, placement=placement)
        ours = create_model("resnet20", norm=name, num_classes=3, placement=placement)
        assert _norm_sites(theirs) == _norm_sites(ours)
    kwargs = {"noise": "uniform"} if method == "nabn" else {}
    layer = ajt.get_norm_layer(name, **kwargs)(4)
    assert type(layer).__name__ == type(ab.get_norm_layer(method)(4)).__name__
    if method == "nabn":
        assert layer.theta == 0.3 and layer.noise == "uniform"
        assert ajt.create_model("resnet20", norm=name, num_classes=3).bn1.noise == "gaussian_clip"
        assert ajt.GauBatchNorm(3).noise == "gaussian_reject"  # the seed's own class


@pytest.mark.skipif(not HAS_JITTOR, reason="Jittor is not installed (augmentbn[jittor])")
@pytest.mark.parametrize("name", ["gn", "in", "GroupNorm"])
def test_jittor_refuses_methods_it_lacks_and_says_where_they_exist(name):
    import augmentbn.jittor as ajt

    with pytest.raises(ValueError, match=r"has no jittor layer; it exists in augmentbn\.layers"):
        ajt.get_norm_layer(name)
    with pytest.raises(ValueError, match="has no jittor layer"):
        ajt.create_model("resnet20", norm=name, num_classes=3)


def test_cpu_state_dicts_load_across_methods():
    source = create_model("resnet20", norm="bn", num_classes=3)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    for method in ("nabn", "iebn"):
        target = create_model("resnet20", norm=method, num_classes=3, placement="all")
        missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
        assert not unexpected
        assert all("readjust" in k for k in missing)
