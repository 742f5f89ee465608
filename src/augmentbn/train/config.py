"""One training run's configuration: defaults, presets (YAML shipped in the package), flags.

Data flows one way: a preset and the command line's flags become one :class:`TrainConfig`; the
config builds the dataset, the model and the engine.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..methods import (
    NOISE_TYPES,
    PLACEMENTS,
    RUNNING_STATS,
    get_method,
    list_methods,
    method_names,
    resolve_placement,
)
from .validate import MAX_IMAGE_SIZE, above, at_least, between, check_values, each, one_of

__all__ = [
    "ConfigError",
    "TrainConfig",
    "list_presets",
    "load_preset",
    "resolve_arch",
]

OPTIMIZERS = ("sgd", "adam")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Field names follow the IEBN reference's flags (its
    ``--manualSeed`` is ``seed``)."""

    # model
    arch: str = "resnet"
    depth: int = 20
    block_name: str = "basic"
    norm: str = "bn"
    placement: str | None = None
    theta: float | None = None  # None: the method's default (0.2; 0.3 for uniform noise)
    noise: str = "gaussian_clip"
    noise_std: float = 1.0
    running_stats: str = "perturbed"
    base_width: int | None = None  # the U-Net's first width (None: the model's 64)
    # data
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    workers: int = 0
    # optimization
    epochs: int = 10
    schedule: list[int] = field(default_factory=list)
    gamma: float = 0.1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    train_batch: int = 128
    test_batch: int = 256
    # run
    checkpoint: str = "checkpoints/run"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    preset: str | None = None

    def validate(self, source: str = "config") -> TrainConfig:
        """Check every value (type, range, choice) and their combinations; raise
        :class:`ConfigError` naming the first problem and ``source``; return self.

        The norm, its placement and its parameters are checked by the method registry."""
        check_values(self.to_dict(), _hints(), _RULES, source)
        try:
            spec = get_method(self.resolved_norm)
            resolve_placement(spec, self.placement)
            for method in _methods_with_config_params():  # NABN's keys, whatever the norm
                method.resolve(self._method_params(method), f"norm {method.name!r}")
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        norm = spec.name
        _check_arch(self)
        if self.train_batch == 1 and spec.batch_statistics:
            raise ConfigError(
                f"train batch size 1 cannot train with norm={norm!r}: batch normalization needs "
                "at least 2 values per channel to estimate the batch mean and variance (with "
                "one sample and 1x1 feature maps the variance is 0 and training breaks). Use a "
                "batch size of 2 or more, or a batch-independent norm ('gn' or 'in')."
            )
        if self.base_width is not None and (
            not isinstance(self.base_width, int) or self.base_width < 1
        ):
            raise ConfigError(f"base_width must be a positive integer, got {self.base_width!r}")
        if sorted(self.schedule) != list(self.schedule):
            raise ConfigError(f"schedule must be increasing epochs, got {self.schedule}")
        return self

    @property
    def resolved_arch(self) -> str:
        return resolve_arch(self.arch, self.norm)[0]

    @property
    def resolved_norm(self) -> str:
        """The canonical name of the norm (``-a iebn_resnet`` and aliases resolved)."""
        norm = resolve_arch(self.arch, self.norm)[1]
        return method_names().get(norm, norm)

    def _method_params(self, method) -> dict[str, Any]:
        return {p.name: getattr(self, p.name) for p in method.params if p.name in _FIELDS}

    @property
    def resolved_placement(self) -> str:
        """Where the norm goes: ``placement``, or the method's default from the registry
        (``"paper"`` for NABN and IEBN, ``"all"`` for the others)."""
        return resolve_placement(self.resolved_norm, self.placement)

    def norm_kwargs(self) -> dict[str, Any]:
        """The norm layers' arguments that this configuration holds, defaults filled in by the
        method registry (``theta=None`` becomes 0.2, or 0.3 for uniform noise)."""
        method = get_method(self.resolved_norm)
        return {
            k: v for k, v in method.resolve(self._method_params(method)).items() if k in _FIELDS
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown keys {unknown}; valid keys: {', '.join(sorted(names))}"
            )
        return cls(**check_values(values, _hints(), _RULES, source))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _methods_with_config_params():
    """The registered methods some of whose parameters are configuration keys (NABN)."""
    specs = (get_method(name) for name in list_methods())
    return [spec for spec in specs if any(p.name in _FIELDS for p in spec.params)]


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _datasets() -> list[str]:
    from ..data import list_datasets

    return list_datasets()


