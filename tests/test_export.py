"""fold() and ``augmentbn export``: folded models equal unfolded ones, IEBN is refused, and
exported files of a real (tiny) digits run agree with PyTorch on its test data."""

import re
import warnings

import pytest
import torch
import yaml
from torch import nn

import augmentbn as ab
from augmentbn.cli import main
from augmentbn.export import load_exported
from augmentbn.models import create_model

pytest.importorskip("sklearn", reason="the digits run needs the train extra")


def _with_stats(model, seed=0):
    """Running statistics and affine parameters as a trained model has them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def _norms(model):
    kinds = (nn.modules.batchnorm._BatchNorm, ab.layers.BatchNormBase)
    return [m for m in model.modules() if isinstance(m, kinds)]


# -- fold --------------------------------------------------------------------------------------


def test_fold_is_the_hand_formula_on_conv_then_batchnorm():
    torch.manual_seed(0)
    model = _with_stats(nn.Sequential(nn.Conv2d(3, 4, 3), ab.AugmentBatchNorm2d(4), nn.ReLU()))
    folded = ab.fold(model)
    conv, norm = model[0], model[1]
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # γ/sqrt(v + ε)
    expected_weight = conv.weight * scale[:, None, None, None]
    expected_bias = (conv.bias - norm.running_mean) * scale + norm.bias
    assert type(folded[1]) is nn.Identity and type(folded[0]) is nn.Conv2d
    torch.testing.assert_close(folded[0].weight, expected_weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded[0].bias, expected_bias, rtol=1e-6, atol=1e-7)
    # the model itself is left as it was
    assert type(model[1]) is ab.AugmentBatchNorm2d and model[0].weight is conv.weight


@pytest.mark.parametrize("norm", ["nabn", "bn"])
def test_folded_resnet_equals_unfolded(norm):
    torch.manual_seed(0)
    model = _with_stats(create_model("resnet20", norm=norm, num_classes=10))
    model.train()  # fold works on an evaluation copy, whatever the model's mode
    folded = ab.fold(model)
    assert model.training and not folded.training
    assert not _norms(folded)  # every norm follows a convolution, alone
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_fold_where_the_graph_allows():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.shared = nn.Conv2d(4, 4, 1)
            self.bn2 = ab.AugmentBatchNorm2d(4)
            self.bn3 = nn.BatchNorm2d(4)
            self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
            self.bn4 = nn.BatchNorm2d(4)
            self.plain = ab.AugmentBatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn(y) + y  # the convolution's output is used twice: no folding
            z = self.bn2(self.shared(z))  # a shared convolution: called twice, no folding
            z = self.bn3(self.shared(z))
            z = self.bn4(self.up(z))  # transposed: folds
            return self.plain(z)  # after no convolution: becomes BatchNorm

    torch.manual_seed(0)
    model = _with_stats(Branching())
    folded = ab.fold(model)
    kinds = {name: type(m) for name, m in folded.named_children()}
    assert kinds["bn"] is nn.BatchNorm2d and kinds["bn3"] is nn.BatchNorm2d
    assert kinds["bn2"] is nn.BatchNorm2d  # NABN became BatchNorm but stayed
    assert kinds["bn4"] is nn.Identity and kinds["plain"] is nn.BatchNorm2d
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_unet_with_untraceable_blocks():
    """The U-Net's upsampling blocks pad by the input's shape, which fx cannot trace: they stay
    whole, and everything else folds."""
    torch.manual_seed(0)
    model = _with_stats(
        create_model("unet", norm="nabn", num_classes=2, in_chans=1, model_kwargs={"base_width": 8})
    )
    folded = ab.fold(model)
    left = _norms(folded)
    assert left and all(type(m) is nn.BatchNorm2d for m in left)
    assert len(left) < len(_norms(model))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_warns_when_fx_cannot_trace_the_model():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = ab.AugmentBatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else -self.bn(self.conv(x))

    model = _with_stats(DataDependent())
    with pytest.warns(UserWarning, match="torch.fx could not trace DataDependent"):
        folded = ab.fold(model)
    assert type(folded.bn) is nn.BatchNorm2d  # NABN is BatchNorm all the same
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)


def test_fold_refuses_iebn_naming_the_first_layer():
    model = create_model("resnet20", norm="iebn", num_classes=10)
    first = next(name for name, m in model.named_modules() if isinstance(m, ab.IEBatchNorm2d))
    with pytest.raises(ValueError, match=rf"fold: layer '{first}' is IEBN \(IEBatchNorm2d\)"):
        ab.fold(model)
    with pytest.raises(ValueError, match="the model is IEBN"):
        ab.fold(ab.IEBatchNorm2d(4))


def test_fold_refuses_nabn_without_running_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ab.AugmentBatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="layer '1' is NABN .* without running statistics"):
        ab.fold(model)


def test_fold_timm_norm_act_keeps_the_activation():
    timm = pytest.importorskip("timm", reason='pip install "augmentbn[timm]"')
    from augmentbn.integrations import timm as ab_timm

    ab_timm.register()
    torch.manual_seed(0)
    model = _with_stats(timm.create_model("efficientnet_b0", norm_layer="nabn", num_classes=3))
    n_act = sum(isinstance(m, nn.SiLU) for m in model.modules())
    folded = ab.fold(model)
    assert not _norms(folded)
    assert sum(isinstance(m, nn.SiLU) for m in folded.modules()) == n_act
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


# -- augmentbn export on a real run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny digits runs, NABN and IEBN: a CIFAR ResNet-8 on 8x8 images, one epoch."""
    from augmentbn.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for norm in ("nabn", "iebn"):
        config = TrainConfig(
            arch="resnet",
            depth=8,
            dataset="digits",
            epochs=1,
            train_batch=32,
            lr=0.05,
            norm=norm,
            checkpoint=str(root / norm),
            device="cpu",
        )
        train(config)
        out[norm] = root / norm
    return out


