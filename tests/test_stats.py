import numpy as np
import pytest
from scipy import stats

from fastadapt.eval import mean_ci, t_quantile


@pytest.mark.parametrize("n", [2, 5, 30, 600, 1000])
def test_mean_ci_matches_scipy_t_interval(n):
    x = np.random.default_rng(n).uniform(0.4, 1.0, size=n)
    mean, half = mean_ci(x, 0.95)
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert half == pytest.approx((hi - lo) / 2, rel=1e-9)


def test_normal_method_is_1_96_standard_errors():
    x = np.arange(100.0)
    _, half = mean_ci(x, method="normal")
    assert half == pytest.approx(1.959963984540054 * x.std(ddof=1) / 10, rel=1e-12)


@pytest.mark.parametrize(("p", "df"), [(0.975, 1), (0.995, 3), (0.9, 10), (0.025, 7)])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_mean_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=95)
