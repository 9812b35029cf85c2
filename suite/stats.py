"""Intervals for results over seeds: the mean's 95 % confidence interval and paired differences.

A comparison says "A beats B" only where the 95 % interval of the paired difference (A - B over
the seeds both ran) excludes zero; with fewer than two pairs there is no interval and nothing is said.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd


def t975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile with ``dof`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # scipy ships with scikit-learn; this table is the fallback
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
        return table[min(k for k in table if k >= dof)] if dof <= 30 else 1.96


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean: ``t_{0.975, n-1} s / sqrt(n)``
    (0 for fewer than two values)."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if len(v) < 2:
        return 0.0
    return float(t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def paired_difference(a: Mapping, b: Mapping) -> dict:
    """A - B over the keys (seeds) both have: mean, 95 % CI half-width (paired t) and a verdict.

    ``verdict`` is ``"A > B"``, ``"A < B"`` or ``"no difference shown"`` (the interval contains zero,
    or fewer than two pairs)."""
    keys = sorted(set(a) & set(b))
    d = [float(a[k]) - float(b[k]) for k in keys]
    if not d:
        return {"n": 0, "mean": math.nan, "ci95": math.nan, "low": math.nan, "high": math.nan,
                "verdict": "no common seeds"}
    mean = sum(d) / len(d)
    half = ci95(d) if len(d) > 1 else math.nan
    low, high = mean - half, mean + half
    if len(d) < 2:
        verdict = "no difference shown"
    elif low > 0:
        verdict = "A > B"
    elif high < 0:
        verdict = "A < B"
    else:
        verdict = "no difference shown"
    return {"n": len(d), "mean": mean, "ci95": half, "low": low, "high": high, "verdict": verdict}
