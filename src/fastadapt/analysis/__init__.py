"""Theory you can measure on your own model and tasks: the terms of the meta-gradient and their Taylor predictions
(Nichol et al. 2018), the Hessian's top eigenvalue, the first-order error and its bound (Fallah et al. 2020), the
spread and alignment of tasks, iMAML's conjugate-gradient error (Rajeswaran et al. 2019), the divergence boundary
of the inner step size (Ji et al. 2022), similarity against transfer, and the episode analysis of algorithms
without an inner gradient step; ``fastadapt analyze`` runs what applies to a run (docs/THEORY.md)."""

from fastadapt.analysis.episodes import analyze_episodes, pairwise_cosines
from fastadapt.analysis.hessian import Eigen, flat, full_hessian, gradient, hvp, power_iteration, top_eigenvalue, unflat
from fastadapt.analysis.implicit import CGCurve, cg_bound, cg_error_curve, cg_rate, condition_number, system_matrix
from fastadapt.analysis.objective import meta_loss_of, meta_parameters
from fastadapt.analysis.runner import analyze, analyze_subject, describe, load_subject, loglog_slope
from fastadapt.analysis.stability import Boundary, ShortRun, largest_stable_rate, short_meta_training
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
    bootstrap_ci,
    bootstrap_ci_items,
    cosine,
    embedding_similarity,
    gradient_similarity,
    mean_meta_gradient,
    mean_pairwise_cosine,
    pixel_similarity,
    spearman,
    task_gradient_alignment,
    within_task_alignment,
)

__all__ = [
    "Boundary",
    "CGCurve",
    "Eigen",
    "FirstOrderError",
    "Measured",
    "ShortRun",
    "Terms",
    "adapted_spread",
    "analyze",
    "analyze_episodes",
    "analyze_subject",
    "avg_grad_inner_by_dot",
    "bootstrap_ci",
    "bootstrap_ci_items",
    "cg_bound",
    "cg_error_curve",
    "cg_rate",
    "condition_number",
    "cosine",
    "curvatures",
    "describe",
    "embedding_similarity",
    "first_order_error",
    "flat",
    "full_hessian",
    "gradient",
    "gradient_similarity",
    "gradient_terms",
    "hvp",
    "largest_stable_rate",
    "load_subject",
    "loglog_slope",
    "mean_meta_gradient",
    "mean_pairwise_cosine",
    "measured",
    "meta_loss_of",
    "meta_parameters",
    "pairwise_cosines",
    "pixel_similarity",
    "power_iteration",
    "predicted",
    "short_meta_training",
    "spearman",
    "split_minibatches",
    "system_matrix",
    "task_gradient_alignment",
    "top_eigenvalue",
    "unflat",
    "within_task_alignment",
]
