"""Many bootstrap intervals of a mean at once, each exactly what `bootstrap.py` gives alone.

A report asks for thousands of intervals, all with one seed. The resamples of an interval
depend only on that seed and on the sample's size, so every sample of one size shares them:
here they are drawn once per size, as `bootstrap_ci` and `cluster_bootstrap_ci` draw them, and
turned into a matrix of counts (how often each position is drawn in each resample). A
resample's total is then a row of that matrix times the sample, one matrix product for every
sample of the size, instead of a gathered copy of each resample.

The figures stay those of the one-at-a-time functions, to the last bit:
- Cluster intervals take sums of integer values (0/1 flags, 1-5 scores). Such sums are exact
  in floating point whatever their order, so the product gives the same totals.
- Plain intervals of a mean are of values like a difference of two per-prompt means (thirds
  when three seeds are pooled), not exact in binary, so their resample means depend on the
  order of summation. They are values m/L for small integers m and L: the product ranks the
  resamples exactly by their total of m, far apart compared with rounding; the few resamples
  the interval's order statistics can land on (those tied with them) are then averaged exactly
  as `bootstrap_ci` averages them.
Anything else (other values, huge samples) goes through the one-at-a-time functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ftsafe_ray.report.bootstrap import (
    _MAX_RESAMPLED_VALUES,
    CI,
    bootstrap_ci,
    cluster_sums_bootstrap_ci,
    mean_statistic,
)

__all__ = ["BootstrapBatch"]

# Larger samples are resampled one at a time: the shared draws would take too much memory.
_MAX_SHARED_DRAWS = 32_000_000
_MAX_SCALE = 1 << 20  # the largest common denominator of a plain sample taken exactly
_MAX_DISTINCT = 4096  # samples with more distinct values are not searched for a denominator
_EXACT = 2.0**52  # integers below this add exactly in float64
_MAX_HISTOGRAM = 16_000_000  # bins of the per-sample histograms that rank exact totals
_SAMPLES_AT_ONCE = 256  # samples whose ties are looked for together (bounds the memory)


@dataclass(frozen=True)
class _Plain:
    """A sample whose mean's interval resamples its values; `scale`: a denominator its values
    are expected to share (checked), or None to search for one."""

    values: np.ndarray
    scale: int | None


@dataclass(frozen=True)
class _Cluster:
    """A sample whose mean's interval resamples whole clusters: their sums and sizes."""

    sums: np.ndarray
    counts: np.ndarray


_Request = _Plain | _Cluster


