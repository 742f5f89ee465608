"""Exact resume after Ctrl-C, SIGTERM and ``kill -9``; compare grids with an interrupted cell;
stored runs checked against the requested settings; ``--overwrite`` that replaces last."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import augmentbn
from augmentbn.cli import main
from augmentbn.train import ConfigError, RunError, TrainConfig, train
from augmentbn.train.checkpoint import load_checkpoint
from augmentbn.train.signals import Terminated

pytest.importorskip("sklearn", reason="training needs the train extra")

STEPS_PER_EPOCH = 17  # 1,078 training digits in batches of 64


def tiny(out: Path, **changes) -> TrainConfig:
    """ResNet-8 with NABN everywhere on 8 px digits: 17 steps an epoch, about a second."""
    values = dict(
        depth=8,
        norm="nabn",
        placement="all",
        noise="gaussian_reject",
        dataset="digits",
        image_size=8,
        epochs=2,
        schedule=[1],
        train_batch=64,
        lr=0.05,
        device="cpu",
        checkpoint=str(out),
    )
    values.update(changes)
    return TrainConfig(**values)


def after_step(monkeypatch, step: int, action) -> None:
    """Run ``action()`` right after optimizer step number ``step`` of the process (1-based)."""
    original = torch.optim.SGD.step
    count = {"n": 0}

    def step_then_act(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == step:
            action()
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_act)


def assert_same_state(a: Path, b: Path) -> None:
    """Every tensor of the model and optimizer state in two checkpoints is bitwise equal."""
    left, right = load_checkpoint(a, resume=True), load_checkpoint(b, resume=True)
    assert left["epoch"] == right["epoch"]
    assert left["model"].keys() == right["model"].keys()
    for key, value in left["model"].items():
        assert torch.equal(value, right["model"][key]), key
    buffers = [
        (k, left["optimizer"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in right["optimizer"]["state"].items()
    ]
    assert len(buffers) == len(left["model"]) - 3 * sum(
        k.endswith("num_batches_tracked") for k in left["model"]
    )  # one per parameter: every tensor but running mean, var and count
    for key, x, y in buffers:
        assert torch.equal(x, y), key
    assert left["history"][-1]["train_loss"] == right["history"][-1]["train_loss"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(tiny(out))
    return out


def _signal(signum):
    return lambda: os.kill(os.getpid(), signum)


@pytest.mark.parametrize(
    "signum,error",
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)],
    ids=["SIGINT", "SIGTERM"],
)
@pytest.mark.parametrize("epoch", [1, 2])
def test_signal_then_resume_is_bitwise_the_straight_run(
    tmp_path, monkeypatch, straight, signum, error, epoch
):
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    step = (epoch - 1) * STEPS_PER_EPOCH + 5
    after_step(monkeypatch, step, _signal(signum))
    with pytest.raises(error):
        train(tiny(out))
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is removed again
    assert not list(out.glob(".*.tmp")) and not (out / "metrics.json").exists()
    if epoch == 1:
        assert not (out / "last.pt").exists()
    else:
        assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last finished epoch
    train(tiny(out), resume=True)
    assert_same_state(out / "last.pt", straight / "last.pt")
    assert_same_state(out / "best.pt", straight / "best.pt")
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3 and [r.split(",")[:5] for r in log] == [
        r.split(",")[:5] for r in (straight / "log.csv").read_text().splitlines()
    ]


def test_command_line_reports_sigterm_and_keeps_the_last_epoch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", "--depth", "8", "--epochs", "2", "--train-batch", "64", "-c", str(out)]
    after_step(monkeypatch, STEPS_PER_EPOCH + 2, _signal(signal.SIGTERM))
    assert main([*argv, "--device", "cpu"]) == 143
    err = capsys.readouterr().err
    assert "terminated; the unfinished epoch is not saved" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not list(out.glob(".*.tmp"))


def test_kill_9_then_resume_is_bitwise_the_straight_run(tmp_path, straight):
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from augmentbn.train import TrainConfig, train
        original, count = torch.optim.SGD.step, [0]
        def step(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            count[0] += 1
            if count[0] == {STEPS_PER_EPOCH + 9}:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        torch.optim.SGD.step = step
        train(TrainConfig(**{tiny(out).to_dict()!r}))
        """
    )
    src = str(Path(augmentbn.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    train(tiny(out), resume=True)
    assert_same_state(out / "last.pt", straight / "last.pt")


def _grid_argv(out: Path, *extra: str) -> list[str]:
    return [
        "compare",
        *("--depth 8 --image-size 8 --epochs 2 --schedule 1 --lr 0.05 --device cpu".split()),
        *("--norms bn nabn --batch-sizes 64 --seeds 0".split()),
        "--out",
        str(out),
        *extra,
    ]


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "run_dir"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """An uninterrupted compare grid of two cells."""
    out = tmp_path_factory.mktemp("grid") / "cmp"
    assert main(_grid_argv(out)) == 0
    return out


def test_compare_cell_interrupted_is_rerun_not_reported(tmp_path, monkeypatch, capsys, grid):
    out = tmp_path / "cmp"
    # the second cell (nabn) is interrupted in its second epoch
    after_step(monkeypatch, 2 * STEPS_PER_EPOCH + STEPS_PER_EPOCH + 3, _signal(signal.SIGINT))
    assert main(_grid_argv(out)) == 130
    monkeypatch.undo()
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "results.csv").exists()
    cell = out / "runs" / "nabn-bs64-seed0"
    assert (
        not (cell / "metrics.json").exists() and (out / "runs/bn-bs64-seed0/metrics.json").exists()
    )
    assert main(_grid_argv(out)) == 0
    printed = capsys.readouterr().out
    assert "[1/2] norm=bn batch=64 seed=0: finished earlier, skipped" in printed
    assert "[2/2] norm=nabn batch=64 seed=0: training" in printed
    assert _results(out) == _results(grid)
    assert_same_state(cell / "last.pt", grid / "runs" / "nabn-bs64-seed0" / "last.pt")


def test_compare_refuses_stale_settings_and_overwrite_reruns(tmp_path, capsys, grid):
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(grid, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(_grid_argv(out, "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    assert "2 of 2 runs cannot be continued; nothing was trained" in err
    assert err.count("lr: 0.05 -> 0.5") == 2 and "Traceback" not in err
    assert main(_grid_argv(out, "--epochs", "1")) == 2
    assert "epochs: 2 -> 1 (2 trained)" in capsys.readouterr().err
    assert main(_grid_argv(out, "--theta", "0.3")) == 2  # NABN's option: only the NABN cell
    err = capsys.readouterr().err
    assert "1 of 2 runs" in err and "nabn-bs64-seed0" in err and "theta: 0.2 -> 0.3" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # settings that do not change the result are not differences
    assert main(_grid_argv(out, "--test-batch", "100", "-j", "0")) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    assert main(_grid_argv(out, "--lr", "0.5", "--overwrite")) == 0
    rows = _results(out)
    assert [r["norm"] for r in rows] == ["bn", "nabn"] and rows != _results(grid)
    stored = load_checkpoint(out / "runs/bn-bs64-seed0/last.pt")["config"]
    assert stored["lr"] == 0.5


def test_resume_checks_settings_and_may_raise_epochs(tmp_path, straight):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    with pytest.raises(RunError) as refused:
        train(tiny(out, lr=0.1, noise="uniform", epochs=2), resume=True)
    assert "lr: 0.05 -> 0.1" in str(refused.value) and "noise: 'gaussian_reject' -> 'uniform'"
    with pytest.raises(RunError, match="other settings.*epochs: 1 -> 0 \\(1 trained\\)"):
        train(tiny(out, epochs=0), resume=True)
    # a finished run continued to more epochs: its stale metrics.json goes, the result is exact
    metrics = train(tiny(out, epochs=2, test_batch=100, workers=0), resume=True)
    assert metrics["epochs"] == 2
    assert_same_state(out / "last.pt", straight / "last.pt")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_checks_first_and_replaces_last(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    (out / "split.json").write_text("{}")  # a file the new run does not write
    old = _tree(out)
    # bad settings, data or names: refused before anything is touched
    for bad, error in (
        ({"arch": "vgg11"}, ConfigError),
        ({"dataset": "cifar10", "data_root": str(tmp_path / "nowhere")}, FileNotFoundError),
        ({"lr": -1.0}, ConfigError),
    ):
        with pytest.raises(error):
            train(tiny(out, epochs=1, **bad), overwrite=True)
        assert _tree(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # a new run that fails in its first epoch leaves the old one as it was
    monkeypatch.setattr(
        torch.nn.CrossEntropyLoss, "forward", lambda self, x, y: x.sum() * float("nan")
    )
    with pytest.raises(RunError) as nan:
        train(tiny(out, epochs=1, lr=0.01), overwrite=True)
    assert "No checkpoint was written" in str(nan.value) and "last.pt" not in str(nan.value)
    monkeypatch.undo()
    assert _tree(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # until the new run's first checkpoint the old folder is untouched; then it is replaced
    seen = {}
    after_step(monkeypatch, 3, lambda: seen.setdefault("during", _tree(out)))
    train(tiny(out, epochs=2, lr=0.01), overwrite=True)
    assert seen["during"] == old
    new = _tree(out)
    assert "split.json" not in new and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert load_checkpoint(out / "last.pt")["config"]["lr"] == 0.01
    assert not list(tmp_path.glob(".run.*"))


def test_overwrite_refuses_a_folder_with_other_files(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not the run's: notes.txt"):
        train(tiny(out, epochs=1), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_path_forms(tmp_path, capsys):
    out = tmp_path / "run"
    argv = "train --depth 8 --image-size 8 --epochs 1 --train-batch 64 --device cpu".split()
    assert main([*argv, "-c", str(out)]) == 0
    capsys.readouterr()
    assert main([*argv, "--resume", str(out / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert "best.pt holds the best validation epoch" in err and "augmentbn eval" in err
    assert main([*argv, "--resume", str(out / "other.pt")]) == 2
    assert "a run folder or its last.pt" in capsys.readouterr().err
    assert main([*argv, "--resume", str(out / "last.pt")]) == 0  # finished: nothing to train
    assert "nothing to train" in capsys.readouterr().out
    # with -e, --resume names the file to evaluate, best.pt included
    (out / "last.pt").write_bytes(b"damaged")
    assert main(["train", "-e", "--resume", str(out / "best.pt")]) == 0
    assert '"accuracy"' in capsys.readouterr().out
    assert main([*argv, "--epochs", "2", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "--overwrite" in err
    assert "resume from best.pt" not in err and "Traceback" not in err


def test_interrupt_between_the_two_renames_keeps_the_old_run(tmp_path, monkeypatch):
    from augmentbn.train import rundir

    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    old = _tree(out)
    original, calls = os.replace, []

    def replace_then_interrupt(src, dst):
        if Path(src).is_dir():  # commit's renames, not the files' atomic writes
            calls.append((Path(src).name, Path(dst).name))
            if len(calls) == 2:  # the old run is aside, the new one not yet in place
                raise KeyboardInterrupt
        return original(src, dst)

    monkeypatch.setattr(rundir.os, "replace", replace_then_interrupt)  # the os module's
    with pytest.raises(KeyboardInterrupt):
        train(tiny(out, epochs=1, lr=0.01), overwrite=True)
    assert calls[:2] == [("run", ".run.replaced"), (".run.staging", "run")]
    monkeypatch.undo()
    assert _tree(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
