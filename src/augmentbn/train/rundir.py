"""A run's output folder: what it holds, whether a request may continue it, and replacing it.

- A folder *holds a run* when it has ``last.pt`` or ``metrics.json`` (finished).
- Continuing (``resume``) is allowed only when the stored run was trained with the same
  settings, on every key that changes the result (:func:`setting_differences`); ``epochs`` may be
  raised. A difference is refused with the keys listed; ``overwrite`` trains again instead.
- ``overwrite`` touches nothing until the new run is built: it writes into a staging folder
  beside the old run (``.<name>.staging``) and replaces the old folder by a rename once it holds
  its first checkpoint (:meth:`RunFolder.commit`), so old and new files never mix. A new run that
  fails or is interrupted before then leaves the old one as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, OutputError, describe_os_error, load_checkpoint
from .config import TrainConfig

__all__ = [
    "NOT_RESULT_KEYS",
    "RUN_ENTRIES",
    "RunError",
    "RunFolder",
    "result_settings",
    "setting_differences",
]

RUN_ENTRIES = (
    "config.yaml",
    "log.csv",
    "curves.png",
    "metrics.json",
    "last.pt",
    "best.pt",
    "split.json",
    "tensorboard",
    "test_slices.png",
)
"""What a run writes into its folder; ``overwrite`` replaces a folder holding nothing else."""

NOT_RESULT_KEYS = frozenset(
    {"checkpoint", "device", "workers", "test_batch", "preset", "download", "epochs"}
)
"""Settings that do not change a run's weights (``epochs`` is checked on its own: it may grow)."""


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def result_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that change the result, resolved by the method registry: ``-a
    <norm>_resnet`` and aliases as the canonical norm, the placement actually used, and the
    norm's own options (NABN's ``theta``, ``noise``, ...) with their defaults, for that norm
    only."""
    from ..methods import get_method, list_methods, resolve_placement

    values = {k: v for k, v in config.to_dict().items() if k not in NOT_RESULT_KEYS}
    for spec in map(get_method, list_methods()):
        for param in spec.params:
            values.pop(param.name, None)
    values["arch"], values["norm"] = config.resolved_arch, config.resolved_norm
    values["placement"] = resolve_placement(values["norm"], config.placement)
    values.update(config.norm_kwargs())
    return values


def setting_differences(
    stored: TrainConfig, requested: TrainConfig, trained_epochs: int | None = None
) -> list[str]:
    """``"key: old -> new"`` for every result-changing setting that differs; ``epochs`` counts
    when it is below ``trained_epochs`` (a run may be continued to more epochs, not fewer)."""
    old, new = result_settings(stored), result_settings(requested)
    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in dict.fromkeys([*old, *new])
        if old.get(k) != new.get(k)
    ]
    if trained_epochs is not None and requested.epochs < trained_epochs:
        trained = f"({trained_epochs} trained)"
        diffs.append(f"epochs: {stored.epochs!r} -> {requested.epochs!r} {trained}")
    return diffs


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.staging")


def _retired(out: Path) -> Path:
    return out.with_name(f".{out.name}.replaced")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(out: Path) -> None:
    """Create and remove a temporary file where the run will write; touches nothing else."""
    where = _existing_ancestor(out)
    if not where.is_dir():
        raise RunError(f"cannot use {out} as a run folder: {where} is a file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".augmentbn-probe-", dir=where)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise OutputError(
            f"cannot write in {where}: {describe_os_error(error)}; nothing was written"
        ) from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read {path} ({error}); the run is damaged") from error
    if not isinstance(value, dict):
        raise RunError(f"{path} does not hold a run's metrics; the run is damaged")
    return value


def _stored_yaml(path: Path) -> TrainConfig | None:
    import yaml

    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RunError(f"cannot read {path} ({error}); the run is damaged") from error
    if not isinstance(values, dict):
        raise RunError(f"{path} does not hold a configuration; the run is damaged")
    return TrainConfig.from_dict(values, source=str(path))


@dataclass
class RunFolder:
    """Where a run writes (``path``: its folder, or the staging folder until :meth:`commit`),
    the checkpoint it continues from (``state``), and the metrics of a finished run that has
    nothing left to train (``finished``)."""

    out: Path
    staging: bool = False
    state: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None
    path: Path = field(init=False)
    created: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.path = _staging(self.out) if self.staging else self.out

    @classmethod
    def open(cls, config: TrainConfig, *, resume: bool, overwrite: bool) -> RunFolder:
        """Inspect ``config.checkpoint`` and decide. Writes nothing, except to put back an old run
        that an interrupted ``overwrite`` had moved aside.

        Raises:
            RunError: the folder holds a run and neither ``resume`` nor ``overwrite`` is given, or
                ``resume`` is given and the stored run's settings differ (listed).
            CheckpointError: its ``last.pt`` cannot be read.
            OutputError: the folder cannot be written.
        """
        out = Path(config.checkpoint)
        _restore_retired(out)
        if out.exists() and not out.is_dir():
            raise RunError(f"cannot use {out} as a run folder: it is a file")
        last, metrics = out / "last.pt", out / "metrics.json"
        holds_run = last.is_file() or metrics.is_file()
        if overwrite:
            held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            ours = [n for n in held if n in RUN_ENTRIES or n.endswith(".tmp")]
            foreign = [n for n in held if n not in ours]
            if holds_run and foreign:
                raise RunError(
                    f"--overwrite replaces the whole folder {out}, which holds files that are not "
                    f"the run's: {', '.join(foreign[:10])}; move them, or choose another folder"
                )
            _probe_writable(out.parent)
            return cls(out, staging=bool(ours) and not foreign)
        if holds_run and not resume:
            what = "a finished run" if metrics.is_file() else "an unfinished run"
            raise RunError(
                f"{out} already holds {what}; pass --resume to continue it, --overwrite to start "
                "again, or choose another --checkpoint folder"
            )
        _probe_writable(out)
        if not holds_run:  # nothing to continue (a run stopped in its first epoch saved none)
            return cls(out)
        if metrics.is_file():
            done = _read_json(metrics)
            stored = _stored_yaml(out / "config.yaml")
            epochs = done.get("epochs")
            if stored is not None and epochs == config.epochs:
                _refuse_differences(out, stored, config, epochs)
                return cls(out, finished=done)
        if not last.is_file():
            raise RunError(
                f"{out} holds a finished run without last.pt, so it cannot be continued or "
                "checked against these settings; pass --overwrite to train it again"
            )
        try:
            state = load_checkpoint(last, resume=True)
        except CheckpointError as error:
            raise CheckpointError(
                f"{error}. The run cannot be continued: pass --overwrite to train it again "
                "(best.pt, if intact, can still be evaluated with `augmentbn eval`)"
            ) from error
        stored = TrainConfig.from_dict(state["config"], source=f"checkpoint {last}")
        _refuse_differences(out, stored, config, state["epoch"])
        return cls(out, state=state)

    def start(self) -> Path:
        """Create the folder (or the staging folder); a continued finished run loses its stale
        ``metrics.json``. Return where to write."""
        try:
            for leftover in (_staging(self.out), _retired(self.out)):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            if self.state is not None:
                (self.out / "metrics.json").unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"cannot prepare {self.path}: {describe_os_error(error)}") from error
        return self.path

    def commit(self) -> Path:
        """Replace the old run by the staging folder (two renames); return the run's folder."""
        if not self.staging or self.path == self.out:
            return self.out
        retired = _retired(self.out)
        try:
            os.replace(self.out, retired)
        except FileNotFoundError:
            retired = None
        except OSError as error:
            raise OutputError(
                f"cannot replace {self.out}: {describe_os_error(error)}; the previous run is "
                f"unchanged and the new one is in {self.path}"
            ) from error
        try:
            os.replace(self.path, self.out)
        except OSError as error:
            if retired is not None:
                os.replace(retired, self.out)
            raise OutputError(
                f"cannot replace {self.out}: {describe_os_error(error)}; the previous run is "
                f"unchanged and the new one is in {self.path}"
            ) from error
        self.path = self.out
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return self.out

    def abandon(self) -> None:
        """After a failure before :meth:`commit`: remove the staging folder (the old run stays),
        or the run's folder if :meth:`start` created it and nothing is in it."""
        if self.staging and self.path != self.out:
            _restore_retired(self.out)  # interrupted between commit's two renames
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty


def _restore_retired(out: Path) -> None:
    """Put back an old run that :meth:`RunFolder.commit` moved aside and could not replace (an
    interruption between its two renames)."""
    retired = _retired(out)
    if retired.is_dir() and not out.exists():
        try:
            os.replace(retired, out)
        except OSError as error:
            raise OutputError(
                f"cannot move {retired} back to {out}: {describe_os_error(error)}"
            ) from error


def _refuse_differences(
    out: Path, stored: TrainConfig | None, requested: TrainConfig, trained: int | None
) -> None:
    if stored is None:
        return
    diffs = setting_differences(stored, requested, trained)
    if diffs:
        raise RunError(
            f"{out} holds a run trained with other settings ({'; '.join(diffs)}); pass "
            "--overwrite to train it again with the new ones, or choose another folder"
        )
