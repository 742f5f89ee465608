"""Every bad input of issue 13 gets a clear error, not a traceback, and changes no file: presets
and flags of the wrong type or range, crafted checkpoints, unwritable or full disks, a
single-class image folder, NaN in metrics and losses."""

from __future__ import annotations

import errno
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import torch

from augmentbn.cli import build_parser, config_from_args, main
from augmentbn.train import (
    CheckpointError,
    ConfigError,
    OutputError,
    RunError,
    TrainConfig,
    evaluate_checkpoint,
    train,
)
from augmentbn.train.checkpoint import load_checkpoint
from augmentbn.train.report import write_json

pytest.importorskip("sklearn", reason="training needs the train extra")

FAST = "--depth 8 --image-size 8 --epochs 1 --train-batch 64 --device cpu".split()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (and every folder, as ``b"<dir>"``)."""
    return {
        str(p.relative_to(folder)): b"<dir>" if p.is_dir() else p.read_bytes()
        for p in folder.rglob("*")
    }


def run_cli(argv, capsys) -> str:
    """``main(argv)`` must fail with exit status 2 and no traceback; return its message."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("augmentbn ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run (ResNet-8, NABN, 8 px digits)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FAST, "--norm", "nabn", "-c", str(out)]) == 0
    return out


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ('epochs: "two"', r"epochs='two' is invalid; epochs must be an integer"),
        ("lr: fast", r"lr='fast' is invalid; lr must be a number"),
        ("schedule: 3", r"schedule=3 is invalid; schedule must be a list of integers"),
        ("norm: 5", r"norm=5 is invalid; norm must be a string"),
        ("image_size: -4", r"image_size=-4 is invalid; image_size must be between 1 and 512"),
        ("train_batch: 2.5", r"train_batch=2.5 is invalid; train_batch must be an integer"),
        ("norm: ln", r"unknown norm 'ln'; valid: bn, nabn, iebn, gn, in"),
        ("momentum: 1.5", r"momentum=1.5 is invalid; momentum must be between 0 and 1"),
        ("amp: maybe", r"amp='maybe' is invalid; amp must be true or false"),
        (
            "schedule: [2, -1]",
            r"schedule=\[2, -1\] is invalid; schedule must be a list of values each >= 1",
        ),
        ("epochs: [1\nlr: 0.1", r"is not valid YAML \(line 2, column 3\): expected ',' or '\]'"),
        ("- 1\n- 2", r"expected a mapping of config keys, got list"),
        ("compare:\n  norms: bn", r"norms='bn' is invalid; norms must be a list of strings"),
        ("compare:\n  batch_sizes: [2, 0]", r"batch_sizes must be a list of values each >= 1"),
        ("compare:\n  norm: [bn]", r"unknown keys \['norm'\] in compare"),
    ],
)
def test_bad_preset_values_name_key_value_source_and_rule(tmp_path, capsys, yaml_text, expected):
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml_text + "\n")
    err = run_cli(["train", "--preset", preset, "-c", tmp_path / "run"], capsys)
    assert re.search(f"preset {re.escape(str(preset))}.*{expected}", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--image-size", "0"], "image_size=0 is invalid; image_size must be between 1 and 512"),
        (["--image-size", "1000"], "image_size=1000 is invalid; image_size must be between 1"),
        (["--lr", "nan"], "lr=nan is invalid; lr must be > 0 and finite"),
        (["--epochs", "-1"], "epochs=-1 is invalid; epochs must be >= 0"),
        (["--depth", "0"], "depth=0 is invalid"),
        (["--noise-std", "0"], "noise_std=0.0 is invalid; noise_std must be > 0"),
        (["--device", "gpu9"], "device='gpu9' is invalid; device must be auto, cpu, cuda"),
        (["--schedule", "3", "2"], "schedule must be increasing epochs"),
        (["--noise", "laplace"], "unknown noise 'laplace'; valid: gaussian_clip"),
    ],
)
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flags, expected):
    err = run_cli(["train", *FAST, *flags, "-c", tmp_path / "run"], capsys)
    assert expected in err and ("command line" in err or "schedule" in err)
    assert list(tmp_path.iterdir()) == []


def test_yaml_numbers_written_as_text_are_numbers(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-3\nweight_decay: 5e-4\nepochs: 3\n")  # YAML 1.1 reads 1e-3 as text
    config, _ = config_from_args(build_parser().parse_args(["train", "--preset", str(preset)]))
    assert (config.lr, config.weight_decay, config.epochs) == (0.001, 0.0005, 3)
    assert isinstance(config.lr, float)


def test_python_api_checks_types_too():
    with pytest.raises(ConfigError, match=r"config: epochs='two' is invalid"):
        TrainConfig(epochs="two").validate()
    with pytest.raises(ConfigError, match=r"config: train_batch=True is invalid.*an integer"):
        TrainConfig(train_batch=True).validate()
    with pytest.raises(ConfigError, match=r"unknown arch 'vgg11'"):
        TrainConfig(arch="vgg11").validate()
    assert TrainConfig(theta=math.inf, image_size=512).validate().theta == math.inf


# --- checkpoints --------------------------------------------------------------------------


def _crafted(tmp_path: Path, finished: Path, change) -> Path:
    state = load_checkpoint(finished / "last.pt", resume=True)
    change(state)
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda s: s.pop("config"), r"crafted.pt lacks config; it is damaged"),
        (lambda s: s.pop("model"), r"crafted.pt lacks model; it is damaged"),
        (lambda s: s.update(config="resnet"), r"'config' is a str, not a mapping"),
        (lambda s: s["config"].update(epochs="two"), r"crafted.pt: epochs='two' is invalid"),
        (lambda s: s["config"].update(norm=None), r"norm=None is invalid; norm must be a string"),
        (lambda s: s["config"].update(colour=1), r"unknown keys \['colour'\]"),
        (lambda s: s.update(model=[1, 2]), r"'model' is not a state dict of tensors"),
        (lambda s: s.update(epoch="1"), r"'epoch' is '1', not an integer"),
        (lambda s: s.update(format="augmentbn-checkpoint-1"), r"not an augmentbn training"),
    ],
)
def test_crafted_checkpoints(tmp_path, capsys, finished, change, expected):
    path = _crafted(tmp_path, finished, change)
    before = tree(tmp_path)
    err = run_cli(["eval", path], capsys)
    assert re.search(expected, err), err
    assert tree(tmp_path) == before


