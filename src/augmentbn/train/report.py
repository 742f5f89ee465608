"""A run's human-readable outputs: ``log.csv``, ``curves.png``, JSON files; all written
atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write

__all__ = [
    "LOG_COLUMNS",
    "curves_figure",
    "log_columns",
    "run_title",
    "write_csv",
    "write_curves",
    "write_json",
    "write_log",
]

SCORE_LABELS = {"acc": "accuracy", "dice": "Dice"}


def log_columns(score: str = "acc") -> tuple[str, ...]:
    """``log.csv``'s columns for a task scored by ``score`` (``"acc"``, or ``"dice"`` for
    segmentation)."""
    return ("epoch", "lr", "train_loss", f"train_{score}", "val_loss", f"val_{score}", "time")


LOG_COLUMNS = log_columns("acc")


def write_json(path: Path, value: Any) -> None:
    """Valid JSON: a NaN or infinite number is written as ``null``."""
    text = json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def write_log(path: Path, history: Sequence[dict[str, Any]], score: str = "acc") -> None:
    write_csv(path, history, log_columns(score))


def run_title(config: Any) -> str:
    """``"nabn: resnet20 on digits, batch 8, seed 0"``, for a run's plots."""
    arch = config.resolved_arch
    if arch in ("resnet", "resnet_cifar"):
        arch = f"resnet{config.depth}"
    return (
        f"{config.resolved_norm}: {arch} on {config.dataset}, "
        f"batch {config.train_batch}, seed {config.seed}"
    )


def write_curves(
    path: Path, history: Sequence[dict[str, Any]], title: str | None = None, score: str = "acc"
) -> None:
    """``curves.png``: :func:`curves_figure`, written atomically."""
    fig = curves_figure(history, title, score)  # selects the Agg backend before pyplot
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def curves_figure(
    history: Sequence[dict[str, Any]], title: str | None = None, score: str = "acc"
) -> Any:
    """Loss and the score (accuracy, or Dice for segmentation) per epoch, train and val, on
    integer epoch ticks; ``title`` (e.g. :func:`run_title`) above both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        ax_acc.plot(epochs, [row[f"{split}_{score}"] for row in history], marker="o", label=split)
    label = SCORE_LABELS.get(score, score)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel=label, title=label)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
