"""``augmentbn compare``: the grid norms × batch sizes × seeds on one dataset and model, with
everything else held fixed, and honest statistics on the result.

Each cell of the grid is an ordinary run in ``out/runs/<norm>-bs<B>-seed<S>``; a run whose
``metrics.json`` exists is finished and skipped, so an interrupted grid resumes where it
stopped. ``results.csv`` holds one row per run; ``summary.md`` the mean ± std per norm and batch
size and, for each norm, the paired difference to BatchNorm over the same seeds with a 95%
confidence interval (Student's t); ``comparison.png`` plots accuracy against batch size.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig
from .distributed import DistContext, is_shared, mark_shared
from .engine import RunError, train
from .report import write_csv

__all__ = ["CompareGrid", "paired_difference", "run_grid", "summarize"]

RESULT_COLUMNS = (
    "norm",
    "batch_size",
    "seed",
    "test_acc",
    "test_macro_auc",
    "val_acc",
    "best_epoch",
    "epochs",
    "run_dir",
)
BASELINE = "bn"


@dataclass(frozen=True)
class CompareGrid:
    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (self.norms and self.batch_sizes and self.seeds):
            raise ConfigError("compare needs at least one norm, one batch size and one seed")
        for name, values in (
            ("norms", self.norms),
            ("batch sizes", self.batch_sizes),
            ("seeds", self.seeds),
        ):
            if len(set(values)) != len(values):
                raise ConfigError(f"compare: repeated {name} in {list(values)}")

    def cells(self):
        for norm in self.norms:
            for batch_size in self.batch_sizes:
                for seed in self.seeds:
                    yield norm, batch_size, seed


def run_dir(out: Path, norm: str, batch_size: int, seed: int) -> Path:
    return out / "runs" / f"{norm}-bs{batch_size}-seed{seed}"


def run_grid(
    base: TrainConfig,
    grid: CompareGrid,
    out: str | Path,
    *,
    overwrite: bool = False,
    dist: DistContext | None = None,
) -> list[dict[str, Any]]:
    """Train every cell of ``grid`` (skipping finished ones); write ``results.csv``,
    ``summary.md`` and ``comparison.png`` into ``out``; return the rows. Under a process group
    every cell trains distributed and rank 0 writes."""
    out = Path(out)
    dist = dist or DistContext.current()
    configs = []
    for norm, batch_size, seed in grid.cells():
        config = base.replace(
            norm=norm,
            train_batch=batch_size,
            seed=seed,
            checkpoint=str(run_dir(out, norm, batch_size, seed)),
            arch=base.resolved_arch,
        )
        configs.append(config.validate())  # every cell is checked before any trains
        dist.check_batch(batch_size)
    rows = []
    total = len(configs)
    for index, config in enumerate(configs, 1):
        label = (
            f"[{index}/{total}] norm={config.norm} batch={config.train_batch} seed={config.seed}"
        )
        metrics_path = Path(config.checkpoint) / "metrics.json"
        metrics = dist.from_main(
            lambda path=metrics_path: (
                json.loads(path.read_text()) if path.is_file() and not overwrite else None
            )
        )
        if metrics is not None:
            if dist.is_main:
                print(f"{label}: finished earlier, skipped", flush=True)
        else:
            if dist.is_main:
                print(f"{label}: training", flush=True)
            try:
                metrics = train(config, resume=not overwrite, overwrite=overwrite, dist=dist)
            except RunError as error:
                wrapped = RunError(f"{label}: {error}")
                raise (mark_shared(wrapped) if is_shared(error) else wrapped) from error
        rows.append(_row(config, metrics))
    if not dist.is_main:
        return rows
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    summary = summarize(rows)
    from .checkpoint import atomic_write

    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(summary))
    plot_comparison(rows, out / "comparison.png")
    return rows


def _row(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics["final"]["test"]
    return {
        "norm": config.norm,
        "batch_size": config.train_batch,
        "seed": config.seed,
        "test_acc": test["accuracy"],
        "test_macro_auc": test.get("macro_auc"),
        "val_acc": metrics["final"]["val"]["accuracy"],
        "best_epoch": metrics.get("best_epoch"),
        "epochs": metrics.get("epochs"),
        "run_dir": config.checkpoint,
    }


# --- statistics ----------------------------------------------------------------------------


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student's t quantile, e.g. ``t_quantile(0.95, 2) ≈ 4.303``."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Mean of ``values[i] - baseline[i]`` and its ``confidence`` interval (paired t).

    With fewer than two pairs the interval is undefined (``None``); ``significant`` says whether
    the interval excludes 0.
    """
    diffs = [v - b for v, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "significant": False}
    half = t_quantile(confidence, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "low": low, "high": high, "significant": low > 0 or high < 0}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> str:
    """``summary.md``: mean ± std of test accuracy (and macro AUC) per norm and batch size, and
    the paired difference to BN over the same seeds."""
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    cell = {(r["norm"], r["batch_size"], r["seed"]): r for r in rows}
    has_auc = all(r.get("test_macro_auc") not in (None, "") for r in rows)
    level = f"{confidence:.0%}"
    lines = [
        "# Comparison",
        "",
        f"Test accuracy, mean ± std over seeds; Δ vs BN is the paired difference over the same "
        f"seeds with its {level} confidence interval (Student's t, n - 1 degrees of freedom).",
        "",
    ]
    header = ["norm", "batch", "n", "test acc"]
    if has_auc:
        header.append("macro AUC")
    header += [f"Δ acc vs BN ({level} CI)", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    verdicts = []
    for size in sizes:
        for norm in norms:
            runs = [r for (n, b, _), r in sorted(cell.items()) if n == norm and b == size]
            if not runs:
                continue
            acc_mean, acc_std = _mean_std([float(r["test_acc"]) for r in runs])
            line = [norm, str(size), str(len(runs)), f"{acc_mean:.4f} ± {acc_std:.4f}"]
            if has_auc:
                auc_mean, auc_std = _mean_std([float(r["test_macro_auc"]) for r in runs])
                line.append(f"{auc_mean:.4f} ± {auc_std:.4f}")
            if norm == BASELINE or BASELINE not in norms:
                line += ["—", "baseline" if norm == BASELINE else "no BN runs to compare"]
            else:
                seeds = [r["seed"] for r in runs if (BASELINE, size, r["seed"]) in cell]
                diff = paired_difference(
                    [float(cell[(norm, size, s)]["test_acc"]) for s in seeds],
                    [float(cell[(BASELINE, size, s)]["test_acc"]) for s in seeds],
                    confidence,
                )
                if diff["low"] is None:
                    line += [f"{diff['mean']:+.4f} (n={diff['n']}, no CI)", "not significant"]
                else:
                    line.append(f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]")
                    if diff["significant"]:
                        word = "better" if diff["mean"] > 0 else "worse"
                        line.append(f"**{word} than BN**")
                        verdicts.append(f"{norm} at batch {size}: {word} than BN")
                    else:
                        line.append("not significant")
            lines.append("| " + " | ".join(line) + " |")
    lines.append("")
    if verdicts:
        lines.append("Significant at the {} level: {}.".format(level, "; ".join(verdicts)))
    else:
        lines.append(
            f"No difference to BN is significant at the {level} level: with these seeds the "
            "data cannot tell the norms apart."
        )
    lines.append("")
    return "\n".join(lines)


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy against batch size, one line per norm, error bars ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4))
    for norm in dict.fromkeys(r["norm"] for r in rows):
        sizes = sorted({r["batch_size"] for r in rows if r["norm"] == norm})
        stats = [
            _mean_std(
                [float(r["test_acc"]) for r in rows if r["norm"] == norm and r["batch_size"] == s]
            )
            for s in sizes
        ]
        ax.errorbar(
            sizes,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=4,
            label=norm,
        )
    ax.set_xscale("log", base=2)
    sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(sizes, labels=[str(s) for s in sizes])
    ax.minorticks_off()
    ax.set(
        xlabel="batch size", ylabel="test accuracy", title="test accuracy (mean ± std over seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
