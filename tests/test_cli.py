"""The command line: the IEBN reference's flags, presets, compare, and errors without tracebacks."""

import csv
import re

import pytest

from augmentbn.cli import build_parser, config_from_args, main
from augmentbn.train import TrainConfig, list_presets, load_preset

pytest.importorskip("sklearn", reason="the command line needs the train extra")


def test_iebn_reference_command_line_parses():
    args = build_parser().parse_args(
        "train -a iebn_resnet --dataset cifar100 --block-name bottleneck --depth 164 "
        "--epochs 164 --schedule 81 122 --gamma 0.1 --wd 1e-4 "
        "--checkpoint checkpoints/cifar100/resnet-164-iebn".split()
    )
    config, _ = config_from_args(args)
    assert (config.resolved_arch, config.resolved_norm) == ("resnet", "iebn")
    assert config.dataset == "cifar100" and config.block_name == "bottleneck"
    assert config.depth == 164 and config.epochs == 164 and config.schedule == [81, 122]
    assert config.gamma == 0.1 and config.weight_decay == 1e-4
    assert config.checkpoint == "checkpoints/cifar100/resnet-164-iebn"
    assert config.lr == TrainConfig().lr  # untouched flags keep their defaults


def test_every_flag_of_the_issue_is_accepted():
    args = build_parser().parse_args(
        "train -a resnet --depth 20 --block-name basic --dataset digits --epochs 1 --schedule 1 "
        "--gamma 0.2 --lr 0.01 --momentum 0.8 --weight-decay 0 --train-batch 4 --test-batch 8 "
        "-c out --manualSeed 3 -j 0 --norm nabn --placement all --theta 0.1 --noise uniform "
        "--noise-std 0.5 --running-stats clean --data-root data --download --image-size 16 "
        "--optimizer adam --device cpu --amp --channels-last --compile".split()
    )
    config, _ = config_from_args(args)
    assert config.seed == 3 and config.noise == "uniform" and config.optimizer == "adam"
    assert config.amp and config.channels_last and config.compile and config.download


def test_presets_load_validate_and_flags_override():
    names = list_presets()
    assert {
        "digits",
        "iebn_cifar100_resnet164",
        "nabn_cifar10_resnet20",
        "nabn_cifar10_resnet32",
        "nabn_cifar10_resnet44",
        "nabn_oct_resnet50",
        "nabn_chest_xray_resnet50",
    } <= set(names)
    for name in names:
        values = load_preset(name)
        values.pop("compare", None)
        TrainConfig.from_dict(values).validate()
    nabn = load_preset("nabn_cifar10_resnet20")
    assert (nabn["lr"], nabn["momentum"], nabn["weight_decay"], nabn["train_batch"]) == (
        0.1,
        0.9,
        1e-4,
        128,
    )
    oct_ = load_preset("nabn_oct_resnet50")
    assert (oct_["lr"], oct_["train_batch"], oct_["epochs"], oct_["schedule"]) == (
        0.001,
        16,
        200,
        [60, 100, 140],
    )
    args = build_parser().parse_args(["train", "--preset", "nabn_cifar10_resnet20", "--lr", "0.5"])
    config, _ = config_from_args(args)
    assert config.lr == 0.5 and config.depth == 20 and config.norm == "nabn"


