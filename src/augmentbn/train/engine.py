"""The training engine: one run from a :class:`TrainConfig` to its output folder.

Outputs (in ``config.checkpoint``): ``config.yaml``, ``log.csv``, ``curves.png``, ``metrics.json``,
``last.pt`` and ``best.pt`` (written atomically), ``split.json`` where the data made a split,
and TensorBoard events when ``tensorboard`` is installed. ``resume=True`` continues exactly: the
checkpoint holds the model, optimizer, scheduler, epoch, history and every RNG state (Python,
NumPy, torch, the data order and the NABN noise) at the end of an epoch. An interruption (Ctrl-C,
SIGTERM, ``kill -9``) writes nothing: ``last.pt`` keeps the last finished epoch, and the resumed
run repeats the interrupted epoch from there, as the uninterrupted run did. Segmentation data
sets are trained by a subclass of :class:`Trainer` (:mod:`.tasks`, :mod:`.segmentation`).
Under torchrun the run is distributed (:mod:`.distributed`): synchronized norm layers in
``DistributedDataParallel``, the global batch shared by the processes, outputs written by rank 0.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..convert_sync import convert_sync_norm
from ..layers.augment import warn_if_clamped
from ..methods import layer_classes
from .checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig
from .distributed import DistContext, mark_shared
from .metrics import classification_metrics
from .report import run_title, write_curves, write_json, write_log
from .rundir import RunError, RunFolder
from .signals import sigterm_raises
from .weights import load_weights

__all__ = ["RunError", "Trainer", "evaluate_checkpoint", "load_run", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_spec(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The registered model name and builder arguments of ``config.arch``."""
    arch = config.resolved_arch
    if arch in ("resnet", "resnet_cifar"):
        return "resnet_cifar", {"depth": config.depth, "block": config.block_name}
    return arch, ({"base_width": config.base_width} if config.base_width is not None else {})


