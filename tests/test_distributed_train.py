"""The engine with 2 gloo processes: the weights of 1 process with the same global batch, exact
resume, rank 0 alone writing, torchrun's command line, and the bad inputs (a global batch that
does not divide, a resume with another world size, a process that dies)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from dist_helpers import free_port, spawn

from augmentbn.train import ConfigError, TrainConfig, train
from augmentbn.train import engine as engine_module
from augmentbn.train.checkpoint import load_checkpoint
from augmentbn.train.compare import CompareGrid, run_grid
from augmentbn.train.distributed import DistContext

pytest.importorskip("sklearn", reason="training needs the train extra")

WORLD = 2
OUTPUTS = {"config.yaml", "log.csv", "curves.png", "metrics.json", "last.pt", "best.pt"}


def config(folder, **changes) -> TrainConfig:
    """A CIFAR ResNet-8 on 8x8 digits (with its random crops): 1,078 training images in
    batches of 128, so 9 steps an epoch, the last one 54 images (27 per process)."""
    values = dict(
        arch="resnet",
        depth=8,
        dataset="digits",
        epochs=1,
        train_batch=128,
        test_batch=100,
        lr=0.05,
        norm="nabn",
        placement="all",
        checkpoint=str(folder),
        device="cpu",
    )
    values.update(changes)
    return TrainConfig(**values)


def in_float64(monkeypatch) -> None:
    """Train and evaluate in float64: 1 and 2 processes then differ by rounding alone (in
    float32, a ReLU input within 1e-6 of 0 can change sides between the two and with it a
    gradient, which the following steps amplify)."""
    build = engine_module.build_model
    prepare = engine_module.Trainer._prepare
    monkeypatch.setattr(engine_module, "build_model", lambda *a: build(*a).double())
    monkeypatch.setattr(engine_module.Trainer, "_prepare", lambda s, x: prepare(s, x).double())


def _train_worker(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    root = Path(root)
    # Unequal shards (a final batch of odd size): 3 and 5 loss elements summing to 2 and 6.
    loss_sum = torch.tensor([2.0, 6.0][rank], requires_grad=True)
    scaled, mean = DistContext.current().global_mean_loss(loss_sum, [3, 5][rank])
    scaled.backward()
    torch.save({"mean": mean, "grad": loss_sum.grad}, root / f"loss{rank}.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_float64(monkeypatch)
        train(config(root / "float64"))
    # Exact resume: 2 epochs straight against 1 epoch, then resumed for the second.
    common = dict(noise="gaussian_reject", schedule=[1])
    train(config(root / "straight", epochs=2, **common))
    train(config(root / "resumed", epochs=1, **common))
    train(config(root / "resumed", epochs=2, **common), resume=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed_runs")
    spawn(_train_worker, WORLD, str(root), timeout=400)
    return root


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "last.pt")["model"]


def test_two_processes_give_the_weights_of_one_process(runs, tmp_path, monkeypatch):
    in_float64(monkeypatch)
    single = train(config(tmp_path / "one"))
    one, two = _weights(tmp_path / "one"), _weights(runs / "float64")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    assert max((one[k] - two[k]).abs().max().item() for k in one) > 0  # really two computations
    # Each image evaluated once: the same metrics up to rounding.
    metrics = json.loads((runs / "float64" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics["final"][split]["accuracy"] == single["final"][split]["accuracy"]
        assert (
            metrics["final"][split]["confusion_matrix"]
            == single["final"][split]["confusion_matrix"]
        )
        assert metrics["final"][split]["loss"] == pytest.approx(single["final"][split]["loss"])
    log = (runs / "float64" / "log.csv").read_text().splitlines()
    assert len(log) == 2  # one row, written once


def test_unequal_shards_give_the_whole_batch_mean_loss(runs):
    for rank in range(WORLD):
        result = torch.load(runs / f"loss{rank}.pt")
        assert result["mean"] == 8 / 8  # (2 + 6) / (3 + 5)
        # DDP averages over the 2 ranks: 2/8 per rank is 1/8 per element of the whole batch.
        assert result["grad"].item() == 2 / 8


def test_resume_under_two_processes_is_exact(runs):
    straight, resumed = _weights(runs / "straight"), _weights(runs / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert len((runs / "resumed" / "log.csv").read_text().splitlines()) == 3
    assert load_checkpoint(runs / "resumed" / "last.pt")["world_size"] == WORLD
    for folder in ("float64", "straight", "resumed"):
        names = {p.name for p in (runs / folder).iterdir()} - {"tensorboard"}
        assert names == OUTPUTS, folder  # one set of outputs, no temporaries


def test_resume_with_another_world_size_names_both(runs):
    common = dict(noise="gaussian_reject", schedule=[1])
    with pytest.raises(ConfigError, match=r"run of 2 process\(es\) and this run has 1"):
        train(config(runs / "resumed", epochs=3, **common), resume=True)


def test_global_batch_that_does_not_divide_is_refused_before_training(tmp_path):
    two = DistContext(rank=0, world_size=2)  # the check needs no process group
    with pytest.raises(ConfigError, match="--train-batch 33 .* 2 processes.* 32 or 34"):
        train(config(tmp_path / "run", train_batch=33), dist=two)
    assert not (tmp_path / "run").exists()
    grid = CompareGrid(norms=("bn",), batch_sizes=(8, 9), seeds=(0,))
    with pytest.raises(ConfigError, match="--train-batch 9 .* 2 processes"):
        run_grid(config(tmp_path / "x"), grid, tmp_path / "grid", dist=two)
    assert not (tmp_path / "grid").exists()


def _torchrun(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(WORLD), "-m", "augmentbn", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_torchrun_compare_runs_each_cell_distributed(tmp_path):
    flags = "--arch resnet --depth 8 --dataset digits --epochs 1 --lr 0.05 --device cpu"
    result = _torchrun(
        "compare", *flags.split(), "--norms", "bn", "iebn", "--batch-sizes", "64",
        "--seeds", "0", "--out", "grid", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    share = "distributed: 2 processes (gloo); global train batch 64 = 32 per process"
    assert result.stdout.count(share) == 2  # once per cell, by rank 0 alone
    assert result.stdout.count("# Comparison") == 1
    rows = (tmp_path / "grid" / "results.csv").read_text().splitlines()
    assert len(rows) == 3
    for cell in ("bn-bs64-seed0", "iebn-bs64-seed0"):
        state = load_checkpoint(tmp_path / "grid" / "runs" / cell / "last.pt")
        assert state["world_size"] == WORLD and state["epoch"] == 1


def test_torchrun_refuses_a_batch_that_does_not_divide(tmp_path):
    result = _torchrun("train", "--train-batch", "7", "--device", "cpu", "-c", "run", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("augmentbn train: error: --train-batch 7 is the global batch") == 1
    # No traceback of ours (torchrun prints its own summary of the failed processes).
    assert not re.search(r'File ".*augmentbn', result.stderr) and not (tmp_path / "run").exists()


FAILING = """
import sys, os, time, torch
from augmentbn import cli
calls = {"n": 0}
original = torch.nn.Module.__call__
def call(self, *args, **kwargs):
    if type(self).__name__ == "CifarResNet" and self.training:
        calls["n"] += 1
        if calls["n"] == 3 and os.environ["RANK"] == "1":
            open("failing-now", "w").close()
            if os.environ["HOW"] == "dies":
                os._exit(17)  # in the middle of the run, without a word
            time.sleep(600)  # hangs
    return original(self, *args, **kwargs)
torch.nn.Module.__call__ = call
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_stops_the_others_with_an_error(tmp_path, how):
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILING))
    port = free_port()
    flags = "train --arch resnet --depth 8 --epochs 2 --train-batch 64 --device cpu -c run"
    processes = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "HOW": how,
            "AUGMENTBN_DIST_TIMEOUT": "10",  # the collectives' timeout (45 s by default)
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), *flags.split()],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "failing-now").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = time.monotonic()
        if how == "dies":
            assert processes[1].wait(timeout=30) == 17
        _, err = processes[0].communicate(timeout=240)
        assert time.monotonic() - failed < 60
        assert processes[0].returncode == 2, err[-3000:]
        assert "augmentbn train: error: rank 0: the distributed run failed" in err
        assert not re.search(r'File ".*augmentbn', err)
    finally:
        for process in processes:
            process.kill()
            process.communicate()
