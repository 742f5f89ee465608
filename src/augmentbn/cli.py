"""``augmentbn train | eval | compare``: argument parsing only; the work is in ``augmentbn.train``.

``augmentbn train`` accepts the IEBN reference's command line as it stands, e.g.::

    augmentbn train -a iebn_resnet --dataset cifar100 --block-name bottleneck --depth 164 \\
        --epochs 164 --schedule 81 122 --gamma 0.1 --wd 1e-4 \\
        --checkpoint checkpoints/cifar100/resnet-164-iebn

Values come from the defaults, then the ``--preset``, then the flags given. Under
``torchrun --nproc_per_node N -m augmentbn train ...`` each command runs distributed
(:mod:`augmentbn.train.distributed`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that set :class:`TrainConfig` fields. Every default is SUPPRESS, so that only the
    flags given override the preset."""
    S = argparse.SUPPRESS
    model = parser.add_argument_group("model")
    model.add_argument(
        "-a",
        "--arch",
        default=S,
        help="resnet (CIFAR ResNet; --depth, --block-name), <norm>_resnet such as "
        "iebn_resnet, or a model name (resnet50, resnext29_8x64d, ...)",
    )
    model.add_argument("--depth", type=int, default=S, help="CIFAR ResNet depth (default 20)")
    model.add_argument(
        "--block-name", dest="block_name", choices=("basic", "bottleneck"), default=S
    )
    model.add_argument("--norm", default=S, help="bn, nabn, iebn, gn or in (default bn)")
    model.add_argument(
        "--placement",
        choices=("paper", "all"),
        default=S,
        help="where NABN/IEBN go (default: each paper's placement)",
    )
    model.add_argument("--theta", type=float, default=S, help="NABN mean-shift bound (0.2)")
    model.add_argument(
        "--noise", default=S, help="NABN noise: gaussian_clip, gaussian_reject or uniform"
    )
    model.add_argument("--noise-std", dest="noise_std", type=float, default=S)
    model.add_argument(
        "--running-stats", dest="running_stats", choices=("perturbed", "clean"), default=S
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=S, help="digits (default, offline), cifar10, ...")
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
    optim.add_argument("--optimizer", choices=("sgd", "adam"), default=S)
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
    run.add_argument("--preset", default=S, help="a shipped preset name or a YAML file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augmentbn", description="Train and compare BN, AugmentBN (NABN) and IEBN."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model and evaluate it")
    _config_flags(train)
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
    _config_flags(compare)
    compare.add_argument("--norms", nargs="+", default=None, help="default: bn nabn iebn")
    compare.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=None)
    compare.add_argument("--seeds", type=int, nargs="+", default=None)
    compare.add_argument("--out", default="runs/compare", help="output folder (runs/compare)")
    compare.add_argument("--overwrite", action="store_true", help="retrain finished runs")
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


def _launch(device: str | None):
    """torchrun's process group, if any (:func:`augmentbn.train.distributed.launch`)."""
    from .train.distributed import launch
    from .train.engine import resolve_device

    return launch(resolve_device(device or "auto"))


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train import evaluate_checkpoint, train

    config, _ = config_from_args(args)
    if args.resume:  # the reference passes the checkpoint file itself
        resume_path = Path(args.resume)
        folder = resume_path.parent if resume_path.suffix else resume_path
        config = config.replace(checkpoint=str(folder))
    with _launch(config.device) as dist:
        if args.evaluate:
            path = (
                Path(args.resume)
                if args.resume and Path(args.resume).is_file()
                else (Path(config.checkpoint) / "best.pt")
            )
            metrics = evaluate_checkpoint(path, "test", data_root=config.data_root)
            if dist.is_main:
                _print_metrics(metrics)
            return 0
        metrics = train(config, resume=args.resume is not None, overwrite=args.overwrite, dist=dist)
    if not dist.is_main:
        return 0
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
    with _launch(args.device) as dist:
        metrics = evaluate_checkpoint(args.checkpoint, args.split, **overrides)
    if not dist.is_main:
        return 0
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
    with _launch(config.device) as dist:  # under torchrun, every cell runs distributed
        run_grid(config, grid, args.out, overwrite=args.overwrite, dist=dist)
    if not dist.is_main:
        return 0
    out = Path(args.out)
    print()
    print((out / "summary.md").read_text())
    print(f"rows: {out / 'results.csv'}\nplot: {out / 'comparison.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .data.errors import (
        CorruptFileError,
        DatasetLayoutError,
        DatasetNotFoundError,
        DownloadError,
    )
    from .train import CheckpointError, ConfigError, RunError
    from .train.distributed import mark_shared, release, should_report

    expected = (
        ConfigError,
        CheckpointError,
        RunError,
        DatasetNotFoundError,
        DownloadError,
        CorruptFileError,
        DatasetLayoutError,
    )

    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "eval": _eval, "compare": _compare}
    try:
        return handlers[args.command](args)
    except expected as error:
        if should_report(error):
            print(f"augmentbn {args.command}: error: {error}", file=sys.stderr, flush=True)
        release(error)  # distributed: every rank waits until rank 0 has printed it
        return 2
    except KeyboardInterrupt:
        if should_report(mark_shared(KeyboardInterrupt())):
            print(
                "\ninterrupted; last.pt holds the run so far (resume with --resume)",
                file=sys.stderr,
            )
        return 130


if __name__ == "__main__":
    sys.exit(main())
