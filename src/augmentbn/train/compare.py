"""``augmentbn compare``: the grid norms × batch sizes × seeds on one dataset and model, with
everything else held fixed, and honest statistics on the result.

Each cell of the grid is an ordinary run in ``out/runs/<norm>-bs<B>-seed<S>``. A finished run
trained with the same settings is skipped, an unfinished one (an interrupted grid) is continued
exactly, and one trained with other settings is refused with the differences listed, before any
cell trains (``overwrite=True`` trains every cell again). ``results.csv`` holds one row per
run; ``summary.md`` the mean ± std per norm and batch size and, for each norm, the paired
difference to BatchNorm over the same seeds with a 95% confidence interval (Student's t) and a
verdict corrected for the number of comparisons in the grid (Holm–Bonferroni, :mod:`.stats`);
``comparison.png`` plots the paired differences with their intervals and the raw accuracies.
Segmentation grids compare the mean test Dice over volumes the same way (``test_dice``, with
``test_hd95`` beside it in ``results.csv``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..methods import get_method
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .distributed import DistContext, is_shared, mark_shared
from .engine import RunError, train
from .report import write_csv
from .rundir import RunFolder
from .stats import holm_bonferroni, paired_difference

__all__ = ["CompareGrid", "cell_statistics", "paired_difference", "run_grid", "summarize"]

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
    "dataset",
)
SEG_RESULT_COLUMNS = tuple(
    {"test_acc": "test_dice", "test_macro_auc": "test_hd95", "val_acc": "val_dice"}.get(c, c)
    for c in RESULT_COLUMNS
)
METRIC_LABELS = {"acc": ("test accuracy", "acc"), "dice": ("mean test Dice over volumes", "Dice")}
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
    every cell trains distributed and rank 0 alone reads and writes the folders.

    Raises:
        RunError: a cell's folder holds a run trained with other settings (every such cell and
            setting is listed; nothing is trained).
    """
    out = Path(out)
    dist = dist or DistContext.current()
    configs = []
    for norm, batch_size, seed in grid.cells():
        config = base.replace(
            norm=norm,
            placement=_cell_placement(norm, base.placement),
            train_batch=batch_size,
            seed=seed,
            checkpoint=str(run_dir(out, norm, batch_size, seed)),
            arch=base.resolved_arch,
        )
        configs.append(config.validate())  # every cell is checked before any trains
        dist.check_batch(batch_size)

    def check_cells() -> list[dict[str, Any] | None]:
        """Every cell's finished metrics (``None``: to train), or the refusal of them all."""
        finished, refused = [], []
        for config in configs:
            try:
                folder = RunFolder.open(config, resume=not overwrite, overwrite=overwrite)
                finished.append(folder.finished)
            except (RunError, CheckpointError) as error:
                refused.append(str(error))
        if refused:
            raise RunError(
                f"{len(refused)} of {len(configs)} runs cannot be continued; nothing was "
                "trained:\n" + "\n".join(f"  {message}" for message in refused)
            )
        return finished

    finished_cells = dist.from_main(check_cells)
    rows = []
    total = len(configs)
    for index, config in enumerate(configs, 1):
        label = (
            f"[{index}/{total}] norm={config.norm} batch={config.train_batch} seed={config.seed}"
        )
        metrics = finished_cells[index - 1]
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
    metric = "dice" if metrics.get("task") == "segmentation" else "acc"
    columns = SEG_RESULT_COLUMNS if metric == "dice" else RESULT_COLUMNS
    write_csv(out / "results.csv", rows, columns)
    summary = summarize(rows, metric=metric)
    if metrics.get("synthetic"):
        summary += f"\nData: {metrics['dataset']}, SYNTHETIC volumes, not patient data.\n"
    from .checkpoint import atomic_write

    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(summary))
    plot_comparison(rows, out / "comparison.png", metric=metric)
    return rows


def _cell_placement(norm: str, placement: str | None) -> str | None:
    """The grid's placement for one norm: ``"paper"`` applies to the norms with a paper
    placement (NABN, IEBN); the others (BN, ...) take their default, every site."""
    if placement == "paper" and get_method(norm).paper_roles is None:
        return None
    return placement


def _row(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics["final"]["test"]
    if metrics.get("task") == "segmentation":
        return {
            "norm": config.norm,
            "batch_size": config.train_batch,
            "seed": config.seed,
            "test_dice": test["dice"],
            "test_hd95": test.get("hd95"),
            "val_dice": metrics["final"]["val"]["dice"],
            "best_epoch": metrics.get("best_epoch"),
            "epochs": metrics.get("epochs"),
            "run_dir": config.checkpoint,
            "dataset": metrics.get("dataset", config.dataset),
        }
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
        "dataset": metrics.get("dataset", config.dataset),
    }