def _norm_names(name: str) -> str | None:
    """The one check of a norm name: a registered method or alias (any case)."""
    if name.lower() in method_names():
        return None
    aliases = ", ".join(a for a, n in method_names().items() if a != n)
    return f"one of {', '.join(list_methods())} (or an alias: {aliases})"


def _device(name: str) -> str | None:
    import torch

    try:
        torch.device(name)
    except RuntimeError:
        return "auto, cpu, cuda, cuda:<index>, mps or another torch device"
    return None


_RULES = {
    "depth": at_least(1),
    "block_name": one_of(("basic", "bottleneck")),
    "norm": _norm_names,
    "placement": one_of(PLACEMENTS),
    "theta": at_least(0, finite=False),
    "noise": one_of(NOISE_TYPES),
    "noise_std": above(0),
    "running_stats": one_of(RUNNING_STATS),
    "dataset": one_of(_datasets),
    "image_size": between(1, MAX_IMAGE_SIZE),
    "workers": at_least(0),
    "epochs": at_least(0),
    "schedule": each(at_least(1)),
    "gamma": above(0),
    "lr": above(0),
    "momentum": between(0, 1),
    "weight_decay": at_least(0),
    "optimizer": one_of(OPTIMIZERS),
    "train_batch": at_least(1),
    "test_batch": at_least(1),
    "checkpoint": lambda v: "a folder name" if not v else None,
    "seed": between(0, 2**62),
    "device": lambda v: None if v == "auto" else _device(v),
}
"""Range and choice of each field (its type comes from the annotation)."""


_COMPARE_HINTS = {"norms": list[str], "batch_sizes": list[int], "seeds": list[int]}
_COMPARE_RULES = {
    "norms": each(_norm_names),
    "batch_sizes": each(_RULES["train_batch"]),
    "seeds": each(_RULES["seed"]),
}
"""A preset's ``compare:`` section."""


def _check_arch(config: TrainConfig) -> None:
    from ..models import list_models

    arch = config.resolved_arch
    if arch not in ("resnet", "resnet_cifar", *list_models()):
        raise ConfigError(
            f"unknown arch {config.arch!r}; valid: resnet (CIFAR ResNet with --depth and "
            f"--block-name), <norm>_resnet (e.g. iebn_resnet), or one of {', '.join(list_models())}"
        )


def resolve_arch(arch: str, norm: str) -> tuple[str, str]:
    """``-a iebn_resnet`` (the IEBN reference's command line: ``<norm>_<arch>`` with any
    registered norm name) means ``-a resnet --norm iebn``; return ``(arch, norm)``."""
    arch, norm = arch.lower(), norm.lower()
    prefix, _, rest = arch.partition("_")
    if rest and prefix in method_names():
        return rest, method_names()[prefix]
    return arch, norm


def _preset_dir():
    return resources.files("augmentbn.train") / "presets"


def list_presets() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's values, by shipped name (see :func:`list_presets`) or by YAML file path.

    A preset may also hold a ``compare:`` section (norms, batch sizes, seeds) for
    ``augmentbn compare``; it is returned under that key.
    """
    import yaml

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        source = f"preset {path}"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source}: cannot be read ({error})") from error
    else:
        resource = _preset_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}; valid presets: {', '.join(list_presets())} "
                "(or a path to a .yaml file)"
            )
        text, source = resource.read_text(), f"preset {name_or_path}"
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from error
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys, got {type(values).__name__}"
        )
    compare = values.get("compare")
    TrainConfig.from_dict({k: v for k, v in values.items() if k != "compare"}, source=source)
    if compare is not None and not isinstance(compare, dict):
        raise ConfigError(f"{source}: 'compare' must be a mapping")
    if compare:
        unknown = sorted(set(compare) - set(_COMPARE_HINTS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown keys {unknown} in compare; valid: norms, batch_sizes, seeds"
            )
        values["compare"] = check_values(compare, _COMPARE_HINTS, _COMPARE_RULES, source)
    return values