def _model_of(run):
    from augmentbn.train.engine import load_run

    trainer, _ = load_run(run / "best.pt", ("test",), device="cpu")
    return trainer.model.eval()


def test_config_records_the_resolved_placement(runs):
    for norm in ("nabn", "iebn"):
        assert yaml.safe_load((runs[norm] / "config.yaml").read_text())["placement"] == "paper"


def _export(capsys, *args):
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("norm", "format", "fold"),
    [
        ("nabn", "onnx", True),
        ("nabn", "pt2", False),
        ("nabn", "torchscript", True),
        ("iebn", "pt2", False),
    ],
)
def test_export_end_to_end(runs, tmp_path, capsys, norm, format, fold):
    if format == "onnx":
        pytest.importorskip("onnxruntime", reason='pip install "augmentbn[export]"')
        pytest.importorskip("onnxscript", reason='pip install "augmentbn[export]"')
    out = tmp_path / f"model.{format}"
    args = [runs[norm] / "best.pt", "--format", format, "--out", out] + (["--fold"] * fold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
        code, stdout, stderr = _export(capsys, *args)
    assert code == 0, stderr
    match = re.search(r"largest difference to PyTorch on (\d+) test images .*: (\S+) ", stdout)
    assert match and int(match[1]) == 32 and float(match[2]) <= 1e-5, stdout
    assert f"wrote {out}" in stdout and ("folded" in stdout) == fold
    # the file on its own, on another batch size: the batch axis is dynamic
    model = _model_of(runs[norm])
    x = torch.randn(5, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        actual = load_exported(out, format)(x)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_export_fold_reports_fold_error_and_no_check_skips_the_check(runs, tmp_path, capsys):
    out = tmp_path / "iebn.pt2"
    code, stdout, stderr = _export(
        capsys, runs["iebn"] / "best.pt", "--format", "pt2", "--out", out, "--fold"
    )
    assert code == 2 and not out.exists()
    assert stderr.startswith("augmentbn export: error: --fold: fold: layer ") and "IEBN" in stderr
    code, stdout, _ = _export(
        capsys, runs["nabn"] / "best.pt", "--format", "pt2", "--out", out, "--no-check"
    )
    assert code == 0 and out.is_file() and "largest difference" not in stdout


def test_export_errors(runs, tmp_path, capsys):
    code, _, stderr = _export(
        capsys, tmp_path / "missing.pt", "--format", "pt2", "--out", tmp_path / "x.pt2"
    )
    assert code == 2 and "augmentbn export: error: no checkpoint at" in stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(runs["nabn"] / "best.pt"), "--format", "tflite", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
