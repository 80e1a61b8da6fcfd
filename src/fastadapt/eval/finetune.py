"""Test-time fine-tuning of embedding-based algorithms on each task's support set (``eval.finetune``;
:class:`FineTuned` says how)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.protonet import prototypes
from fastadapt.core.contract import needs_head
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.data.sampler import fixed_episodes
from fastadapt.eval.adapters import film_logits, fit_sgd, frozen_call, tsa_logits
from fastadapt.eval.evaluate import evaluate

MODES = ("head", "encoder", "transductive", "film", "tsa")
ENTROPY_WEIGHT = 1.0  # "transductive": weight of the query entropy against the support cross-entropy (Dhillon et al.)


def prototype_head(features: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """``W = 2 c``, ``b = -||c||^2`` from the class means ``c`` of ``features [M, D]``."""
    c = prototypes(features.unsqueeze(0), labels.unsqueeze(0), ways)[0]
    return 2 * c, -(c * c).sum(1)


def mean_entropy(logits: Tensor) -> Tensor:
    """The mean Shannon entropy (nats) of ``softmax(logits [Q, N])`` over the rows."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


def transductive_loss(
    support_logits: Tensor, support_y: Tensor, query_logits: Tensor, weight: float = ENTROPY_WEIGHT
) -> Tensor:
    """Dhillon et al.'s objective: the support set's cross-entropy plus ``weight`` times the mean entropy of the
    predictions on the unlabelled queries of the same task."""
    return F.cross_entropy(support_logits, support_y) + weight * mean_entropy(query_logits)


