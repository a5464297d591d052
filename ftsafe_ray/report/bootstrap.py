"""Percentile bootstrap intervals of a mean: plain, and resampling whole clusters (prompts)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_MAX_RESAMPLED_VALUES = 4_000_000

Statistic = Callable[[np.ndarray], Any]
CI = tuple[float, float]


def reduce_mean(values: Any) -> Any:
    """Mean over the last axis; nan for an empty sample (works on resample matrices too)."""
    arr = np.asarray(values, dtype=float)
    if arr.shape[-1] == 0:
        return math.nan if arr.ndim == 1 else np.full(arr.shape[:-1], math.nan)
    return arr.mean(axis=-1)


def mean_statistic(samples: np.ndarray) -> Any:
    """Mean over the last axis, the vectorised statistic behind every rate and score CI."""
    return reduce_mean(samples)


def _resampled_statistic(
    arr: np.ndarray, statistic: Statistic, rng: np.random.Generator, count: int
) -> np.ndarray:
    resamples = arr[rng.integers(0, arr.size, size=(count, arr.size))]
    stats = np.asarray(statistic(resamples), dtype=float)
    if stats.shape != (count,):
        stats = np.array([float(statistic(row)) for row in resamples])
    return stats


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = mean_statistic,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """Percentile bootstrap interval of `statistic`; (nan, nan) when empty, (v, v) for one value.

    `statistic` should reduce the last axis of a (n_resamples, n) matrix, as `mean_statistic`
    does; a statistic that only takes 1-D samples also works, one resample at a time.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return (math.nan, math.nan)
    if arr.size == 1:
        point = float(statistic(arr))
        return (point, point)
    rng = np.random.default_rng(seed)
    # Resample in blocks so memory stays bounded (~32 MB of indices) however large the sample.
    block = max(1, _MAX_RESAMPLED_VALUES // arr.size)
    stats = np.concatenate(
        [
            _resampled_statistic(arr, statistic, rng, min(block, n_resamples - start))
            for start in range(0, n_resamples, block)
        ]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return (float(low), float(high))


def cluster_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[int] | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """Percentile bootstrap interval of the mean, resampling whole clusters (prompts).

    Each resample draws as many clusters as there are, with replacement, and takes the mean of
    every value in them; with one value per cluster this is the plain bootstrap of the mean.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = np.asarray(values, dtype=float).ravel()
    ids = np.asarray(clusters, dtype=np.int64).ravel()
    if arr.size != ids.size:
        raise ValueError(f"{arr.size} values but {ids.size} cluster ids")
    if arr.size == 0:
        return (math.nan, math.nan)
    _, ids = np.unique(ids, return_inverse=True)
    sums = np.bincount(ids, weights=arr)
    counts = np.bincount(ids).astype(float)
    return cluster_sums_bootstrap_ci(sums, counts, n_resamples, confidence, seed)


def cluster_sums_bootstrap_ci(
    sums: np.ndarray,
    counts: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """`cluster_bootstrap_ci` of a sample given by its clusters' value sums and sizes (in the
    order of the clusters' ids)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sums = np.asarray(sums, dtype=float)
    counts = np.asarray(counts, dtype=float)
    if sums.size == 0:
        return (math.nan, math.nan)
    if sums.size == 1:
        point = float(sums[0] / counts[0])
        return (point, point)
    rng = np.random.default_rng(seed)
    k = sums.size
    block = max(1, _MAX_RESAMPLED_VALUES // k)
    stats = []
    for start in range(0, n_resamples, block):
        draw = rng.integers(0, k, size=(min(block, n_resamples - start), k))
        stats.append(sums[draw].sum(axis=1) / counts[draw].sum(axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(stats), [alpha, 1 - alpha])
    return (float(low), float(high))
