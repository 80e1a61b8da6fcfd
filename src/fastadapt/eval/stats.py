"""Confidence intervals for few-shot accuracies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np


def _t_cdf(t: float, df: int) -> float:
    """Student-t CDF by Simpson integration of the density from 0 to |t| (accurate to ~1e-12)."""
    if t == 0:
        return 0.5
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    a = abs(t)
    n = 4000  # even
    h = a / n
    xs = np.linspace(0.0, a, n + 1)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(xs * xs / df))
    integral = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + math.copysign(integral, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0 < p < 1:
        raise ValueError(f"p={p} must be in (0, 1)")
    if df < 1:
        raise ValueError(f"df={df} must be >= 1")
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, df) > p:
        lo *= 2
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95, method: str = "t") -> tuple[float, float]:
    """Mean and half-width of the ``level`` confidence interval of the mean.

    ``half = q * s / sqrt(n)``, ``s`` the sample standard deviation (n - 1), ``q`` the two-sided
    quantile of Student's t with n - 1 degrees of freedom (``method="t"``) or of the normal
    (``method="normal"``, the 1.96 of most few-shot papers at 95%). For n = 1000 episodes the two
    differ by 0.1%.

    >>> mean_ci([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
    (2.0, 2.484...)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"mean_ci needs at least 2 values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("mean_ci got non-finite values")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    p = 0.5 + level / 2
    if method == "t":
        q = t_quantile(p, x.size - 1)
    elif method == "normal":
        q = NormalDist().inv_cdf(p)
    else:
        raise ValueError(f"method={method!r}; choose 't' or 'normal'")
    return float(x.mean()), float(q * x.std(ddof=1) / math.sqrt(x.size))
