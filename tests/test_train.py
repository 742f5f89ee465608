"""The training engine: outputs, exact resume, evaluation, and its errors."""

import json
import os

import pytest
import torch
import yaml

from augmentbn.train import (
    CheckpointError,
    ConfigError,
    RunError,
    TrainConfig,
    evaluate_checkpoint,
    train,
)
from augmentbn.train.checkpoint import load_checkpoint
from augmentbn.train.engine import Trainer

pytest.importorskip("sklearn", reason="training needs the train extra")


def small_config(tmp_path, name="run", **changes):
    """A CIFAR ResNet-8 on 8x8 digits: a real run in about a second."""
    values = dict(
        arch="resnet",
        depth=8,
        dataset="digits",
        epochs=1,
        train_batch=32,
        test_batch=256,
        lr=0.05,
        checkpoint=str(tmp_path / name),
        device="cpu",
    )
    values.update(changes)
    return TrainConfig(**values)


def test_one_epoch_writes_every_output_and_eval_reproduces(tmp_path):
    config = small_config(tmp_path, norm="nabn")
    metrics = train(config)
    out = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "curves.png", "metrics.json", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert yaml.safe_load((out / "config.yaml").read_text())["norm"] == "nabn"
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,train_loss,train_acc,val_loss,val_acc,time" and len(log) == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    test = saved["final"]["test"]
    assert set(test) >= {"accuracy", "macro_auc", "macro_f1", "per_class", "confusion_matrix"}
    assert len(test["confusion_matrix"]) == 10
    assert sum(map(sum, test["confusion_matrix"])) == sum(
        c["support"] for c in test["per_class"].values()
    )
    again = evaluate_checkpoint(out / "last.pt", "test")
    assert again["accuracy"] == test["accuracy"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_is_exact(tmp_path):
    common = dict(
        norm="nabn", placement="all", noise="gaussian_reject", schedule=[3], train_batch=16
    )
    train(small_config(tmp_path, "straight", epochs=4, **common))
    train(small_config(tmp_path, "resumed", epochs=2, **common))
    train(small_config(tmp_path, "resumed", epochs=4, **common), resume=True)
    straight, resumed = (
        _weights(tmp_path / "straight/last.pt"),
        _weights(tmp_path / "resumed/last.pt"),
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    log = (tmp_path / "resumed/log.csv").read_text().splitlines()
    assert len(log) == 5


def test_finished_run_is_refused_without_resume_or_overwrite(tmp_path):
    config = small_config(tmp_path)
    train(config)
    with pytest.raises(RunError, match="already holds a finished run.*--resume.*--overwrite"):
        train(config)
    train(config, overwrite=True)  # allowed
    train(config, resume=True)  # nothing left to train: evaluates again


def test_batch_size_one_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="batch size 1 cannot train with norm='iebn'"):
        train(small_config(tmp_path, norm="iebn", train_batch=1))
    assert not (tmp_path / "run").exists()
    small_config(tmp_path, norm="gn", train_batch=1).validate()  # batch-independent: fine


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"arch": "vgg16"}, "unknown arch 'vgg16'.*resnet20"),
        ({"norm": "ln"}, "unknown norm 'ln'.*bn, nabn, iebn, gn, in"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'.*digits"),
        ({"noise": "laplace"}, "unknown noise"),
        ({"optimizer": "lamb"}, "unknown optimizer"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        train(small_config(tmp_path, **changes))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = small_config(tmp_path, epochs=1)
    train(config)
    last = tmp_path / "run/last.pt"
    before = last.read_bytes()
    trainer = Trainer.create(config.replace(epochs=2))
    trainer.load_state(load_checkpoint(last), last)
    with torch.no_grad():
        trainer.model.fc.weight.fill_(float("nan"))
    with pytest.raises(RunError, match="loss became nan at epoch 2.*last good checkpoint"):
        trainer.fit()
    assert last.read_bytes() == before


def test_mismatched_and_unreadable_checkpoints(tmp_path):
    train(small_config(tmp_path, epochs=1))
    with pytest.raises(RunError, match="other settings.*depth: 8 -> 14"):
        train(small_config(tmp_path, epochs=2, depth=14), resume=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.pt"):
        evaluate_checkpoint(bad)
    foreign = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an augmentbn training checkpoint"):
        evaluate_checkpoint(foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "run/last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        evaluate_checkpoint(truncated)


@pytest.mark.parametrize("norm", ["nabn", "iebn"])
def test_amp_and_channels_last_run(tmp_path, norm):
    metrics = train(small_config(tmp_path, norm=norm, amp=True, channels_last=True))
    assert 0.0 <= metrics["final"]["test"]["accuracy"] <= 1.0
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_config_records_the_resolved_placement_and_older_runs_resume(tmp_path):
    from augmentbn.train.checkpoint import save_checkpoint

    train(small_config(tmp_path, "gn", norm="gn"))
    assert yaml.safe_load((tmp_path / "gn" / "config.yaml").read_text())["placement"] == "all"
    train(small_config(tmp_path, "old", norm="iebn"))
    saved = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    assert saved["placement"] == "paper"
    # a run written before the placement was recorded resumes as the same run
    state = load_checkpoint(tmp_path / "old" / "last.pt")
    state["config"]["placement"] = None
    save_checkpoint(tmp_path / "old" / "last.pt", state)
    metrics = train(small_config(tmp_path, "old", norm="iebn", epochs=2), resume=True)
    assert metrics["epochs"] == 2
