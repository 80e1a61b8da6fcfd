"""Evaluation: fixed seeded episodes, per-episode scores, mean and confidence interval; testing runs."""

from fastadapt.eval.evaluate import EvalResult, batchnorm_setting, evaluate
from fastadapt.eval.stats import mean_ci, t_quantile

__all__ = ["EvalResult", "batchnorm_setting", "evaluate", "mean_ci", "t_quantile"]