def test_bad_preset_file_names_unknown_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("depth: 20\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        load_preset(str(path))


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "--preset", "imagenet"], "unknown preset 'imagenet'.*digits"),
        (["train", "-a", "alexnet"], "unknown arch 'alexnet'"),
        (["train", "--norm", "ln"], "unknown norm 'ln'"),
        (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["train", "--train-batch", "1"], "batch size 1 cannot train"),
    ],
)
def test_errors_print_a_message_not_a_traceback(argv, match, capsys, tmp_path):
    assert main([*argv, "--checkpoint", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def test_train_eval_and_unreadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--depth",
        "8",
        "--epochs",
        "1",
        "--train-batch",
        "32",
        "-c",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["eval", str(out / "best.pt")]) == 0
    assert "test accuracy:" in capsys.readouterr().out
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 10)
    assert main(["eval", str(tmp_path / "broken.pt")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "Traceback" not in err


def _summary_cells(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[1].isdigit():
            mean, std = (float(v) for v in cells[3].split("±"))
            rows[(cells[0], int(cells[1]))] = (int(cells[2]), mean, std, cells)
    return rows


def test_compare_grid_summary_agrees_with_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--depth",
        "8",
        "--epochs",
        "1",
        "--norms",
        "bn",
        "iebn",
        "--batch-sizes",
        "16",
        "32",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and (out / "comparison.png").is_file()
    summary = _summary_cells((out / "summary.md").read_text())
    import statistics

    for norm in ("bn", "iebn"):
        for size in (16, 32):
            accs = [
                float(r["test_acc"])
                for r in rows
                if r["norm"] == norm and int(r["batch_size"]) == size
            ]
            n, mean, std, cells = summary[(norm, size)]
            assert n == 2
            assert mean == pytest.approx(statistics.fmean(accs), abs=5e-5)
            assert std == pytest.approx(statistics.stdev(accs), abs=5e-5)
            if norm == "iebn":
                bn = {
                    r["seed"]: float(r["test_acc"])
                    for r in rows
                    if r["norm"] == "bn" and int(r["batch_size"]) == size
                }
                diffs = [
                    float(r["test_acc"]) - bn[r["seed"]]
                    for r in rows
                    if r["norm"] == "iebn" and int(r["batch_size"]) == size
                ]
                assert float(cells[-4].split()[0]) == pytest.approx(
                    statistics.fmean(diffs), abs=5e-5
                )
    capsys.readouterr()
    assert main(argv) == 0  # an interrupted or finished grid resumes: nothing is retrained
    assert capsys.readouterr().out.count("finished earlier, skipped") == 8


def test_paired_difference_confidence_interval():
    from augmentbn.train.compare import paired_difference

    diff = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # mean 2, sd 1, n 3: half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051
    assert diff["mean"] == 2.0
    assert diff["low"] == pytest.approx(2 - 2.484138, abs=1e-5)
    assert diff["high"] == pytest.approx(2 + 2.484138, abs=1e-5)
    assert not diff["significant"]  # the interval includes 0
    assert paired_difference([1.1, 1.0, 0.9], [0.0, 0.0, 0.0])["significant"]
    assert not paired_difference([0.5, 0.6], [0.6, 0.5])["significant"]
    assert paired_difference([0.5], [0.4])["low"] is None


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_lists_the_valid_values_from_the_registries(capsys):
    from augmentbn.data import list_datasets
    from augmentbn.functional import NOISE_TYPES
    from augmentbn.layers import list_norm_layers
    from augmentbn.models import list_models

    for command in ("train", "compare"):
        text = _help(capsys, command)
        for name in list_norm_layers():  # with their titles and aliases (the registry's)
            assert f"{name} (" in text
        assert "augmentbn" in text and "gaubatchnorm" in text
        assert "one of " + ", ".join(NOISE_TYPES) in " ".join(text.split())
        assert ", ".join(list_datasets()) in text
        assert ", ".join(list_presets()) in text
        assert ", ".join(list_models()) in text
    text = _help(capsys, "export")
    assert "--format {onnx,pt2,torchscript}" in text and "--no-check" in text


def test_version(capsys):
    import augmentbn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"augmentbn {augmentbn.__version__}"


def test_subpackages_resolve_on_attribute_access():
    import subprocess
    import sys

    script = (
        "import sys, augmentbn\n"
        "assert 'augmentbn.models' not in sys.modules\n"
        "print(augmentbn.models.list_models()[0], augmentbn.train.TrainConfig.__name__,"
        " augmentbn.data.list_datasets()[0], augmentbn.integrations.__name__)\n"
        "try:\n    augmentbn.nothing\nexcept AttributeError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.splitlines()
    assert first.split()[1:] == ["TrainConfig", "bloodmnist", "augmentbn.integrations"]
    assert second == "module 'augmentbn' has no attribute 'nothing'"
