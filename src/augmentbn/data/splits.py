"""Seeded stratified splits: every class is cut in the same proportions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["stratified_split"]


def _part_sizes(n: int, fractions: np.ndarray) -> np.ndarray:
    """Cut ``n`` items by ``fractions``, largest remainders first (ties to earlier parts)."""
    exact = fractions * n
    sizes = np.floor(exact).astype(np.int64)
    remainders = exact - sizes
    order = np.argsort(-remainders, kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    return sizes


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split the indices ``0..len(labels)-1`` into ``len(fractions)`` disjoint sorted parts.

    Each class ``c`` (``n_c`` items) is shuffled with ``numpy.random.default_rng(seed)`` (classes
    in increasing order) and cut into parts of ``floor(f_i · n_c)`` items, the remaining items going
    to the parts with the largest fractional remainders. The same labels, fractions and seed
    always give the same parts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"stratified_split needs one label per item, got shape {labels.shape}")
    frac = np.asarray(fractions, dtype=np.float64)
    if (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in frac]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum(_part_sizes(len(members), frac))[:-1]
        for part, chunk in zip(parts, np.split(members, bounds), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