# --- statistics ----------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell_statistics(
    rows: Sequence[dict[str, Any]], confidence: float = 0.95, metric: str = "acc"
) -> list[dict[str, Any]]:
    """One entry per norm and batch size: n, mean ± std of the test metric (``"acc"``; ``"dice"``
    for segmentation: the mean test Dice over volumes) under ``"score"`` (and macro AUC), and
    for each norm but BN the paired difference to BN over the same seeds (:func:`paired_difference`)
    with its Holm–Bonferroni-adjusted p-value over every such comparison in ``rows``
    (:func:`holm_bonferroni`) and the verdict that follows."""
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    sizes = sorted({int(r["batch_size"]) for r in rows})
    cell = {(r["norm"], int(r["batch_size"]), r["seed"]): r for r in rows}
    has_auc = all(r.get("test_macro_auc") not in (None, "") for r in rows)
    key = f"test_{metric}"
    cells = []
    for size in sizes:
        for norm in norms:
            runs = [r for (n, b, _), r in sorted(cell.items()) if n == norm and b == size]
            if not runs:
                continue
            entry: dict[str, Any] = {"norm": norm, "batch_size": size, "n": len(runs)}
            entry["score"] = _mean_std([float(r[key]) for r in runs])
            if has_auc:
                entry["auc"] = _mean_std([float(r["test_macro_auc"]) for r in runs])
            if norm != BASELINE and BASELINE in norms:
                seeds = [r["seed"] for r in runs if (BASELINE, size, r["seed"]) in cell]
                entry["diff"] = paired_difference(
                    [float(cell[(norm, size, s)][key]) for s in seeds],
                    [float(cell[(BASELINE, size, s)][key]) for s in seeds],
                    confidence,
                )
            cells.append(entry)
    tested = [c for c in cells if "diff" in c]
    alpha = 1 - confidence
    corrected = holm_bonferroni([c["diff"]["p"] for c in tested], alpha)
    for entry, (adjusted, reject) in zip(tested, corrected):
        diff = entry["diff"]
        entry["p_holm"] = adjusted
        if diff["p"] is None:
            entry["verdict"] = "no test (n < 2)"
        elif reject:
            entry["verdict"] = ("better" if diff["mean"] > 0 else "worse") + " than BN"
        elif diff["significant"]:
            entry["verdict"] = "not significant after correction"
        else:
            entry["verdict"] = "not significant"
    for entry in cells:
        entry.setdefault(
            "verdict", "baseline" if entry["norm"] == BASELINE else "no BN runs to compare"
        )
    return cells


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _multiplicity(m: int, level: str, alpha: str, alpha_value: float) -> str:
    if m == 0:
        return (
            "No difference to BN can be tested: a paired t-test needs at least two seeds that "
            "the norm shares with BN (e.g. --seeds 0 1 2)."
        )
    if m == 1:
        return (
            "This grid makes 1 comparison with BN; with one test, the Holm–Bonferroni "
            "correction changes nothing (Holm p = p)."
        )
    return (
        f"This grid makes {m} comparisons with BN. Tested each at the {level} level alone, "
        f"about {m} × {alpha} = {m * alpha_value:.2f} of them would come out significant by "
        "chance even between equal norms, so the verdicts are corrected (Holm–Bonferroni): a "
        f"difference is significant only when its adjusted p-value (Holm p) is ≤ {alpha}, which "
        f"keeps the chance of any false verdict in the grid at {alpha} or less. An interval that "
        "excludes 0 is not enough by itself."
    )