class BootstrapBatch:
    """Percentile bootstrap intervals of means, asked for one by one and computed together."""

    def __init__(self, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0):
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        self.n_resamples = n_resamples
        self.confidence = confidence
        self.seed = seed
        self._requests: list[_Request] = []

    def mean(self, values: Sequence[float] | np.ndarray, scale: int | None = None) -> int:
        """Ask for `bootstrap_ci(values, mean_statistic, ...)`; returns its ticket. `scale`: a
        denominator the values are expected to share (e.g. thirds), a hint that is checked."""
        self._requests.append(_Plain(np.asarray(values, dtype=float).ravel(), scale))
        return len(self._requests) - 1

    def cluster_sums(self, sums: np.ndarray, counts: np.ndarray) -> int:
        """Ask for `cluster_sums_bootstrap_ci(sums, counts, ...)` (what `cluster_bootstrap_ci`
        gives for the values whose clusters have these sums and sizes); returns its ticket."""
        request = _Cluster(np.asarray(sums, dtype=float), np.asarray(counts, dtype=float))
        self._requests.append(request)
        return len(self._requests) - 1

    def solve(self) -> list[CI]:
        """Every interval asked for, in ticket order."""
        results: list[CI | None] = [None] * len(self._requests)
        by_size: dict[int, list[int]] = {}
        for ticket, request in enumerate(self._requests):
            size = _size(request)
            if size <= 1 or size * self.n_resamples > _MAX_SHARED_DRAWS:
                results[ticket] = self._alone(request)
            else:
                by_size.setdefault(size, []).append(ticket)
        for size, tickets in by_size.items():
            self._solve_size(size, tickets, results)
        return [r if r is not None else (math.nan, math.nan) for r in results]

    def _alone(self, request: _Request) -> CI:
        """The interval from the one-at-a-time function."""
        if isinstance(request, _Plain):
            return bootstrap_ci(
                request.values, mean_statistic, self.n_resamples, self.confidence, self.seed
            )
        return cluster_sums_bootstrap_ci(
            request.sums, request.counts, self.n_resamples, self.confidence, self.seed
        )

    def _solve_size(self, size: int, tickets: list[int], results: list[CI | None]) -> None:
        clustered = [t for t in tickets if _summable(self._requests[t], size)]
        plain = {t: scale for t in tickets if (scale := _plain_scale(self._requests[t]))}
        for ticket in set(tickets) - set(clustered) - set(plain):
            results[ticket] = self._alone(self._requests[ticket])
        if not clustered and not plain:
            return
        draws = _draws(self.seed, size, self.n_resamples)
        counts = _count_matrix(draws, size)
        if clustered:
            self._solve_clustered(counts, clustered, results)
        if plain:
            self._solve_plain(draws, counts, plain, results)

    def _quantiles(self, stats: np.ndarray) -> list[CI]:
        """The interval of each row of `stats` (samples × resamples), as np.quantile takes
        it of one sample's resample statistics."""
        alpha = (1 - self.confidence) / 2
        bounds = np.quantile(stats, [alpha, 1 - alpha], axis=1).T.tolist()
        return [(low, high) for low, high in bounds]

    def _solve_clustered(
        self, counts: np.ndarray, tickets: list[int], results: list[CI | None]
    ) -> None:
        requests = [self._requests[t] for t in tickets]
        sums = np.vstack([r.sums for r in requests if isinstance(r, _Cluster)])
        sizes = np.vstack([r.counts for r in requests if isinstance(r, _Cluster)])
        # Samples × resamples: each sample's statistics contiguous, for np.quantile.
        for ticket, ci in zip(
            tickets, self._quantiles((sums @ counts.T) / (sizes @ counts.T)), strict=True
        ):
            results[ticket] = ci

    def _solve_plain(
        self,
        draws: np.ndarray,
        counts: np.ndarray,
        scales: dict[int, int],
        results: list[CI | None],
    ) -> None:
        tickets = list(scales)
        values = [r.values for r in (self._requests[t] for t in tickets) if isinstance(r, _Plain)]
        scale = np.array([scales[t] for t in tickets], dtype=float)
        totals = (np.vstack(values) * scale[:, None]).round() @ counts.T  # exact: integers
        stats = totals / (scale[:, None] * draws.shape[1])
        ranks = self._touched_ranks()
        # The resamples an order statistic can land on: those whose exact total equals one at
        # a touched rank. Their means are taken as bootstrap_ci takes them.
        at_ranks = _at_ranks(totals, ranks)
        for start in range(0, len(tickets), _SAMPLES_AT_ONCE):
            part = slice(start, start + _SAMPLES_AT_ONCE)
            tied = (totals[part, :, None] == at_ranks[part, None, :]).any(axis=2)
            for row, sample in enumerate(range(start, min(start + _SAMPLES_AT_ONCE, len(tickets)))):
                resamples = np.flatnonzero(tied[row])
                stats[sample, resamples] = mean_statistic(values[sample][draws[resamples]])
        for ticket, ci in zip(tickets, self._quantiles(stats), strict=True):
            results[ticket] = ci

    def _touched_ranks(self) -> np.ndarray:
        """Every rank np.quantile reads for the interval's two bounds, with a margin."""
        alpha = (1 - self.confidence) / 2
        virtual = (self.n_resamples - 1) * np.array([alpha, 1 - alpha])
        below = np.floor(virtual).astype(np.int64)
        ranks = np.concatenate([below - 1, below, below + 1, below + 2])
        return np.unique(np.clip(ranks, 0, self.n_resamples - 1))


