"""Test-time selection of the inner learning rate and number of steps from a task's support set alone
(``fastadapt eval RUN eval.select=support_cv``; :func:`choose` says how)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import task_loss
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

MODES = ("fixed", "support_cv")
MAX_FOLDS = 5
SHIFT_PIXELS = 2
ROTATION_DEGREES = 10.0


@dataclass(frozen=True)
class Choice:
    """The setting chosen for one task: ``lr_scale`` times the run's rates, ``steps`` inner steps; ``loss``
    its validation loss; ``scheme``: ``"kfold"``, ``"augment"`` or ``"none"`` (nothing to validate on: the
    run's own setting)."""

    lr_scale: float
    steps: int
    loss: float
    scheme: str


def selectable(algo: nn.Module) -> bool:
    """Whether ``algo.adapt`` takes ``steps`` and ``lr_scale`` (the gradient-based algorithms)."""
    adapt = getattr(algo, "adapt", None)
    if not callable(adapt):
        return False
    params = inspect.signature(adapt).parameters
    return "steps" in params and "lr_scale" in params


def default_steps(algo: nn.Module) -> int:
    """The run's own number of inner steps at test time."""
    return int(getattr(algo, "inner_steps_eval", getattr(algo, "inner_steps", 1)))


def kfold_splits(support_y: Tensor, classification: bool) -> list[tuple[Tensor, Tensor]]:
    """``[(train_idx, val_idx), ...]`` over the support set; ``[]`` when no split leaves every class an example (1
    shot)."""
    n = support_y.shape[0]
    if classification:
        per_class = [torch.nonzero(support_y == c).flatten() for c in torch.unique(support_y)]
        k = min(len(idx) for idx in per_class)
        if k < 2:
            return []
        out = []
        for j in range(min(k, MAX_FOLDS)):
            val = torch.stack([idx[j] for idx in per_class])
            keep = torch.ones(n, dtype=torch.bool)
            keep[val] = False
            out.append((torch.nonzero(keep).flatten(), val))
        return out
    if n < 2:
        return []
    folds = min(n, MAX_FOLDS)
    order = torch.arange(n)
    return [(order[order % folds != j], order[order % folds == j]) for j in range(folds)]


def augmented_copies(x: Tensor) -> Tensor:
    """``x [S, C, H, W]`` shifted by :data:`SHIFT_PIXELS` in 4 directions and rotated by +-:data:`ROTATION_DEGREES`:
    ``[6 * S, C, H, W]`` (edges repeat the border pixels). Deterministic."""
    h, w = x.shape[-2:]
    mats = []
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        mats.append([[1.0, 0.0, 2 * SHIFT_PIXELS * dx / w], [0.0, 1.0, 2 * SHIFT_PIXELS * dy / h]])
    for deg in (ROTATION_DEGREES, -ROTATION_DEGREES):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        mats.append([[c, -s, 0.0], [s, c, 0.0]])
    theta = torch.tensor(mats, dtype=x.dtype, device=x.device)  # [6, 2, 3]
    s = x.shape[0]
    grid = F.affine_grid(theta.repeat_interleave(s, 0), [6 * s, *x.shape[1:]], align_corners=False)
    return F.grid_sample(x.repeat(6, 1, 1, 1), grid, mode="bilinear", padding_mode="border", align_corners=False)


def candidates(lr_scales: Sequence[float], steps: Sequence[int], own_steps: int) -> list[tuple[float, int]]:
    """The grid, with the run's own setting ``(1.0, own_steps)`` in it, without repeats, in a fixed order."""
    grid = [(float(s), int(k)) for s in lr_scales for k in steps]
    if (1.0, own_steps) not in grid:
        grid.insert(0, (1.0, own_steps))
    return list(dict.fromkeys(grid))


def _validation_loss(
    algo: nn.Module, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor, lr_scale: float, steps: int
) -> float:
    with torch.no_grad():
        loss = float(task_loss(algo.adapt(x, y, steps=steps, lr_scale=lr_scale)(vx), vy))
    return loss if math.isfinite(loss) else math.inf


def choose(
    algo: nn.Module, support_x: Tensor, support_y: Tensor, lr_scales: Sequence[float], steps: Sequence[int]
) -> Choice:
    """The setting for one task, from ``support_x [S, *x]``, ``support_y [S]`` alone.

    Each candidate of a small grid, ``lr_scale`` in ``lr_scales`` (multipliers of the run's own inner
    rates: a number for MAML / ANIL / Reptile, the learnt rates of Meta-SGD and MAML++, the generated rates
    of ALFA) times ``steps`` (plus the run's own setting: scale 1, ``inner_steps_eval``), is scored by a
    validation loss computed from the support set only, and the best one is chosen (ties: the run's own
    setting, then fewer steps, then the scale nearest 1). The query set is never read before the choice is
    made: this takes the support set and nothing else, and :class:`SupportSelected` hands the query inputs
    only to the chosen predictor.

    How the support set is split (a validation scheme per task, recorded in the result's settings):

    * classification with ``k >= 2`` shots: k-fold over shots (``min(k, 5)`` folds): fold ``j`` holds out
      the ``j``-th example of every class and adapts on the rest (``k - 1`` shots per class; a candidate
      is judged on slightly less data than it will get, the usual bias of cross-validation);
    * classification with 1 shot: leave-one-out would leave a class without an example, so it is
      **augmentation-based validation** instead: adapt on the whole support set, validate on shifted
      (2 pixels in each of 4 directions) and rotated (+-10 degrees) copies of it, with their labels.
      This measures robustness to small deformations, not generalisation to new drawings: it favours
      candidates that fit the support set firmly, and it is the only signal one example per class gives;
    * regression with ``n >= 2`` points: k-fold over points (``min(n, 5)`` interleaved folds);
    * otherwise (one example of a non-image task) there is nothing to validate on: the run's own setting.

    Cost per task: (folds) x (sum of the candidate step counts) inner steps, against ``inner_steps_eval``
    for the fixed setting (the hyper study, ``studies/hyper.toml``, measures the seconds: docs/HYPERPARAMETERS.md).
    """
    own = default_steps(algo)
    classification = not support_y.is_floating_point()
    splits = kfold_splits(support_y, classification)
    if splits:
        scheme = "kfold"
        sets = [(support_x[tr], support_y[tr], support_x[va], support_y[va]) for tr, va in splits]
    elif classification and support_x.ndim == 4:
        scheme = "augment"
        sets = [(support_x, support_y, augmented_copies(support_x), support_y.repeat(6))]
    else:
        return Choice(1.0, own, math.nan, "none")
    best: tuple[tuple[float, int, int, float], Choice] | None = None
    for scale, k in candidates(lr_scales, steps, own):
        loss = sum(_validation_loss(algo, *s, scale, k) for s in sets) / len(sets)
        key = (loss, 0 if (scale, k) == (1.0, own) else 1, k, abs(math.log(scale)))
        if best is None or key < best[0]:
            best = (key, Choice(scale, k, loss, scheme))
    assert best is not None
    return best[1]


class SupportSelected(nn.Module):
    """``algo`` evaluated with the inner rate and steps chosen per task from its support set (:func:`choose`).

    The algorithm is never changed; ``predict`` holds no state between calls.
    """

    needs_head = True

    def __init__(self, algo: nn.Module, lr_scales: Sequence[float], steps: Sequence[int]) -> None:
        super().__init__()
        if not selectable(algo):
            raise ConfigError(
                f"eval.select=support_cv chooses the inner rate and steps of gradient-based algorithms (maml, fomaml, "
                f"metasgd, anil, reptile, alfa); {type(algo).__name__} has no inner loop to tune: use eval.select=fixed"
            )
        if not lr_scales or any(not (isinstance(s, (int, float)) and 0 < s < math.inf) for s in lr_scales):
            raise ConfigError(
                f"eval.select_lr_scales={list(lr_scales)} is invalid; give one or more finite numbers > 0, e.g. [0.5, "
                "1, 2]"
            )
        if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
            raise ConfigError(
                f"eval.select_steps={list(steps)} is invalid; give one or more integers >= 0, e.g. [1, 3, 5, 10]"
            )
        self.algo, self.lr_scales, self.steps = algo, tuple(float(s) for s in lr_scales), tuple(int(k) for k in steps)

    def meta_loss(self, batch: TaskBatch):  # evaluation only
        raise ConfigError("SupportSelected is an evaluation wrapper; train the algorithm itself")

    def choices(self, support_x: Tensor, support_y: Tensor) -> list[Choice]:
        """The choice for every task of ``support_x [T, S, *x]``, ``support_y [T, S]``."""
        return [
            choose(self.algo, support_x[t], support_y[t], self.lr_scales, self.steps) for t in range(support_x.shape[0])
        ]

    def adapt(self, support_x: Tensor, support_y: Tensor):
        c = choose(self.algo, support_x, support_y, self.lr_scales, self.steps)
        return self.algo.adapt(support_x, support_y, steps=c.steps, lr_scale=c.lr_scale)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after adaptation with its chosen setting; no graph."""
        outs = []
        for t, c in enumerate(self.choices(batch.support_x, batch.support_y)):
            predictor = self.algo.adapt(batch.support_x[t], batch.support_y[t], steps=c.steps, lr_scale=c.lr_scale)
            with torch.no_grad():
                outs.append(predictor(batch.query_x[t]))
        return torch.stack(outs)

    def settings(self) -> dict[str, object]:
        """What to write beside the number."""
        return {
            "mode": "support_cv",
            "lr_scales": list(self.lr_scales),
            "steps": list(self.steps),
            "own_steps": default_steps(self.algo),
            "validation": "k-fold over shots (k >= 2, at most 5 folds) or points (regression); "
            "1 shot: augmented copies (2-pixel shifts, +-10 degree rotations) of the support set",
        }
