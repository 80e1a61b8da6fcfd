"""The Neural Turing Machine on its sequence tasks (Graves, Wayne & Danihelka 2014), as a fastadapt algorithm.

A copy or associative-recall task is one sequence; adapting is running the network over the shown part, and the
predictor answers from the state it left. The loss, the metrics and the models it takes are on :class:`NTMLearner`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


def bits_wrong(logits: Tensor, targets: Tensor) -> Tensor:
    """Bits on the wrong side of 0.5 per sequence: ``logits, targets [T, A, bits] -> [T]`` (float64)."""
    return ((logits > 0) != (targets > 0.5)).double().sum(dim=(1, 2))


ONLINE_REFUSAL = (
    "ntm: a task is one sequence that the network is shown and then answers; the targets are never fed back to it, so "
    "there are no labelled examples to learn from online (predictor.update "
    "does not apply: call adapt on the new sequence)"
)


class SequencePredictor:
    """What :meth:`NTMLearner.adapt` returns: ``query_x [1, A, C] -> predicted bits [1, A, bits]`` (0/1) from the
    network's state after the shown sequence. ``update`` and ``reset`` refuse in one line
    (:data:`ONLINE_REFUSAL`): the answer's targets are never an input of the network."""

    def __init__(self, learner: NTMLearner, state: Any) -> None:
        self.learner, self.state = learner, state

    def __call__(self, query_x: Tensor) -> Tensor:
        return (self.learner.answer(self.state, query_x) > 0).to(query_x.dtype)

    def update(self, x: Tensor, y: Tensor) -> None:
        raise ConfigError(ONLINE_REFUSAL)

    def reset(self) -> None:
        raise ConfigError(ONLINE_REFUSAL)

    def configure(self, **options: Any) -> SequencePredictor:
        """Nothing to set without online updates: returns the predictor; an option is refused in one line."""
        if options:
            raise ConfigError(ONLINE_REFUSAL)
        return self


class NTMLearner(nn.Module):
    """Sequence tasks through a memory network.

    A task of the copy or associative-recall source (:mod:`fastadapt.data.sequences`) is one sequence:
    the support is what the network is shown, the query the steps at which it answers. Adaptation is
    running the network over the support sequence; the adapted state is the network's state after it
    (the NTM's memory, weightings and controller state; an LSTM's ``(h, c)``; a transformer's cache).
    The predictor carries that state and runs the answer steps from it. Nothing of the module changes.

    The loss is the binary cross-entropy of the answer's bits (the paper trains on the output steps
    only), averaged over bits, steps and tasks. Metrics: ``loss``; ``mse``, the fraction of answer
    bits on the wrong side of 0.5 (what the engine's evaluation measures too: ``predict`` returns the
    predicted bits, 0 or 1); ``bits_wrong``, bits wrong per sequence (the paper's measure); ``length``,
    answer steps of the batch.

    The model is any sequence model of :mod:`fastadapt.nn.sequence` (``model.name = "ntm"``,
    ``"lstm-seq"`` or ``"transformer-seq"``), so the NTM and its baselines train with the same algorithm,
    loss and episodes.

    Args:
        model: a sequence model with ``run(x, state) -> SequenceRun`` (:mod:`fastadapt.nn.sequence`).
    """

    needs_head: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "run", None)):
            raise ConfigError(
                "algorithm ntm needs a sequence model with run(x, state) "
                "(model.name = ntm, lstm-seq or "
                f"transformer-seq); got {type(model).__name__}"
            )
        self.model = model

    @staticmethod
    def _check(batch: TaskBatch) -> None:
        if (
            batch.support_y.dtype.is_floating_point is False
            or batch.support_x.ndim != 4
            or batch.support_x.shape[1] != 1
        ):
            raise ConfigError(
                "algorithm ntm takes sequence tasks (data.dataset = copy or "
                "recall: support_x [T, 1, steps, channels]); "
                f"got support_x of shape {list(batch.support_x.shape)}"
            )

    def remember(self, support_x: Tensor) -> Any:
        """Run the shown sequences ``[T, S, C]``: the state after them (the adaptation)."""
        return self.model.run(support_x).state

    def answer(self, state: Any, query_x: Tensor) -> Tensor:
        """Logits ``[T, A, bits]`` of the answer steps ``query_x [T, A, C]`` from ``state``."""
        return self.model.run(query_x, state).outputs

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Binary cross-entropy of the answer bits (mean over bits, steps and tasks)."""
        self._check(batch)
        logits = self.answer(self.remember(batch.support_x[:, 0]), batch.query_x[:, 0])
        target = batch.query_y[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            wrong = bits_wrong(logits, target)
            metrics = {
                "loss": float(loss.detach()),
                "mse": float(wrong.mean() / target[0].numel()),
                "bits_wrong": float(wrong.mean()),
                "length": float(target.shape[1]),
            }
        return MetaOutput(loss, metrics)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> SequencePredictor:
        """One task: ``support_x [1, S, C]`` shown; the predictor maps ``query_x [1, A, C]`` to predicted bits ``[1, A,
        bits]`` (0/1).
        It does not update online (:class:`SequencePredictor`)."""
        return SequencePredictor(self, self.remember(support_x))

    def predict(self, batch: TaskBatch) -> Tensor:
        """Predicted answer bits ``[T, 1, A, bits]`` (0/1, shaped like ``query_y``) of every task."""
        self._check(batch)
        with torch.no_grad():
            logits = self.answer(self.remember(batch.support_x[:, 0]), batch.query_x[:, 0])
        return (logits > 0).to(batch.query_y.dtype).unsqueeze(1)
