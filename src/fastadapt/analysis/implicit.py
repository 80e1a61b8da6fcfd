"""The conjugate-gradient error of iMAML's implicit meta-gradient against the number of iterations, beside the
classical bound set by the condition number of ``I + H / lambda`` (Rajeswaran et al. 2019, sec. 3.1 and Thm. 1;
the CG bound: e.g. Shewchuk 1994, "An Introduction to the Conjugate Gradient Method Without the Agonizing Pain",
sec. 9.2)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastadapt.algorithms.imaml import implicit_meta_gradient
from fastadapt.analysis.hessian import LossOf, flat, full_hessian
from fastadapt.core.errors import ConfigError

ROUNDING = 1e-12  # relative errors below this are rounding in float64 (about kappa * 2e-16 for kappa <= 1e3)


def system_matrix(hessian: Tensor, lam: float, damping: float = 0.0) -> Tensor:
    """iMAML's CG system ``A = (1 + damping) I + H / lam`` for ``hessian [P, P]`` (``damping = 0``: the paper's)."""
    return (1.0 + damping) * torch.eye(hessian.shape[0], dtype=hessian.dtype) + hessian / lam


def condition_number(matrix: Tensor) -> tuple[float, float, float]:
    """``(kappa, smallest, largest)`` eigenvalue of a symmetric positive definite ``matrix`` (``eigvalsh``).

    Raises :class:`ConfigError` in one line when the smallest eigenvalue is not positive: CG's guarantee needs an SPD
    system, and ``I + H / lam`` of a non-convex loss is SPD only for ``lam > -lambda_min(H)``.
    """
    values = torch.linalg.eigvalsh(matrix)
    low, high = float(values[0]), float(values[-1])
    if low <= 0:
        raise ConfigError(
            f"the system is not positive definite (smallest eigenvalue {low:.3g}); raise lam above -lambda_min(H)"
        )
    return high / low, low, high


def cg_rate(kappa: float) -> float:
    """The rate of CG's worst-case bound, ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)``."""
    root = math.sqrt(kappa)
    return (root - 1) / (root + 1)


def cg_bound(kappa: float, steps: int) -> float:
    """The bound on the relative 2-norm error after ``steps`` CG iterations from ``x_0 = 0``:

        ||x_k - x*||_A <= 2 rho^k ||x*||_A      (rho = :func:`cg_rate`)
        =>  ||x_k - x*|| / ||x*|| <= 2 sqrt(kappa) rho^k

    since ``sqrt(lambda_min) ||e|| <= ||e||_A <= sqrt(lambda_max) ||e||``; capped at ``sqrt(kappa)`` (the same
    norm argument applied to CG's monotone A-norm error, ``||x_k - x*||_A <= ||x*||_A``).
    """
    return math.sqrt(kappa) * min(1.0, 2 * cg_rate(kappa) ** steps)


def fitted_rate(steps: Sequence[int], errors: Sequence[float], floor: float = ROUNDING) -> float:
    """The geometric rate ``exp(slope)`` of a least-squares line through ``(k, log error)`` over the points with
    ``error > floor`` (below it, rounding); nan with fewer than two such points."""
    pts = [(k, math.log(e)) for k, e in zip(steps, errors) if e > floor]
    if len(pts) < 2:
        return float("nan")
    mk = sum(p[0] for p in pts) / len(pts)
    me = sum(p[1] for p in pts) / len(pts)
    skk = sum((p[0] - mk) ** 2 for p in pts)
    return float("nan") if skk == 0 else math.exp(sum((p[0] - mk) * (p[1] - me) for p in pts) / skk)


@dataclass(frozen=True)
class CGCurve:
    """The CG error of one implicit meta-gradient against the iterations, and what the condition number predicts."""

    steps: list[int]  # CG iterations
    errors: list[float]  # ||x_k - x*|| / ||x*||, x* the direct solve
    bounds: list[float]  # cg_bound(kappa, k)
    kappa: float  # condition number of (1 + damping) I + H / lam; nan when it is not positive definite
    eig_min: float  # its smallest eigenvalue (<= 0: not positive definite, no CG guarantee)
    eig_max: float  # its largest
    rate: float  # cg_rate(kappa): the theory's geometric rate (nan when not positive definite)
    measured_rate: float  # fitted_rate(steps, errors)
    lam: float
    damping: float
    distinct: int  # eigenvalues of the system at least 1e-8 * eig_max apart (CG is exact after this many steps)
    bound_holds: bool  # every error <= its bound, or below ROUNDING (where rounding, not CG, sets the error)


def distinct_eigenvalues(values: Tensor, rtol: float = 1e-8) -> int:
    """How many distinct values ``values`` (sorted ascending) holds, two values being the same when closer than
    ``rtol`` times the largest magnitude."""
    gaps = values[1:] - values[:-1]
    return 1 + int((gaps > rtol * float(values.abs().max())).sum())


def cg_error_curve(
    train_loss_of: LossOf,
    phi: Mapping[str, Tensor],
    query_grad: Mapping[str, Tensor],
    lam: float,
    steps: Sequence[int],
    damping: float = 0.0,
) -> CGCurve:
    """iMAML's implicit meta-gradient (:func:`~fastadapt.algorithms.imaml.implicit_meta_gradient`, the code the
    algorithm runs) after each number of CG iterations in ``steps``, against the direct solve
    ``x* = ((1 + damping) I + H / lam)^-1 g`` with the full Hessian ``H`` of ``train_loss_of`` at ``phi``
    (:func:`~fastadapt.analysis.hessian.full_hessian`) and ``g = query_grad``. Use float64 and a small model: the
    Hessian is ``[P, P]``. A system that is not positive definite (``lam <= -lambda_min(H)``) is measured all the
    same (``x*`` exists while no eigenvalue is 0), with ``kappa``, ``rate`` and the bounds nan: CG has no guarantee
    there, and iMAML's CG stops at the first direction of non-positive curvature."""
    if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
        raise ConfigError(f"steps={list(steps)!r} is invalid; give CG iteration counts >= 0")
    hessian = full_hessian(train_loss_of, phi)
    system = system_matrix(hessian, lam, damping)
    values = torch.linalg.eigvalsh(system)
    low, high = float(values[0]), float(values[-1])
    kappa = high / low if low > 0 else float("nan")
    b = flat({n: query_grad[n].detach() for n in phi})
    exact = torch.linalg.solve(system, b)
    errors = []
    for k in steps:
        found = flat(implicit_meta_gradient(train_loss_of, phi, query_grad, lam, k, damping)) if k else 0 * b
        errors.append(float((found - exact).norm() / exact.norm()))
    positive = low > 0
    bounds = [cg_bound(kappa, k) if positive else float("nan") for k in steps]
    return CGCurve(
        list(steps),
        errors,
        bounds,
        kappa,
        low,
        high,
        cg_rate(kappa) if positive else float("nan"),
        fitted_rate(list(steps), errors),
        float(lam),
        float(damping),
        distinct_eigenvalues(values),
        positive and all(e <= b * (1 + 1e-9) or e < ROUNDING for e, b in zip(errors, bounds)),
    )
