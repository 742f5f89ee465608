"""``augmentbn cam`` and compare's CAM grids end to end on tiny digits runs; every bad input."""

import contextlib
import io
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sklearn", reason="training needs the train extra")
pytest.importorskip("pytorch_grad_cam", reason="Grad-CAM needs the cam extra")

from augmentbn.cam import CamError, read_grid_metadata
from augmentbn.cli import main
from augmentbn.data import build_dataset
from augmentbn.train import TrainConfig, train
from augmentbn.train.cams import _check_same_images
from augmentbn.train.checkpoint import load_checkpoint
from augmentbn.train.engine import build_model


def _run(out, **changes):
    """A CIFAR ResNet-8 on 8×8 digits for one epoch: about a second."""
    values = dict(depth=8, epochs=1, train_batch=32, lr=0.05, checkpoint=str(out), device="cpu")
    train(TrainConfig(**{**values, **changes}))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    cmp = root / "cmp"
    argv = ["compare", "--depth", "8", "--epochs", "1", "--norms", "bn", "nabn"]
    argv += ["--batch-sizes", "32", "--seeds", "0", "--out", str(cmp), "--device", "cpu"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return SimpleNamespace(
        root=root,
        cmp=cmp,
        compare_out=printed.getvalue(),
        bn=cmp / "runs" / "bn-bs32-seed0",
        nabn=cmp / "runs" / "nabn-bs32-seed0",
        other_seed=_run(root / "bn-seed1", seed=1),
        other_size=_run(root / "bn-16px", image_size=16),
    )


def _cam(argv, capsys):
    code = main(["cam", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_compare_writes_one_cam_grid_per_batch_size(runs):
    grid = runs.cmp / "cams-bs32-seed0.png"
    assert f"CAM grids: {grid}" in runs.compare_out
    meta = read_grid_metadata(grid)
    assert (meta["rows"], meta["cols"]) == (8, 3)
    assert meta["labels"] == ["input", "bn", "nabn"]
    assert meta["runs"] == [str(runs.bn / "best.pt"), str(runs.nabn / "best.pt")]


def test_cam_on_two_runs_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "cams.png"
    code, printed, _ = _cam([runs.bn, runs.nabn, "--n", "4", "--out", out], capsys)
    assert code == 0
    meta = read_grid_metadata(out)
    assert (meta["rows"], meta["cols"]) == (4, 3) and meta["labels"] == ["input", "bn", "nabn"]
    expected = torch.randperm(357, generator=torch.Generator().manual_seed(0))[:4].tolist()
    assert meta["indices"] == expected
    # Predictions, targets and the stroke region, computed here independently.
    test = build_dataset("digits", split="test", seed=0)
    assert meta["targets"] == [int(test.targets[i]) for i in expected]
    strokes = torch.stack([test.load(i)[0][0] >= 0.5 for i in expected])
    assert meta["region_share"] == pytest.approx(strokes.float().mean().item())
    for label, folder in (("bn", runs.bn), ("nabn", runs.nabn)):
        state = load_checkpoint(folder / "best.pt")
        model = build_model(TrainConfig(**state["config"]), test.info)
        model.load_state_dict(state["model"])
        with torch.no_grad():
            logits = model.eval()(torch.stack([test[i][0] for i in expected]))
        assert meta["predictions"][label] == logits.argmax(1).tolist()
        correct = sum(p == t for p, t in zip(meta["predictions"][label], meta["targets"]))
        line = f"{label}: {correct}/4 correct, share of CAM energy"
        assert line in printed
        assert f"{meta['energy_mean'][label]:.3f} (mean)" in printed
        assert all(0 <= e <= 1 for e in meta["energy"][label] if e == e)


def test_indices_method_and_predicted_class(runs, tmp_path, capsys):
    out = tmp_path / "cams.png"
    argv = [runs.bn, "--indices", "3", "1", "4", "--method", "gradcam++", "--predicted"]
    code, _, _ = _cam([*argv, "--target-layer", "layer2", "--out", out], capsys)
    assert code == 0
    meta = read_grid_metadata(out)
    assert meta["indices"] == [3, 1, 4] and meta["rows"] == 3 and meta["cols"] == 2
    assert meta["method"] == "gradcam++" and meta["target_class"] == "predicted"


def test_compare_folder_gives_one_column_per_norm(runs, tmp_path, capsys):
    out = tmp_path / "cams.png"
    code, _, _ = _cam([runs.cmp, "--batch-size", "32", "--run-seed", "0", "--out", out], capsys)
    assert code == 0 and read_grid_metadata(out)["labels"] == ["input", "bn", "nabn"]
    code, _, err = _cam([runs.cmp, "--batch-size", "8"], capsys)
    assert code == 2 and "no runs at --batch-size 8; it has 32" in err
    code, _, err = _cam([runs.cmp, "--run-seed", "5"], capsys)
    assert code == 2 and "no runs with --run-seed 5 at batch size 32; it has seeds 0" in err


def test_runs_on_different_splits_or_sizes_are_refused_naming_both(runs, capsys):
    code, _, err = _cam([runs.bn, runs.other_seed], capsys)
    assert code == 2
    assert str(runs.bn) in err and str(runs.other_seed) in err
    assert "different test splits" in err and "seed 0 vs 1" in err
    code, _, err = _cam([runs.bn, runs.other_size], capsys)
    assert code == 2
    assert str(runs.bn) in err and str(runs.other_size) in err and "8 px" in err
    assert "16 px" in err


def test_different_datasets_are_refused_naming_both():
    def fake(folder, name):
        info = SimpleNamespace(name=name, image_size=32)
        return SimpleNamespace(
            folder=folder, dataset=SimpleNamespace(info=info), config=SimpleNamespace(seed=0)
        )

    with pytest.raises(CamError, match="runs/a was trained on digits and runs/b on cifar10"):
        _check_same_images([fake("runs/a", "digits"), fake("runs/b", "cifar10")], "test")


def test_bad_runs_methods_and_layers(runs, tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    code, _, err = _cam([runs.bn, empty], capsys)
    assert code == 2 and f"{empty} holds no best.pt" in err
    code, _, err = _cam([tmp_path / "nowhere"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _cam([runs.bn, "--method", "gradkam"], capsys)
    assert code == 2 and "unknown CAM method 'gradkam'; valid:" in err and "scorecam" in err
    code, _, err = _cam([runs.bn, "--target-layer", "layer7"], capsys)
    assert code == 2 and "no layer 'layer7'; valid: conv1, bn1" in err and "layer3.0" in err
    code, _, err = _cam([runs.bn, "--indices", "400"], capsys)
    assert code == 2 and "out of range; the split has images 0..356" in err
    code, _, err = _cam([runs.bn, "--n", "0"], capsys)
    assert code == 2 and "--n must be between 1 and 357" in err


def test_without_grad_cam_one_line_names_the_extra(runs, capsys, monkeypatch):
    grid = runs.cmp / "cams-bs32-seed0.png"
    saved = grid.read_bytes()
    grid.unlink()
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    code, _, err = _cam([runs.bn], capsys)
    assert code == 2 and "pip install 'augmentbn[cam]'" in err and len(err.splitlines()) == 1
    argv = ["compare", "--depth", "8", "--epochs", "1", "--norms", "bn", "nabn"]
    argv += ["--batch-sizes", "32", "--seeds", "0", "--out", str(runs.cmp), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "augmentbn[cam]" in line]
    assert len(skipped) == 1 and skipped[0].startswith("CAM grids skipped:")
    assert not grid.exists()
    monkeypatch.undo()
    assert main([*argv, "--no-cam"]) == 0
    assert "CAM grids" not in capsys.readouterr().out and not grid.exists()
    grid.write_bytes(saved)