def _size(request: _Request) -> int:
    """How many items a resample draws: values, or clusters."""
    return request.values.size if isinstance(request, _Plain) else request.sums.size


def _summable(request: _Request, size: int) -> bool:
    """Whether a cluster request's resample totals are exact in any order: integer sums."""
    if not isinstance(request, _Cluster):
        return False
    sums = request.sums
    if not np.all(np.isfinite(sums)) or not np.array_equal(sums, np.round(sums)):
        return False
    return size * float(np.abs(sums).sum() + request.counts.sum()) < _EXACT


def _plain_scale(request: _Request) -> int | None:
    """A denominator L with every value m/L for an integer m, if one is small enough that
    summation errors cannot reorder resample totals; None otherwise."""
    if not isinstance(request, _Plain):
        return None
    values = request.values
    if not np.all(np.isfinite(values)):
        return None
    if request.scale is not None and _exact_scale(values, request.scale):
        return request.scale
    scale = _common_denominator(values)
    return scale if scale is not None and _exact_scale(values, scale) else None


def _common_denominator(values: np.ndarray) -> int | None:
    """The least common denominator of the values read as small fractions, if small."""
    distinct = np.unique(values)
    if distinct.size > _MAX_DISTINCT:
        return None
    scale = 1
    for value in distinct.tolist():
        denominator = Fraction(value).limit_denominator(_MAX_SCALE).denominator
        scale = scale * denominator // math.gcd(scale, denominator)
        if scale > _MAX_SCALE:
            return None
    return scale


def _exact_scale(values: np.ndarray, scale: int) -> bool:
    """Whether every value is m/scale for an integer m, closely enough that float totals of
    resamples keep the order of their exact totals."""
    scaled = values * scale
    numerators = np.round(scaled)
    n = values.size
    largest = float(np.abs(values).max())
    # How far a float total can be from the exact m/L total: the values' own distance from m/L
    # plus the summation's rounding (a generous bound); distinct totals are 1/L apart.
    drift = n * float(np.abs(scaled - numerators).max()) / scale + n * n * largest * 2.0**-52
    return drift < 0.25 / scale and n * float(np.abs(numerators).max()) < _EXACT


def _at_ranks(totals: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Each row's values at `ranks` once sorted, for rows of integers: counted (a histogram
    per row) rather than partitioned, when the rows' spans are small."""
    low = totals.min(axis=1)
    span = int((totals.max(axis=1) - low).max()) + 1
    rows = totals.shape[0]
    if rows * span > _MAX_HISTOGRAM:
        return np.partition(totals, ranks, axis=1)[:, ranks]
    bins = (totals - low[:, None]).astype(np.int64) + (np.arange(rows) * span)[:, None]
    cumulative = np.bincount(bins.ravel(), minlength=rows * span).reshape(rows, span).cumsum(1)
    # The value at rank k is the first whose cumulative count exceeds k.
    found = np.stack([(cumulative <= k).sum(axis=1) for k in ranks.tolist()], axis=1)
    return low[:, None] + found


def _draws(seed: int, size: int, n_resamples: int) -> np.ndarray:
    """The resampled positions bootstrap_ci and cluster_bootstrap_ci draw for this seed and
    sample size, in the same blocks (so the same numbers)."""
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_RESAMPLED_VALUES // size)
    return np.concatenate(
        [
            rng.integers(0, size, size=(min(block, n_resamples - start), size))
            for start in range(0, n_resamples, block)
        ]
    )


def _count_matrix(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each position is drawn in each resample (resamples × positions)."""
    resamples = draws.shape[0]
    flat = (draws + (np.arange(resamples, dtype=np.int64) * size)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * size).reshape(resamples, size).astype(float)
