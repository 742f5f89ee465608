"""Training, evaluation and comparison of normalization layers."""

from .checkpoint import CheckpointError, OutputError
from .config import ConfigError, TrainConfig, list_presets, load_preset
from .engine import RunError, evaluate_checkpoint, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "OutputError",
    "RunError",
    "TrainConfig",
    "evaluate_checkpoint",
    "list_presets",
    "load_preset",
    "train",
]
