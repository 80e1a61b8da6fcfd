"""Evaluation: fixed seeded episodes, per-episode scores, mean and confidence interval; fine-tuning and
selection per task; online test-then-train on streams (:func:`online`); explanations (:func:`explain`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastadapt.core.lazy import lazy_exports
from fastadapt.eval.evaluate import EvalResult, batchnorm_setting, evaluate
from fastadapt.eval.stats import mean_ci, t_quantile

__getattr__, __dir__ = lazy_exports(
    __name__, {"fastadapt.eval.explanations": ("explain",), "fastadapt.eval.streams": ("online",)}
)
__all__ = ["EvalResult", "batchnorm_setting", "evaluate", "explain", "mean_ci", "online", "t_quantile"]

if TYPE_CHECKING:
    from fastadapt.eval.explanations import explain
    from fastadapt.eval.streams import online
