"""Theory you can measure on your own model and tasks: the terms of the meta-gradient and their Taylor predictions
(Nichol et al. 2018), the Hessian's top eigenvalue, the first-order error and its bound (Fallah et al. 2020), and
the spread and alignment of tasks; ``fastadapt analyze`` runs them all (docs/THEORY.md)."""

from fastadapt.analysis.hessian import Eigen, flat, full_hessian, gradient, hvp, power_iteration, top_eigenvalue, unflat
from fastadapt.analysis.runner import analyze, analyze_subject, load_subject, loglog_slope
from fastadapt.analysis.terms import (
    FirstOrderError,
    Measured,
    Terms,
    avg_grad_inner_by_dot,
    curvatures,
    first_order_error,
    gradient_terms,
    measured,
    predicted,
    split_minibatches,
)
from fastadapt.analysis.transfer import (
    adapted_spread,
    mean_pairwise_cosine,
    task_gradient_alignment,
    within_task_alignment,
)

__all__ = [
    "Eigen",
    "FirstOrderError",
    "Measured",
    "Terms",
    "adapted_spread",
    "analyze",
    "analyze_subject",
    "avg_grad_inner_by_dot",
    "curvatures",
    "first_order_error",
    "flat",
    "full_hessian",
    "gradient",
    "gradient_terms",
    "hvp",
    "load_subject",
    "loglog_slope",
    "mean_pairwise_cosine",
    "measured",
    "power_iteration",
    "predicted",
    "split_minibatches",
    "task_gradient_alignment",
    "top_eigenvalue",
    "unflat",
    "within_task_alignment",
]