def summarize(rows: Sequence[dict[str, Any]], confidence: float = 0.95, metric: str = "acc") -> str:
    """``summary.md``: mean ± std of test accuracy (``metric="dice"``: the mean test Dice over
    volumes) and macro AUC per norm and batch size, the paired difference to BN over the same
    seeds with its uncorrected interval, and verdicts corrected for the number of comparisons
    (Holm–Bonferroni)."""
    cells = cell_statistics(rows, confidence, metric)
    title, short = METRIC_LABELS[metric]
    has_auc = any("auc" in c for c in cells)
    level = f"{confidence:.0%}"
    alpha = f"{1 - confidence:.2g}"
    tested = [c for c in cells if c.get("diff", {}).get("p") is not None]
    m = len(tested)
    lines = [
        "# Comparison",
        "",
        f"{title[0].upper()}{title[1:]}, mean ± std over seeds. Δ vs BN is the paired "
        "difference over the same "
        f"seeds with its {level} confidence interval (Student's t, n - 1 degrees of freedom), "
        "uncorrected; p is the paired t-test's two-sided p-value.",
        "",
        _multiplicity(m, level, alpha, 1 - confidence),
        "",
    ]
    header = ["norm", "batch", "n", f"test {short}"]
    if has_auc:
        header.append("macro AUC")
    header += [f"Δ {short} vs BN ({level} CI)", "p", "Holm p", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in cells:
        line = [c["norm"], str(c["batch_size"]), str(c["n"]), "{:.4f} ± {:.4f}".format(*c["score"])]
        if has_auc:
            line.append("{:.4f} ± {:.4f}".format(*c["auc"]) if "auc" in c else "—")
        diff = c.get("diff")
        if diff is None:
            line += ["—", "—", "—"]
        elif diff["low"] is None:
            line += [f"{diff['mean']:+.4f} (n={diff['n']}, no CI)", "—", "—"]
        else:
            line += [
                f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]",
                _p(diff["p"]),
                _p(c["p_holm"]),
            ]
        verdict = c["verdict"]
        line.append(f"**{verdict}**" if verdict.endswith("than BN") else verdict)
        lines.append("| " + " | ".join(line) + " |")
    lines.append("")
    significant = [c for c in cells if c["verdict"].endswith("than BN")]
    uncorrected = [c for c in cells if c["verdict"] == "not significant after correction"]
    where = "; ".join
    comparisons = f"{m} comparison{'s' if m != 1 else ''}"
    if significant:
        lines.append(
            f"Significant after Holm–Bonferroni correction over {comparisons}: "
            + where(f"{c['norm']} at batch {c['batch_size']}: {c['verdict']}" for c in significant)
            + "."
        )
    elif m:
        lines.append(
            f"No difference to BN is significant after Holm–Bonferroni correction over "
            f"{comparisons}: with these seeds the data cannot tell the norms apart."
        )
    if uncorrected:
        lines.append(
            f"Uncorrected, the {level} interval excludes 0 for "
            + where(f"{c['norm']} at batch {c['batch_size']}" for c in uncorrected)
            + f". With {comparisons} of equal norms, at least one interval excludes 0 by "
            f"chance alone in {1 - confidence**m:.0%} of grids (for independent tests)."
        )
    lines.append("")
    return "\n".join(lines)


def _plot_title(rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]]) -> str:
    def span(values: Sequence[Any]) -> str:
        low, high = min(values), max(values)
        return str(low) if low == high else f"{low}–{high}"

    datasets = sorted({str(r.get("dataset") or "?") for r in rows})
    epochs = [int(r["epochs"]) for r in rows if r.get("epochs") not in (None, "")]
    parts = [", ".join(datasets), f"n = {span([c['n'] for c in cells])} seeds per point"]
    if epochs:
        parts.append(f"{span(epochs)} epochs")
    return "; ".join(parts)


def plot_comparison(
    rows: Sequence[dict[str, Any]], path: Path, confidence: float = 0.95, metric: str = "acc"
) -> None:
    """Two panels against batch size, norms offset along x: the paired difference to BN with
    its uncorrected interval (filled marker: significant after Holm–Bonferroni), and the raw
    test accuracy (``metric="dice"``: mean test Dice), mean ± std with each seed as a dot. The
    title gives the data set, n and the epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write

    cells = cell_statistics(rows, confidence, metric)
    label_text = METRIC_LABELS[metric][0]
    norms = list(dict.fromkeys(c["norm"] for c in cells))
    sizes = sorted({c["batch_size"] for c in cells})
    width = 0.7 / max(len(norms), 1)
    offset = {n: (i - (len(norms) - 1) / 2) * width for i, n in enumerate(norms)}
    colors = {n: f"C{i}" for i, n in enumerate(norms)}
    fig, (ax_diff, ax_acc) = plt.subplots(1, 2, figsize=(10, 4.2))
    for c in cells:
        norm, x = c["norm"], sizes.index(c["batch_size"]) + offset[c["norm"]]
        label = norm if c["batch_size"] == sizes[0] else None
        accs = [
            float(r[f"test_{metric}"])
            for r in rows
            if r["norm"] == norm and int(r["batch_size"]) == c["batch_size"]
        ]
        mean, std = c["score"]
        ax_acc.errorbar(x, mean, yerr=std, fmt="o", capsize=4, color=colors[norm], label=label)
        ax_acc.plot([x] * len(accs), accs, ".", alpha=0.4, color=colors[norm])
        diff = c.get("diff")
        if diff is None:
            continue
        if diff["low"] is None:
            ax_diff.plot(x, diff["mean"], "x", color=colors[norm], label=label)
            continue
        significant = c["verdict"].endswith("than BN")
        ax_diff.errorbar(
            x,
            diff["mean"],
            yerr=[[diff["mean"] - diff["low"]], [diff["high"] - diff["mean"]]],
            fmt="o",
            capsize=4,
            color=colors[norm],
            markerfacecolor=colors[norm] if significant else "white",
            label=label,
        )
    ax_diff.axhline(0, color="0.3", linewidth=1)
    level = f"{confidence:.0%}"
    ax_diff.set(
        ylabel=f"{label_text} − BN (paired)",
        title=f"difference to BN, {level} CI (uncorrected)\nfilled marker: significant after Holm",
    )
    ax_acc.set(ylabel=label_text, title=f"{label_text} (mean ± std; dots: seeds)")
    for ax in (ax_diff, ax_acc):
        ax.set_xticks(range(len(sizes)), labels=[str(s) for s in sizes])
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_plot_title(rows, cells))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
