"""``augmentbn train | eval | compare | export``: argument parsing only; the work is in
``augmentbn.train`` (and ``augmentbn.export``).

``augmentbn train`` accepts the IEBN reference's command line as it stands, e.g.::

    augmentbn train -a iebn_resnet --dataset cifar100 --block-name bottleneck --depth 164 \\
        --epochs 164 --schedule 81 122 --gamma 0.1 --wd 1e-4 \\
        --checkpoint checkpoints/cifar100/resnet-164-iebn

Values come from the defaults, then the ``--preset``, then the flags given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]


def _registries() -> dict[str, list[str]]:
    """The valid values of the flags that name things, from the registries that hold them."""
    from .convert import PLACEMENTS
    from .data import list_datasets
    from .functional import NOISE_TYPES, RUNNING_STATS
    from .layers import list_norm_layers
    from .models import list_models
    from .train.config import OPTIMIZERS, list_presets

    return {
        "norms": list_norm_layers(),
        "placements": list(PLACEMENTS),
        "noise": list(NOISE_TYPES),
        "running_stats": list(RUNNING_STATS),
        "datasets": list_datasets(),
        "presets": list_presets(),
        "models": list_models(),
        "optimizers": list(OPTIMIZERS),
    }


def _config_flags(parser: argparse.ArgumentParser, valid: dict[str, list[str]]) -> None:
    """The flags that set :class:`TrainConfig` fields. Every default is SUPPRESS, so that only the
    flags given override the preset."""
    S = argparse.SUPPRESS
    model = parser.add_argument_group("model")
    model.add_argument(
        "-a",
        "--arch",
        default=S,
        help="resnet (CIFAR ResNet; --depth, --block-name), <norm>_resnet such as "
        f"iebn_resnet, or a model name: {', '.join(valid['models'])}",
    )
    model.add_argument("--depth", type=int, default=S, help="CIFAR ResNet depth (default 20)")
    model.add_argument(
        "--block-name", dest="block_name", choices=("basic", "bottleneck"), default=S
    )
    model.add_argument("--norm", default=S, help=f"one of {', '.join(valid['norms'])} (default bn)")
    model.add_argument(
        "--placement",
        choices=valid["placements"],
        default=S,
        help="where NABN/IEBN go (default: each paper's placement)",
    )
    model.add_argument("--theta", type=float, default=S, help="NABN mean-shift bound (0.2)")
    model.add_argument(
        "--noise", choices=valid["noise"], default=S, help="NABN noise (default gaussian_clip)"
    )
    model.add_argument("--noise-std", dest="noise_std", type=float, default=S)
    model.add_argument(
        "--running-stats", dest="running_stats", choices=valid["running_stats"], default=S
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=S,
        help=f"one of {', '.join(valid['datasets'])} (default digits, offline)",
    )
    data.add_argument("--data-root", dest="data_root", default=S)
    data.add_argument("--download", action="store_true", default=S)
    data.add_argument("--image-size", dest="image_size", type=int, default=S)
    data.add_argument("-j", "--workers", type=int, default=S)
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=S)
    optim.add_argument(
        "--schedule",
        type=int,
        nargs="*",
        default=S,
        help="epochs at which the learning rate is multiplied by --gamma",
    )
    optim.add_argument("--gamma", type=float, default=S)
    optim.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=S)
    optim.add_argument("--momentum", type=float, default=S)
    optim.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=S)
    optim.add_argument("--optimizer", choices=valid["optimizers"], default=S)
    optim.add_argument("--train-batch", dest="train_batch", type=int, default=S)
    optim.add_argument("--test-batch", dest="test_batch", type=int, default=S)
    run = parser.add_argument_group("run")
    run.add_argument("--manualSeed", "--seed", dest="seed", type=int, default=S)
    run.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--amp",
        action="store_true",
        default=S,
        help="mixed precision (float16 on CUDA, bfloat16 on CPU)",
    )
    run.add_argument("--channels-last", dest="channels_last", action="store_true", default=S)
    run.add_argument("--compile", action="store_true", default=S)
    run.add_argument(
        "--preset",
        default=S,
        help=f"a YAML file, or a shipped preset: {', '.join(valid['presets'])}",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .export import FORMATS

    valid = _registries()
    parser = argparse.ArgumentParser(
        prog="augmentbn", description="Train and compare BN, AugmentBN (NABN) and IEBN."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model and evaluate it")
    _config_flags(train, valid)
    train.add_argument(
        "-c", "--checkpoint", default=argparse.SUPPRESS, help="output folder of the run"
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in --checkpoint (or in the folder of CHECKPOINT)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace a run in the folder")
    train.add_argument(
        "-e",
        "--evaluate",
        action="store_true",
        help="only evaluate --resume's checkpoint on the test split",
    )

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on a split")
    evaluate.add_argument("checkpoint", help="a last.pt or best.pt")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--data-root", dest="data_root", default=None)
    evaluate.add_argument("--device", default=None)

    compare = commands.add_parser("compare", help="the grid norms × batch sizes × seeds")
    _config_flags(compare, valid)
    compare.add_argument(
        "--norms",
        nargs="+",
        default=None,
        help=f"any of {', '.join(valid['norms'])} (default: bn nabn iebn)",
    )
    compare.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=None)
    compare.add_argument("--seeds", type=int, nargs="+", default=None)
    compare.add_argument("--out", default="runs/compare", help="output folder (runs/compare)")
    compare.add_argument("--overwrite", action="store_true", help="retrain finished runs")

    export = commands.add_parser(
        "export",
        help="export a checkpoint for inference, checked against PyTorch on its test data",
        description="Export a run's checkpoint with a dynamic batch axis: onnx (the dynamo "
        "exporter, checked with onnxruntime), pt2 (torch.export) or torchscript (torch.jit."
        "trace, deprecated in torch 2.14). The check runs the file on a batch of the run's "
        "test data and prints the largest difference to PyTorch.",
    )
    export.add_argument("checkpoint", help="a last.pt or best.pt")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="the file to write")
    export.add_argument(
        "--fold",
        action="store_true",
        help="fold first: NABN becomes BatchNorm, BatchNorm folds into the convolution before "
        "it (refused for IEBN, whose gate folds into nothing)",
    )
    export.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the check against PyTorch"
    )
    export.add_argument(
        "--data-root", dest="data_root", default=None, help="where the run's data is now"
    )
    return parser


_NOT_CONFIG = {
    "command",
    "resume",
    "overwrite",
    "evaluate",
    "norms",
    "batch_sizes",
    "seeds",
    "out",
    "split",
}


def config_from_args(args: argparse.Namespace):
    """Defaults ← preset ← flags; return ``(TrainConfig, preset's compare section)``."""
    from .train.config import TrainConfig, load_preset

    values: dict[str, Any] = {}
    compare: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if preset:
        values = load_preset(preset)
        compare = values.pop("compare", None) or {}
        values["preset"] = preset
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    values.update(flags)
    return TrainConfig.from_dict(values, source="command line").validate(), compare


def _print_metrics(metrics: dict[str, Any]) -> None:
    print(json.dumps(metrics, indent=2))


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train import evaluate_checkpoint, train

    config, _ = config_from_args(args)
    if args.resume:  # the reference passes the checkpoint file itself
        resume_path = Path(args.resume)
        folder = resume_path.parent if resume_path.suffix else resume_path
        config = config.replace(checkpoint=str(folder))
    if args.evaluate:
        path = (
            Path(args.resume)
            if args.resume and Path(args.resume).is_file()
            else (Path(config.checkpoint) / "best.pt")
        )
        _print_metrics(evaluate_checkpoint(path, "test", data_root=config.data_root))
        return 0
    metrics = train(config, resume=args.resume is not None, overwrite=args.overwrite)
    best = metrics["best"]["test"]["accuracy"]
    final = metrics["final"]["test"]["accuracy"]
    print(
        f"test accuracy: final {final:.4f}, at the best val epoch "
        f"({metrics['best_epoch']}) {best:.4f}; outputs in {config.checkpoint}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    overrides = {k: v for k, v in (("data_root", args.data_root), ("device", args.device)) if v}
    metrics = evaluate_checkpoint(args.checkpoint, args.split, **overrides)
    _print_metrics(metrics)
    print(f"{args.split} accuracy: {metrics['accuracy']:.4f}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.compare import CompareGrid, run_grid

    config, preset_grid = config_from_args(args)
    grid = CompareGrid(
        norms=tuple(args.norms or preset_grid.get("norms", ("bn", "nabn", "iebn"))),
        batch_sizes=tuple(
            args.batch_sizes or preset_grid.get("batch_sizes", (config.train_batch,))
        ),
        seeds=tuple(args.seeds or preset_grid.get("seeds", (0, 1, 2))),
    )
    run_grid(config, grid, args.out, overwrite=args.overwrite)
    out = Path(args.out)
    print()
    print((out / "summary.md").read_text())
    print(f"rows: {out / 'results.csv'}\nplot: {out / 'comparison.png'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .train.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint,
        args.format,
        args.out,
        fold=args.fold,
        check=args.check,
        data_root=args.data_root,
    )
    folded = ", folded" if result["folded"] else ""
    print(f"wrote {result['out']} ({result['format']}{folded}, dynamic batch axis)")
    if "max_difference" in result:
        runner = "onnxruntime" if result["format"] == "onnx" else "the loaded file"
        print(
            f"largest difference to PyTorch on {result['checked_images']} test images "
            f"({runner}): {result['max_difference']:.3g} (tolerance {result['tolerance']:.3g})"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .data.errors import (
        CorruptFileError,
        DatasetLayoutError,
        DatasetNotFoundError,
        DownloadError,
    )
    from .export import ExportError
    from .train import CheckpointError, ConfigError, RunError

    expected = (
        ConfigError,
        CheckpointError,
        RunError,
        DatasetNotFoundError,
        DownloadError,
        CorruptFileError,
        DatasetLayoutError,
        ExportError,
    )

    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "eval": _eval, "compare": _compare, "export": _export}
    try:
        return handlers[args.command](args)
    except expected as error:
        print(f"augmentbn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; last.pt holds the run so far (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
