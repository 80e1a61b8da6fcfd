"""Evaluation: confidence intervals and fixed-episode evaluation."""

from fastadapt.eval.evaluate import EvalResult, batchnorm_setting, evaluate
from fastadapt.eval.stats import mean_ci, t_quantile

__all__ = ["EvalResult", "batchnorm_setting", "evaluate", "mean_ci", "t_quantile"]