def check_mode(mode: str) -> None:
    """A one-line error unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ConfigError(f"eval.finetune={mode!r} is not supported; choose none or one of {', '.join(MODES)}")


def finetune_state(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    mode: str,
    steps: int,
    lr: float,
    entropy_weight: float = ENTROPY_WEIGHT,
) -> dict[str, Tensor]:
    """What ``mode`` "head", "encoder" or "transductive" fits on one task: ``{"head.weight": W, "head.bias": b}``,
    plus ``"encoder.<name>"`` for every parameter of ``model`` unless ``mode = "head"`` (see :class:`FineTuned`).
    ``query_x`` is read by "transductive" only (its predictions' entropy, no label)."""
    if mode not in ("head", "encoder", "transductive"):
        raise ConfigError(f"finetune_state fits a head (head, encoder, transductive); {mode!r} is not one of them")
    ways = int(support_y.max()) + 1
    with torch.no_grad():
        zs = frozen_call(model, support_x).flatten(1)
    w, b = prototype_head(zs, support_y, ways)
    init = {"head.weight": w, "head.bias": b}
    if mode == "head":
        return fit_sgd(lambda s: F.cross_entropy(zs @ s["head.weight"].T + s["head.bias"], support_y), init, steps, lr)
    init.update({f"encoder.{n}": p for n, p in model.named_parameters()})

    def loss(s: dict[str, Tensor]) -> Tensor:
        params = {n[len("encoder.") :]: v for n, v in s.items() if n.startswith("encoder.")}
        ls = frozen_call(model, support_x, params).flatten(1) @ s["head.weight"].T + s["head.bias"]
        if mode == "encoder":
            return F.cross_entropy(ls, support_y)
        lq = frozen_call(model, query_x, params).flatten(1) @ s["head.weight"].T + s["head.bias"]
        return transductive_loss(ls, support_y, lq, entropy_weight)

    return fit_sgd(loss, init, steps, lr)


def finetune_logits(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    mode: str,
    steps: int,
    lr: float,
    entropy_weight: float = ENTROPY_WEIGHT,
) -> Tensor:
    """Query logits ``[Q, N]`` after ``steps`` of fine-tuning ``mode`` on one task (see :class:`FineTuned`)."""
    check_mode(mode)
    if mode == "film":
        return film_logits(model, support_x, support_y, query_x, steps, lr)
    if mode == "tsa":
        return tsa_logits(model, support_x, support_y, query_x, steps, lr)
    s = finetune_state(model, support_x, support_y, query_x, mode, steps, lr, entropy_weight)
    params = {n[len("encoder.") :]: v for n, v in s.items() if n.startswith("encoder.")}
    with torch.no_grad():
        return frozen_call(model, query_x, params).flatten(1) @ s["head.weight"].T + s["head.bias"]


class FineTuned(nn.Module):
    """``algo`` evaluated with test-time fine-tuning of its embedding ``algo.model``.

    Cross-domain studies (Chen et al. 2019; Triantafillou et al. 2020, Meta-Dataset) found that
    metric-based learners gain from a few gradient steps on the support set of a task from another
    domain. For an algorithm whose model is an embedding (``needs_head = False``: ProtoNets, Matching
    Networks, Baseline, the linear probe), ``mode`` says what is trained on each task, always from the run's
    weights and by ``steps`` of SGD (momentum 0.9, rate ``lr``) on the whole support set; the algorithm's
    weights are never changed and never receive a gradient.

    - ``"head"``, ``"encoder"``, ``"transductive"`` predict with

          logits(x) = W f(x) + b,   W = 2 c,  b = -||c||^2   (c: the class means of the support features)

      which, before any step, ranks classes exactly as ProtoNets' negative squared distances do
      (``-||f(x) - c||^2 = 2 c.f(x) - ||c||^2 - ||f(x)||^2``; the last term is the same for every class).
      ``"head"`` trains ``W, b`` on the support set's cross-entropy with the features frozen; ``"encoder"``
      trains the encoder's weights too; ``"transductive"`` trains both on the support cross-entropy plus
      ``entropy_weight`` (1) times the mean Shannon entropy of the predictions on the task's unlabelled
      queries (:func:`transductive_loss`).
    - ``"film"``: a per-channel scale and shift after every normalisation layer, the backbone frozen
      (:func:`~fastadapt.eval.adapters.film_logits`); ``"tsa"``: residual 1x1 adapters beside the 3x3
      convolutions and a linear transform of the features (:func:`~fastadapt.eval.adapters.tsa_logits`). Both
      are trained by the nearest-prototype loss on the support set and predict by ProtoNets' rule on the adapted
      features; at 0 steps both are ProtoNets on the run's embedding.

    Transductive fine-tuning is Dhillon, Chaudhari, Ravichandran & Soatto 2020 ("A Baseline for Few-Shot Image
    Classification", ICLR). Kept: the whole network and a support-initialised head trained on support
    cross-entropy plus the query predictions' mean entropy, weight 1. Not kept (fastadapt settings instead): their
    head on ReLU'd, L2-normalised features initialised from normalised prototypes (cosine logits; here the
    ``2c, -||c||^2`` head on the raw embedding, as the other modes), Adam at 5e-5 for 25 epochs (here SGD with
    momentum 0.9, ``eval.finetune_steps`` at ``eval.finetune_lr``; :func:`choose_schedule` picks them on
    validation tasks), and their BatchNorm handling (here support and queries go through the encoder as separate
    batches, as in every mode).

    The support set and the query set go through the encoder as separate batches (BatchNorm with batch
    statistics sees one set at a time, as MAML's evaluation here does): a step costs a pass over the support
    images (and, for ``"transductive"``, over the queries), and no query label is ever read.
    """

    needs_head = False
    variable_ways = True  # reads N from the support labels: variable-way episodes

    def __init__(
        self, algo: nn.Module, mode: str, steps: int, lr: float, entropy_weight: float = ENTROPY_WEIGHT
    ) -> None:
        super().__init__()
        if needs_head(type(algo)) or not isinstance(getattr(algo, "model", None), nn.Module):
            raise ConfigError(
                "eval.finetune applies to algorithms whose model is an embedding (ProtoNets, Matching Networks, "
                f"Baseline, linear probe); {type(algo).__name__} adapts by its own inner loop: set its inner "
                "steps instead"
            )
        check_mode(mode)
        self.algo, self.mode, self.steps, self.lr = algo, mode, int(steps), float(lr)
        self.entropy_weight = float(entropy_weight)

    def settings(self) -> dict[str, object]:
        """What changes the number, for the record beside it."""
        out: dict[str, object] = {
            "mode": self.mode,
            "steps": self.steps,
            "lr": self.lr,
            "optimizer": "SGD, momentum 0.9",
        }
        if self.mode == "transductive":
            out["entropy_weight"] = self.entropy_weight
        if self.mode in ("film", "tsa"):
            out["loss"] = "nearest prototype on the support set (squared Euclidean)"
        return out

    def meta_loss(self, batch: TaskBatch):  # evaluation only
        raise ConfigError("FineTuned is an evaluation wrapper; train the algorithm itself")

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        model = self.algo.model
        assert isinstance(model, nn.Module)  # checked in __init__
        return finetune_logits(
            model, support_x, support_y, query_x, self.mode, self.steps, self.lr, self.entropy_weight
        )

    def adapt(self, support_x: Tensor, support_y: Tensor):
        return lambda query_x: self._logits(support_x, support_y, query_x)

    def predict(self, batch: TaskBatch) -> Tensor:
        return torch.stack(
            [self._logits(batch.support_x[t], batch.support_y[t], batch.query_x[t]) for t in range(batch.num_tasks)]
        )


@dataclass(frozen=True)
class Schedule:
    """The fine-tuning schedule :func:`choose_schedule` picked, and every grid point's score on the same episodes."""

    steps: int
    lr: float
    table: tuple[tuple[int, float, float, float], ...]  # (steps, lr, mean accuracy, CI half-width), in grid order
    episodes: int  # validation episodes every grid point was scored on


def choose_schedule(
    run_or_algo,
    val_tasks,
    mode: str,
    grid: Sequence[tuple[int, float]],
    episodes: int = 100,
    batch: int = 25,
    entropy_weight: float = ENTROPY_WEIGHT,
    level: float = 0.95,
    device: torch.device | str = "cpu",
) -> Schedule:
    """The ``(steps, lr)`` of ``grid`` with the best mean accuracy of ``eval.finetune = mode`` on validation tasks.

    Every grid point is scored on the same ``episodes`` fixed episodes of ``val_tasks`` (a task source: tasks
    ``0 .. episodes-1`` of its evaluation stream, fixed by its seed, e.g. the run's ``eval.seed``; or an iterable
    of :class:`TaskBatch`, used as given), so the comparison is paired. Choose on the validation classes of the
    training domains, never on the test domain. Ties go to fewer steps, then to the earlier grid point; a point
    whose episodes diverged scores lowest.

    Args:
        run_or_algo: a :class:`~fastadapt.runs.Run` (its ``algorithm``) or an embedding-based algorithm.
        val_tasks: the validation task source, e.g. ``run.tasks("val").val`` (built when ``eval.val_every > 0``:
            load a run trained without validation with the override ``eval.val_every=1``).
        mode: one of :data:`MODES`.
        grid: ``[(steps, lr), ...]``.
        episodes, batch: how many validation episodes, and how many go through ``predict`` at once.
        device: where the algorithm is (the episodes are moved there).

    Example (then ``fastadapt eval RUN eval.finetune=tsa eval.finetune_steps=S eval.finetune_lr=LR``)::

        run = fastadapt.load_run("runs/xd-protonet", ["eval.val_every=1"])
        best = choose_schedule(run, run.tasks("val").val, "tsa", [(10, 0.01), (20, 0.01), (20, 0.1)])
        print(best.steps, best.lr, best.table)
    """
    algo = getattr(run_or_algo, "algorithm", run_or_algo)
    check_mode(mode)
    if val_tasks is None:
        raise ConfigError(
            "no validation tasks to choose a fine-tuning schedule on; load the run with eval.val_every=1 "
            "(its data.val_part) and pass run.tasks('val').val"
        )
    grid = [(int(k), float(lr)) for k, lr in grid]
    if not grid or any(k < 0 or not (math.isfinite(lr) and lr > 0) for k, lr in grid):
        raise ConfigError(f"grid={grid} is invalid; give one or more (steps >= 0, lr > 0) pairs, e.g. [(10, 0.01)]")
    if hasattr(val_tasks, "sample_tasks"):
        batches = list(fixed_episodes(val_tasks, episodes, batch))
    else:
        batches = list(val_tasks)
    rows = []
    for k, lr in grid:
        res = evaluate(FineTuned(algo, mode, k, lr, entropy_weight), batches, level, device)
        rows.append((k, lr, float(res.mean), float(res.ci)))
    n = sum(b.num_tasks for b in batches)

    def rank(i: int) -> tuple[float, int, int]:
        mean = rows[i][2]
        return (-mean if math.isfinite(mean) else math.inf, rows[i][0], i)

    best = rows[min(range(len(rows)), key=rank)]
    return Schedule(best[0], best[1], tuple(rows), n)