def build_model(config: TrainConfig, info) -> nn.Module:
    from ..models import create_model, list_models

    name, model_kwargs = model_spec(config)
    if name not in list_models():
        raise ConfigError(
            f"unknown arch {config.arch!r}; valid: resnet (CIFAR ResNet with --depth and "
            f"--block-name), <norm>_resnet (e.g. iebn_resnet), or one of {', '.join(list_models())}"
        )
    norm = config.resolved_norm
    placement = config.placement
    try:
        return create_model(
            name,
            norm=norm,
            num_classes=info.num_classes,
            in_chans=info.in_chans,
            placement=placement,
            model_kwargs=model_kwargs,
            **config.norm_kwargs(),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


@dataclass
class EpochResult:
    loss: float
    accuracy: float  # the task's score: accuracy, or mean Dice for segmentation
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@dataclass
class Trainer:
    """Holds a run's objects; :meth:`fit` trains, :meth:`evaluate` evaluates a split."""

    score_name: ClassVar[str] = "acc"  # log.csv's train_<score>/val_<score>; picks best.pt

    config: TrainConfig
    out: Path
    device: torch.device
    datasets: dict[str, Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: dict[str, torch.Generator]
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    run: RunFolder | None = None  # replaces an overwritten run once the first checkpoint is out
    dist: DistContext = field(default_factory=DistContext)

    def __post_init__(self) -> None:
        # What runs the batches: the model, in DistributedDataParallel when distributed, or its
        # torch.compile'd wrapper (sharing its parameters; checkpoints hold the model's own
        # state dict).
        network = self.dist.wrap(self.model)
        self.network = torch.compile(network) if self.config.compile else network

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config: TrainConfig,
        *,
        splits: Iterable[str] = ("train", "val", "test"),
        dist: DistContext | None = None,
    ):
        from ..data import CorruptFileError, DatasetLayoutError, build_dataset

        config.validate()
        dist = dist or DistContext.current()
        device = dist.device(resolve_device(config.device))
        seed_everything(config.seed)

        def build() -> dict[str, Any]:
            return {
                split: build_dataset(
                    config.dataset,
                    config.data_root,
                    split,
                    download=config.download,
                    image_size=config.image_size,
                    seed=config.seed,
                )
                for split in splits
            }

        try:  # a download goes to rank 0 first; the others then read its files
            datasets = dist.main_first(build) if config.download else build()
        except ValueError as error:
            if isinstance(error, CorruptFileError | DatasetLayoutError):
                raise
            raise ConfigError(f"dataset {config.dataset!r}: {error}") from error
        info = next(iter(datasets.values())).info
        from .tasks import trainer_class

        cls = trainer_class(cls, config, info)  # checks the options against the task
        model = build_model(config, info).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if dist.enabled:
            model = convert_sync_norm(model)
        generators = {
            "data": torch.Generator().manual_seed(config.seed + 1),
            "noise": torch.Generator(device=device).manual_seed(config.seed + 2),
        }
        noise_layers = layer_classes("torch", needs_generator=True)
        for layer in model.modules():
            if isinstance(layer, noise_layers):
                layer.generator = generators["noise"]
        params = model.parameters()
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.schedule), gamma=config.gamma
        )
        return cls(
            config=config,
            out=Path(config.checkpoint),
            device=device,
            datasets=datasets,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            generators=generators,
            dist=dist,
        )

    @property
    def info(self):
        return next(iter(self.datasets.values())).info

    def _loss_fn(self, train: bool = False) -> nn.Module:
        # Distributed training sums per rank; DistContext.global_mean_loss scales the sum.
        reduction = "sum" if train and self.dist.enabled else "mean"
        if self.info.task == "multi-label":
            return nn.BCEWithLogitsLoss(reduction=reduction)
        return nn.CrossEntropyLoss(reduction=reduction)

    def _loader(self, split: str, *, train: bool):
        from ..data import build_loader

        batch = self.config.train_batch if train else self.config.test_batch
        return build_loader(
            self.datasets[split],
            batch,
            train=train,
            device=self.device,
            generator=self.generators["data"] if train else None,
            num_workers=self.config.workers,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def _autocast(self):
        if not self.config.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @staticmethod
    def _correct(logits: torch.Tensor, targets: torch.Tensor, task: str) -> float:
        if task == "multi-label":
            return ((logits >= 0) == (targets >= 0.5)).float().mean(1).sum().item()
        return (logits.argmax(1) == targets).sum().item()

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything an exact resume needs, as tensors and plain data (see checkpoint.py)."""
        scheduler = self.scheduler.state_dict()
        if isinstance(scheduler.get("milestones"), Counter):  # MultiStepLR's: a plain dict
            scheduler["milestones"] = dict(scheduler["milestones"])
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler,
            "history": self.history,
            "best": self.best,
            "rng": capture_rng(self.generators),
            "world_size": self.dist.world_size,
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        load_weights(self.model, state["model"], path, describe_model(self.config))
        try:
            scheduler = dict(state["scheduler"])
            if isinstance(scheduler.get("milestones"), dict):
                scheduler["milestones"] = Counter(scheduler["milestones"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(scheduler)
            self.epoch = state["epoch"]
            self.history = list(state["history"])
            self.best = dict(state["best"])
            restore_rng(state["rng"], self.generators)
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {path}: its optimizer, scheduler or RNG state does not fit this run "
                f"({type(error).__name__}: {error}); the file is damaged or was not written by "
                "augmentbn's trainer"
            ) from error

    # -- loops --------------------------------------------------------------------------------

    def train_epoch(self) -> EpochResult:
        from tqdm.auto import tqdm

        self.model.train()
        loss_fn, task = self._loss_fn(train=True), self.info.task
        loader = self._loader("train", train=True)
        total_loss = total_correct = seen = 0.0
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            leave=False,
            disable=not (sys.stderr.isatty() and self.dist.is_main),
        )
        for step, (images, targets) in enumerate(bar):
            images = self._prepare(images)
            with self._autocast():
                logits = self.network(images)
                loss = loss_fn(logits.float(), targets)
            if self.dist.enabled:  # the same value on every rank
                loss, loss_value = self.dist.global_mean_loss(loss, targets.numel())
            else:
                loss_value = loss.item()
            if not math.isfinite(loss_value):
                kept = (
                    f"The last good checkpoint is {self.out / 'last.pt'} (end of epoch "
                    f"{self.epoch})."
                    if self.epoch
                    else "No checkpoint was written: it happened in the first epoch."
                )
                raise mark_shared(
                    RunError(
                        f"the training loss became {loss_value} at epoch {self.epoch + 1}, step "
                        f"{step + 1}; stopping. {kept} Lower --lr, or check the data."
                    )
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = images.shape[0]
            seen += n
            total_loss += loss_value * n
            total_correct += self._correct(logits.detach(), targets, task)
            bar.set_postfix(
                loss=f"{total_loss / seen:.4f}",
                acc=f"{total_correct / seen:.4f}",
                img_s=f"{seen / (time.perf_counter() - start):.0f}",
            )
        total_loss, total_correct, seen = self.dist.sum(total_loss, total_correct, seen)
        return EpochResult(total_loss / max(seen, 1), total_correct / max(seen, 1))

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> EpochResult:
        model = model or self.network
        model.eval()
        loss_fn, task = self._loss_fn(), self.info.task
        batches = []
        for images, targets in self._loader(split, train=False):
            with self._autocast():
                logits = model(self._prepare(images)).float()
            loss = loss_fn(logits, targets).item()
            batches.append(
                (logits.cpu(), targets.cpu(), loss, self._correct(logits, targets, task))
            )
        total_loss = total_correct = seen = 0.0
        all_logits, all_targets = [], []
        for logits, targets, loss, correct in self.dist.gather_batches(batches):  # in order
            n = logits.shape[0]
            seen += n
            total_loss += loss * n
            total_correct += correct
            all_logits.append(logits)
            all_targets.append(targets)
        return EpochResult(
            total_loss / max(seen, 1),
            total_correct / max(seen, 1),
            torch.cat(all_logits),
            torch.cat(all_targets),
        )

    def metrics(self, result: EpochResult) -> dict[str, Any]:
        info = self.info
        full = classification_metrics(result.logits, result.targets, info.task, info.class_names)
        return {"loss": result.loss, **full}

    # -- the run --------------------------------------------------------------------------------

    def _write_outputs(self) -> None:
        write_log(self.out / "log.csv", self.history, self.score_name)
        write_curves(self.out / "curves.png", self.history, run_title(self.config), self.score_name)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluate, write every output; return ``metrics.json``."""
        config, out, score = self.config, self.out, self.score_name
        main = self.dist.is_main
        tensorboard = _tensorboard_writer(out) if main else None
        try:
            while self.epoch < config.epochs:
                epoch_start = time.perf_counter()
                train = self.train_epoch()  # an interruption saves nothing: see the docstring
                warn_if_clamped(self.model)  # one synchronization per epoch
                val = self.evaluate("val")
                self.epoch += 1
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                row = {
                    "epoch": self.epoch,
                    "lr": lr,
                    "train_loss": train.loss,
                    f"train_{score}": train.accuracy,
                    "val_loss": val.loss,
                    f"val_{score}": val.accuracy,
                    "time": time.perf_counter() - epoch_start,
                }
                self.history.append(row)
                if tensorboard is not None:
                    for key in ("lr", "train_loss", f"train_{score}", "val_loss", f"val_{score}"):
                        tensorboard.add_scalar(key, row[key], self.epoch)
                improved = not self.best or val.accuracy > self.best[f"val_{score}"]
                if improved:
                    self.best = {"epoch": self.epoch, f"val_{score}": val.accuracy}
                if not main:
                    continue
                state = self.state()
                if improved:
                    save_checkpoint(out / "best.pt", state)
                save_checkpoint(out / "last.pt", state)
                if self.run is not None and self.run.path != self.run.out:
                    if tensorboard is not None:
                        tensorboard.close()
                    out = self.out = self.run.commit()
                    tensorboard = _tensorboard_writer(out)
                self._write_outputs()
                print(
                    f"epoch {self.epoch}/{config.epochs}  lr {lr:.4g}  "
                    f"train loss {train.loss:.4f} {score} {train.accuracy:.4f}  "
                    f"val loss {val.loss:.4f} {score} {val.accuracy:.4f}  ({row['time']:.1f}s)",
                    flush=True,
                )
        finally:
            if tensorboard is not None:
                tensorboard.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        final = {split: self.metrics(self.evaluate(split)) for split in ("val", "test")}
        best = final
        best_path = self.out / "best.pt"
        best_state = self.dist.from_main(  # rank 0 reads it; the others get the weights
            lambda: (
                {"model": load_checkpoint(best_path)["model"]}
                if best_path.is_file() and self.best.get("epoch") != self.epoch
                else None
            )
        )
        if best_state is not None:
            best_model = _copy_with_state(self.model, best_state)
            best = {
                split: self.metrics(self.evaluate(split, best_model)) for split in ("val", "test")
            }
        result = {
            "finished": True,
            "epochs": self.epoch,
            "dataset": self.info.name,
            "task": self.info.task,
            "best_epoch": self.best.get("epoch"),
            "best": best,
            "final": final,
        }
        if self.dist.is_main:
            write_json(self.out / "metrics.json", result)
        return result


def _copy_with_state(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(state["model"])
    return clone


def describe_model(config: TrainConfig) -> str:
    """E.g. ``"resnet_cifar (depth 20, block basic), norm nabn"``."""
    name, kwargs = model_spec(config)
    args = f" ({', '.join(f'{k} {v}' for k, v in kwargs.items())})" if kwargs else ""
    return f"{name}{args}, norm {config.resolved_norm}"


def _tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Run ``config`` end to end; return the contents of ``metrics.json``.

    Everything is checked and built (settings, output folder, data, model, checkpoint) before
    anything is written; see :class:`~.rundir.RunFolder` for ``resume`` and ``overwrite``.
    ``dist``: the distributed context (default: that of the initialized process group, if any);
    rank 0 alone reads and writes the run folder, and shares what it read.
    """
    import yaml

    config = config.validate()
    config = config.replace(placement=config.resolved_placement)  # recorded as used
    dist = dist or DistContext.current()
    dist.check_batch(config.train_batch)
    with sigterm_raises():
        run = dist.from_main(lambda: RunFolder.open(config, resume=resume, overwrite=overwrite))
        if run.finished is not None:
            if dist.is_main:
                print(f"{run.out} holds this run, finished; nothing to train", flush=True)
            return run.finished
        trainer = Trainer.create(config, dist=dist)
        if run.state is not None:
            dist.check_resume(run.state, run.out / "last.pt")
            trainer.load_state(run.state, run.out / "last.pt")
        trainer.out = dist.from_main(run.start)
        trainer.run = run if dist.is_main else None
        run.state = None  # free the memory
        try:
            if dist.is_main:
                if dist.enabled:
                    print(dist.share(config.train_batch, config.test_batch), flush=True)
                text = yaml.safe_dump(config.to_dict())
                atomic_write(trainer.out / "config.yaml", lambda tmp: tmp.write_text(text))
                split_record = getattr(trainer.datasets["train"], "split_record", None)
                if split_record:
                    write_json(trainer.out / "split.json", split_record)
            result = trainer.fit()
        except BaseException:
            if dist.is_main:
                run.abandon()
            raise
        if dist.is_main:
            run.commit()
        return result


def load_run(
    path: str | Path, splits: Iterable[str], **overrides: Any
) -> tuple[Trainer, dict[str, Any]]:
    """The run of the checkpoint at ``path``, with its weights and ``splits`` of its data, and the
    checkpoint; ``overrides`` change config fields that do not affect the model (e.g.
    ``data_root``, ``device``, ``test_batch``)."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"], source=f"checkpoint {path}")
    trainer = Trainer.create(config.replace(**overrides), splits=tuple(splits))
    load_weights(trainer.model, state["model"], Path(path), describe_model(config))
    return trainer, state


def evaluate_checkpoint(path: str | Path, split: str = "test", **overrides: Any) -> dict[str, Any]:
    """Metrics of the checkpoint at ``path`` on ``split``; ``overrides`` change config fields
    that do not affect the model (e.g. ``data_root``, ``device``, ``test_batch``)."""
    trainer, state = load_run(path, (split,), **overrides)
    return {"split": split, "epoch": state["epoch"], **trainer.metrics(trainer.evaluate(split))}
