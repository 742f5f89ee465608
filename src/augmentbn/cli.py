"""``augmentbn train | eval | compare | cam | export``: argument parsing only; the work is in
``augmentbn.train`` (and ``augmentbn.cam``, ``augmentbn.export``).

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
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from .methods import PLACEMENTS, get_method, list_methods, method_names

__all__ = ["build_parser", "config_from_args", "main"]


def _norm_help() -> str:
    """The registered norms with their titles and aliases (default bn)."""
    aliases: dict[str, list[str]] = {}
    for alias, name in method_names().items():
        if alias != name:
            aliases.setdefault(name, []).append(alias)
    entries = [
        f"{name} ({get_method(name).title}"
        + (f"; also {', '.join(aliases[name])}" if name in aliases else "")
        + ")"
        for name in list_methods()
    ]
    return "the normalization, default bn: " + "; ".join(entries)


def _config_params():
    """The norms' own parameters that are configuration keys (NABN's), as (method, param)."""
    from .train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return [
        (spec, param)
        for spec in map(get_method, list_methods())
        for param in spec.params
        if param.name in fields
    ]


def _registries() -> dict[str, list[str]]:
    """The valid values of the flags that name things, from the registries that hold them."""
    from .data import list_datasets
    from .models import list_models
    from .train.config import OPTIMIZERS, list_presets

    return {
        "norms": list_methods(),
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
    model.add_argument("--norm", default=S, metavar="NORM", help=_norm_help())
    model.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=S,
        help="where the norm goes: paper (each paper's sites; the default where a paper names "
        "them) or all",
    )
    for method, param in _config_params():
        flag = "--" + param.name.replace("_", "-")
        model.add_argument(
            flag,
            dest=param.name,
            type=param.type,
            default=S,
            help=f"{method.name}: {param.help}"
            + (f"; one of {', '.join(param.choices)}" if param.choices else ""),
        )
    model.add_argument(
        "--base-width",
        dest="base_width",
        type=int,
        default=S,
        help="the U-Net's first width (default 64), segmentation only",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=S,
        help=f"one of {', '.join(valid['datasets'])} (default digits, offline; segmentation: "
        "seg_demo is synthetic and offline, msd_<task> the Decathlon's)",
    )
    data.add_argument("--data-root", dest="data_root", default=S)
    data.add_argument("--download", action="store_true", default=S)
    data.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=S,
        help="image side in px; segmentation: the slice window (256 for msd_*)",
    )
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
        metavar="RUN",
        help="continue the run in --checkpoint, or in the folder RUN (or RUN/last.pt) from the "
        "end of its last finished epoch; with -e, the checkpoint file to evaluate",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="train again and replace the run in the folder once the new one has a checkpoint",
    )
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
    compare.add_argument(
        "--no-cam",
        dest="no_cam",
        action="store_true",
        help="skip the Grad-CAM grids (one per batch size, first seed, one column per norm)",
    )
    _cam_parser(commands)

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


def _cam_parser(commands: Any) -> None:
    cam = commands.add_parser(
        "cam",
        help="Grad-CAM maps of trained runs side by side",
        description="Draw the same images through each run's best.pt: one row per image, the "
        "input, then one column per run labelled with its norm, prediction and confidence.",
    )
    cam.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run folder, a .pt checkpoint, or a compare output folder (one column per norm)",
    )
    cam.add_argument("--split", choices=("train", "val", "test"), default="test")
    cam.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    cam.add_argument("--indices", type=int, nargs="+", default=None, help="these images instead")
    cam.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    cam.add_argument(
        "--method",
        default="gradcam",
        help="a pytorch_grad_cam class name in lower case: gradcam (default), gradcam++, "
        "hirescam, xgradcam, layercam, scorecam, eigencam, ...",
    )
    cam.add_argument(
        "--predicted", action="store_true", help="map the predicted class, not the true one"
    )
    cam.add_argument(
        "--target-layer", dest="target_layer", default=None, help="module name, e.g. layer3.2"
    )
    cam.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help="compare folder: the batch size of the runs (default the smallest)",
    )
    cam.add_argument(
        "--run-seed",
        dest="run_seed",
        type=int,
        default=None,
        help="compare folder: the seed of the runs (default the smallest)",
    )
    cam.add_argument("--data-root", dest="data_root", default=None)
    cam.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    cam.add_argument("--out", default="cams.png", help="output PNG (default cams.png)")


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
    "no_cam",
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
    config = TrainConfig.from_dict(values, source="command line")  # types and ranges
    if getattr(args, "command", None) == "compare":
        return config, compare  # the grid checks each cell, with its own norm, before any trains
    return config.validate(), compare


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
    from .train.metrics import primary_metric

    config, _ = config_from_args(args)
    if args.resume:  # the reference passes the checkpoint file itself
        config = config.replace(checkpoint=str(_resume_folder(Path(args.resume), args.evaluate)))
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
    key, name = primary_metric(metrics["task"])
    best = metrics["best"]["test"][key]
    final = metrics["final"]["test"][key]
    data = " (synthetic data)" if metrics.get("synthetic") else ""
    print(
        f"test {name}{data}: final {final:.4f}, at the best val epoch "
        f"({metrics['best_epoch']}) {best:.4f}; outputs in {config.checkpoint}"
    )
    return 0


def _resume_folder(path, evaluate: bool):
    """The run folder ``--resume PATH`` names: PATH itself, or the folder of PATH/last.pt."""
    from .train import RunError

    if path.is_dir() or not path.suffix:
        return path
    if evaluate or path.name == "last.pt":
        return path.parent
    if path.name == "best.pt":
        raise RunError(
            f"--resume {path}: a run continues from where it stopped, its last.pt; best.pt holds "
            f"the best validation epoch. Resume with --resume {path.parent}, or evaluate this "
            f"file with `augmentbn eval {path}`"
        )
    raise RunError(f"--resume takes a run folder or its last.pt, got {path}")


def _eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint
    from .train.metrics import primary_metric

    overrides = {k: v for k, v in (("data_root", args.data_root), ("device", args.device)) if v}
    with _launch(args.device) as dist:
        metrics = evaluate_checkpoint(args.checkpoint, args.split, **overrides)
    if not dist.is_main:
        return 0
    _print_metrics(metrics)
    key, name = primary_metric("segmentation" if "dice" in metrics else "classification")
    print(f"{args.split} {name}: {metrics[key]:.4f}")
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
    if not args.no_cam:
        from .cam import CamError
        from .train.cams import write_compare_cams

        try:
            paths = write_compare_cams(out, grid.norms, grid.batch_sizes, grid.seeds[0])
        except (ImportError, CamError) as error:  # the comparison itself is done
            print(f"CAM grids skipped: {error}")
        else:
            print("CAM grids: " + ", ".join(map(str, paths)))
    return 0


def _cam(args: argparse.Namespace) -> int:
    from .cam import require_grad_cam
    from .train.cams import cam_grid, load_runs, resolve_runs

    try:
        require_grad_cam()
    except ImportError as error:
        print(f"augmentbn cam: error: {error}", file=sys.stderr)
        return 2
    checkpoints = resolve_runs(args.runs, batch_size=args.batch_size, run_seed=args.run_seed)
    overrides = {"device": args.device}
    if args.data_root:
        overrides["data_root"] = args.data_root
    runs = load_runs(checkpoints, split=args.split, **overrides)
    comparison, indices = cam_grid(
        runs,
        n=args.n,
        indices=args.indices,
        seed=args.seed,
        method=args.method,
        predicted=args.predicted,
        target_layer=args.target_layer,
    )
    path = comparison.save(args.out)
    for column in comparison.columns:
        wrong = sum(int(p) != t for p, t in zip(column.predictions, comparison.metadata["targets"]))
        line = f"{column.label}: {len(indices) - wrong}/{len(indices)} correct"
        if column.energy is not None:
            region = comparison.metadata["region"]
            line += f", share of CAM energy on {region} {column.mean_energy:.3f} (mean)"
        print(line)
    print(f"images {indices} of the {args.split} split; grid: {path}")
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
    from .cam import CamError
    from .data._optional import MissingDependencyError
    from .data.errors import (
        CorruptFileError,
        DatasetLayoutError,
        DatasetNotFoundError,
        DownloadError,
    )
    from .export import ExportError
    from .train import CheckpointError, ConfigError, OutputError, RunError
    from .train.distributed import mark_shared, release, should_report
    from .train.signals import Terminated

    expected = (
        CamError,
        ConfigError,
        CheckpointError,
        OutputError,
        RunError,
        DatasetNotFoundError,
        DownloadError,
        CorruptFileError,
        DatasetLayoutError,
        MissingDependencyError,
        ExportError,
    )

    args = build_parser().parse_args(argv)
    handlers = {
        "train": _train,
        "eval": _eval,
        "compare": _compare,
        "cam": _cam,
        "export": _export,
    }
    try:
        return handlers[args.command](args)
    except expected as error:
        if should_report(error):
            print(f"augmentbn {args.command}: error: {error}", file=sys.stderr, flush=True)
        release(error)  # distributed: every rank waits until rank 0 has printed it
        return 2
    except KeyboardInterrupt as error:
        what = "terminated" if isinstance(error, Terminated) else "interrupted"
        if should_report(mark_shared(error)):
            print(
                f"\n{what}; the unfinished epoch is not saved: --resume (or the same compare "
                "command) continues from the end of the last finished epoch, exactly as if "
                "uninterrupted",
                file=sys.stderr,
            )
        return 143 if isinstance(error, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
