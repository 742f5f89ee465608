"""The statistics of ``compare``: paired differences with Student's t, and the Holm–Bonferroni
correction for testing many of them at once."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["holm_bonferroni", "paired_difference", "t_quantile"]


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student's t quantile, e.g. ``t_quantile(0.95, 2) ≈ 4.303``."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Mean of ``values[i] - baseline[i]``, its ``confidence`` interval and the two-sided
    p-value of the paired t-test (``scipy.stats.ttest_rel``).

    With fewer than two pairs the interval and p are undefined (``None``). ``significant`` says
    whether the interval excludes 0, i.e. ``p < 1 - confidence``, for this one comparison alone.
    Differences that are all equal have no spread: p is 1 if they are 0, else 0.
    """
    from scipy import stats

    diffs = [v - b for v, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "p": None, "significant": False}
    sd = statistics.stdev(diffs)
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    # No spread: scipy would return NaN; the interval is the point ``mean``.
    no_spread = 1.0 if mean == 0 else 0.0
    p = no_spread if sd == 0 else float(stats.ttest_rel(values, baseline).pvalue)
    return {
        "n": n,
        "mean": mean,
        "low": low,
        "high": high,
        "p": p,
        "significant": low > 0 or high < 0,
    }


def holm_bonferroni(
    pvalues: Sequence[float | None], alpha: float = 0.05
) -> list[tuple[float | None, bool]]:
    """Holm's step-down correction (Holm 1979, *Scand. J. Statist.* 6:65–70) of ``pvalues``.

    Sort the ``m`` p-values (``None`` entries are not tests and are left out) so that
    ``p(1) ≤ … ≤ p(m)``; the adjusted value of the ``i``-th is
    ``max_{j ≤ i} min(1, (m - j + 1) · p(j))``, and a hypothesis is rejected when its adjusted
    value is ``≤ alpha``. That keeps the chance of any false rejection among the ``m`` at most
    ``alpha``, whatever their dependence. Returns ``(adjusted p, rejected)`` in input order.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    result: list[tuple[float | None, bool]] = [(None, False)] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        result[index] = (running, running <= alpha)
    return result