def test_weights_of_another_architecture_name_both(tmp_path, capsys, finished):
    from augmentbn.models import create_model

    other = create_model(
        "resnet_cifar", norm="nabn", num_classes=10, in_chans=1, model_kwargs={"depth": 14}
    )
    path = _crafted(tmp_path, finished, lambda s: s.update(model=other.state_dict()))
    err = run_cli(["eval", path], capsys)
    assert "Configured: resnet_cifar (depth 8, block basic), norm nabn" in err
    assert "layer1 (1 block)" in err and "layer1 (2 blocks)" in err  # the model, the file
    assert re.search(r"\d+ unexpected \(layer1\.1\.", err)
    with pytest.raises(CheckpointError, match="In the file: .* parameters in"):
        evaluate_checkpoint(path)


def test_unreadable_checkpoint_says_why(tmp_path, monkeypatch, finished):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match=r"cannot read .*last.pt: permission denied"):
        load_checkpoint(finished / "last.pt")


# --- output folders -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,words",
    [
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOSPC, "no space left on the device"),
    ],
)
def test_unwritable_output_folder_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, code, words
):
    def refuse(*args, **kwargs):
        raise OSError(code, "simulated")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    err = run_cli(["train", *FAST, "-c", tmp_path / "out" / "run"], capsys)
    assert f"cannot write in {tmp_path}: {words}" in err and "nothing was written" in err
    with pytest.raises(OutputError, match=words):
        write_json(tmp_path / "x.json", {})
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_keeps_the_previous_checkpoints(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *FAST, "-c", str(out)]) == 0
    capsys.readouterr()
    before = tree(out)
    original = Path.write_bytes

    def full(self, data):
        if self.name.startswith((".last.pt.", ".best.pt.")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    err = run_cli(["train", *FAST, "--epochs", "2", "--resume", "-c", out], capsys)
    assert re.search(rf"cannot write {re.escape(str(out))}/(last|best).pt: no space left", err)
    assert "the previous" in err and "is unchanged" in err
    after = tree(out)
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {
        k: v for k, v in before.items() if k not in ("config.yaml", "metrics.json")
    }  # a continued run drops its stale metrics.json; the checkpoints are the old ones
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert (
        train(
            TrainConfig.from_dict(load_checkpoint(out / "last.pt")["config"]).replace(epochs=2),
            resume=True,
        )["epochs"]
        == 2
    )


def test_full_disk_at_the_first_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    err = run_cli(["train", *FAST, "-c", tmp_path / "run"], capsys)
    assert "cannot write" in err and "config.yaml: no space left" in err
    assert list(tmp_path.iterdir()) == []


# --- data and metrics ---------------------------------------------------------------------


def test_single_class_image_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        folder = tmp_path / "data" / split / "NORMAL"
        folder.mkdir(parents=True)
        for k in range(4):
            Image.new("L", (8, 8), 40 * k).save(folder / f"{k}.png")
    before = tree(tmp_path)
    err = run_cli(
        [
            "train",
            *FAST,
            "--dataset",
            "imagefolder",
            "--data-root",
            tmp_path / "data",
            "-c",
            tmp_path / "run",
        ],
        capsys,
    )
    assert "holds one class folder (NORMAL); a classifier needs at least 2 classes" in err
    assert tree(tmp_path) == before


def test_metrics_json_holds_null_not_nan(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"auc": float("nan"), "x": [1.5, float("inf"), -float("inf")], "n": 2})

    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "auc": None,
        "x": [1.5, None, None],
        "n": 2,
    }


def test_macro_auc_is_none_when_a_class_is_absent():
    from augmentbn.train.metrics import classification_metrics

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 1.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 1, 0]), "classification", "abc")
    assert metrics["macro_auc"] is None and metrics["accuracy"] == 1.0


def test_nan_loss_names_only_checkpoints_that_exist(tmp_path, monkeypatch, finished):
    monkeypatch.setattr(
        torch.nn.CrossEntropyLoss, "forward", lambda self, x, y: x.sum() * float("nan")
    )
    config = TrainConfig.from_dict(load_checkpoint(finished / "last.pt")["config"])
    with pytest.raises(RunError) as first:
        train(config.replace(checkpoint=str(tmp_path / "new")))
    assert "at epoch 1, step 1" in str(first.value)
    assert "No checkpoint was written" in str(first.value) and "last.pt" not in str(first.value)
    import shutil

    shutil.copytree(finished, tmp_path / "old")
    with pytest.raises(RunError) as later:
        train(config.replace(checkpoint=str(tmp_path / "old"), epochs=2), resume=True)
    message = str(later.value)
    assert f"last good checkpoint is {tmp_path / 'old' / 'last.pt'} (end of epoch 1)" in message
