"""Evaluation: confidence intervals and fixed-episode evaluation."""

from fastadapt.eval.stats import mean_ci, t_quantile

__all__ = ["mean_ci", "t_quantile"]
