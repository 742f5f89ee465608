"""One training run's configuration: defaults, presets (YAML shipped in the package), flags.

Data flows one way: a preset and the command line's flags become one :class:`TrainConfig`; the
config builds the dataset, the model and the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..convert import PLACEMENTS
from ..functional import NOISE_TYPES, RUNNING_STATS
from ..layers import NORM_LAYERS

__all__ = [
    "ConfigError",
    "TrainConfig",
    "list_presets",
    "load_preset",
    "resolve_arch",
]

OPTIMIZERS = ("sgd", "adam")
# Architectures of the IEBN reference's command line (`-a iebn_resnet`): "<norm>_resnet".
_NORM_ARCH_PREFIXES = {"iebn": "iebn", "nabn": "nabn", "augment": "nabn", "bn": "bn"}


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
    theta: float = 0.2
    noise: str = "gaussian_clip"
    noise_std: float = 1.0
    running_stats: str = "perturbed"
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

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first problem; return self."""
        norm = self.resolved_norm
        if norm not in NORM_LAYERS:
            raise ConfigError(f"unknown norm {norm!r}; valid norms: {', '.join(NORM_LAYERS)}")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ConfigError(
                f"unknown placement {self.placement!r}; valid: {', '.join(PLACEMENTS)}"
            )
        if self.noise not in NOISE_TYPES:
            raise ConfigError(f"unknown noise {self.noise!r}; valid: {', '.join(NOISE_TYPES)}")
        if self.running_stats not in RUNNING_STATS:
            raise ConfigError(
                f"unknown running_stats {self.running_stats!r}; valid: {', '.join(RUNNING_STATS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: sgd, adam")
        if self.block_name not in ("basic", "bottleneck"):
            raise ConfigError(f"block_name must be basic or bottleneck, got {self.block_name!r}")
        if self.epochs < 0 or self.train_batch < 1 or self.test_batch < 1:
            raise ConfigError("epochs must be >= 0 and batch sizes >= 1")
        if self.train_batch == 1 and norm in ("bn", "nabn", "iebn"):
            raise ConfigError(
                f"train batch size 1 cannot train with norm={norm!r}: batch normalization needs "
                "at least 2 values per channel to estimate the batch mean and variance (with "
                "one sample and 1x1 feature maps the variance is 0 and training breaks). Use a "
                "batch size of 2 or more, or a batch-independent norm ('gn' or 'in')."
            )
        if sorted(self.schedule) != list(self.schedule):
            raise ConfigError(f"schedule must be increasing epochs, got {self.schedule}")
        return self

    @property
    def resolved_arch(self) -> str:
        return resolve_arch(self.arch, self.norm)[0]

    @property
    def resolved_norm(self) -> str:
        return resolve_arch(self.arch, self.norm)[1]

    @property
    def resolved_placement(self) -> str:
        """Where the norm goes: ``placement``, or each paper's (``"paper"``) for NABN and IEBN;
        ``"all"`` for the other norms, which replace every layer."""
        if self.resolved_norm in ("nabn", "iebn"):
            return self.placement or "paper"
        return "all"

    def norm_kwargs(self) -> dict[str, Any]:
        if self.resolved_norm == "nabn":
            return {
                "theta": self.theta,
                "noise": self.noise,
                "noise_std": self.noise_std,
                "running_stats": self.running_stats,
            }
        return {}

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
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def resolve_arch(arch: str, norm: str) -> tuple[str, str]:
    """``-a iebn_resnet`` means ``-a resnet --norm iebn``; return ``(arch, norm)``."""
    arch, norm = arch.lower(), norm.lower()
    prefix, _, rest = arch.partition("_")
    if rest and prefix in _NORM_ARCH_PREFIXES:
        return rest, _NORM_ARCH_PREFIXES[prefix]
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
        text, source = path.read_text(), str(path)
    else:
        resource = _preset_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}; valid presets: {', '.join(list_presets())} "
                "(or a path to a .yaml file)"
            )
        text, source = resource.read_text(), f"preset {name_or_path}"
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys, got {type(values).__name__}"
        )
    compare = values.get("compare")
    TrainConfig.from_dict({k: v for k, v in values.items() if k != "compare"}, source=source)
    if compare is not None and not isinstance(compare, dict):
        raise ConfigError(f"{source}: 'compare' must be a mapping")
    return values
