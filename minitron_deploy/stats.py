"""Intervals for the numbers decisions are made on. Standard library only (no numpy, no torch).

- `median_interval`: the distribution-free interval of a median from order statistics (the
  binomial argument): exact coverage for any continuous distribution of independent repeats. With
  few repeats no pair of order statistics reaches the asked level (n = 5 gives at most 93.8% for
  95%); then the interval is [min, max] and `coverage` says what it really is, so callers can
  refuse to decide on it (the speedup gate does).
- `bootstrap_mean`, `paired_bootstrap`, `paired_ratio_bootstrap`: percentile bootstrap of a mean,
  of a mean difference and of a ratio of means over paired items (the same evaluation windows or
  task items scored by two models), seeded, so a report is reproducible.

Speedups of interleaved repeats are the median of per-round ratios (round i of the variant over
the base's rounds i and i + 1 that bracket it: background load hits both alike), with
`median_interval` of those ratios (`minitron_deploy.bench.matrix`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 4000


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_rank(n: int, level: float = LEVEL) -> tuple[int, float]:
    """(k, coverage): the largest k whose order-statistic interval [x_(k), x_(n+1-k)] of the
    median of n values covers it with probability >= `level` (1 and the coverage of [min, max]
    when none does)."""
    best_k, cov = 1, 1 - 2 * _binom_cdf(0, n)
    for k in range(2, n // 2 + 1):
        c = 1 - 2 * _binom_cdf(k - 1, n)
        if c < level:
            break
        best_k, cov = k, c
    return best_k, cov


def median_interval(xs: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Median of `xs` with its order-statistic interval.

    Returns:
        {"median", "lo", "hi", "coverage", "n"}: [lo, hi] = [x_(k), x_(n+1-k)] for the largest k
        whose coverage 1 - 2 P(Bin(n, 1/2) <= k - 1) is >= `level`; when even [min, max] falls
        short, [min, max] with its (lower) coverage.
    """
    v = sorted(float(x) for x in xs)
    n = len(v)
    if n == 0:
        raise ValueError("median_interval of no values")
    best_k, cov = median_rank(n, level)
    return {
        "median": statistics.median(v),
        "lo": v[best_k - 1],
        "hi": v[n - best_k],
        "coverage": cov if n > 1 else 0.0,
        "n": n,
    }


def ratio_interval(
    num: Sequence[float], den: Sequence[float], level: float = LEVEL
) -> dict[str, Any]:
    """Median of the per-round ratios num[i] / den[i] with their order-statistic interval."""
    if len(num) != len(den):
        raise ValueError(f"paired rounds differ in number: {len(num)} vs {len(den)}")
    return median_interval([a / b for a, b in zip(num, den, strict=True) if b], level)


def _quantile(v: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values."""
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _percentiles(stats: list[float], level: float) -> tuple[float, float]:
    """The percentile-bootstrap interval of resampled statistics: their (1-level)/2 and
    (1+level)/2 quantiles."""
    v, a = sorted(stats), (1 - level) / 2
    return _quantile(v, a), _quantile(v, 1 - a)


def bootstrap_mean(
    xs: Sequence[float], level: float = LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Mean of `xs` with a percentile-bootstrap interval: {"mean", "lo", "hi", "n", "level"}."""
    v = [float(x) for x in xs]
    n = len(v)
    if n == 0:
        raise ValueError("bootstrap_mean of no values")
    rng = random.Random(seed)
    lo, hi = _percentiles([sum(rng.choices(v, k=n)) / n for _ in range(resamples)], level)
    return {"mean": sum(v) / n, "lo": lo, "hi": hi, "n": n, "level": level}


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of a and b over the same items, and of a - b with a paired bootstrap interval.

    Args:
        a, b: per-item values of two models on the same items, in the same order (per-window
            losses, per-item accuracies).

    Returns:
        {"mean_a", "mean_b", "diff", "lo", "hi", "n", "level"}: diff = mean(a) - mean(b); [lo, hi]
        its percentile-bootstrap interval, items resampled together.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values differ in number: {len(a)} vs {len(b)}")
    d = bootstrap_mean([x - y for x, y in zip(a, b, strict=True)], level, resamples, seed)
    return {
        "mean_a": sum(a) / len(a),
        "mean_b": sum(b) / len(b),
        "diff": d["mean"],
        "lo": d["lo"],
        "hi": d["hi"],
        "n": d["n"],
        "level": level,
    }


def paired_ratio_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """mean(a) / mean(b) over the same items with a paired percentile-bootstrap interval (items
    resampled together: the share of a teacher's task accuracy a student keeps).

    Returns:
        {"ratio", "lo", "hi", "n", "level"}; resamples whose mean(b) is 0 are left out, and
        ValueError when mean(b) itself is 0 (no ratio).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values differ in number: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0 or sum(b) == 0:
        raise ValueError("paired_ratio_bootstrap: the denominator's mean is 0 (or no values)")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        idx = rng.choices(range(n), k=n)
        den = sum(b[i] for i in idx)
        if den:
            ratios.append(sum(a[i] for i in idx) / den)
    lo, hi = _percentiles(ratios, level)
    return {"ratio": sum(a) / sum(b), "lo": lo, "hi": hi, "n": n, "level": level}


def fmt_interval(point: float, lo: float, hi: float, nd: int = 2, unit: str = "") -> str:
    """'1.87x [1.80, 1.95]' style text."""
    return f"{point:.{nd}f}{unit} [{lo:.{nd}f}, {hi:.{nd}f}]"
