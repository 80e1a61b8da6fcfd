"""Online adaptation on task streams: the test-then-train runner and its change detector.

:func:`online` runs a stream in River's order: at every step the predictor first predicts the step's
data (the error is recorded), then learns from them (``predictor.update(x, y)``). A :class:`LossJump`
detector may reset the predictor when the loss jumps. The metrics over runs are in
:mod:`fastadapt.eval.stream_metrics`; plots and the ``streams.json`` record in :mod:`fastadapt.report.streams`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.core import contract
from fastadapt.core.errors import ConfigError, DataError

# --- change detection ---------------------------------------------------------------------------


@dataclass
class LossJump:
    """Change detection by a jump of the step loss: fires when the median of the last ``recent`` losses
    is above ``ratio`` times the mean and ``threshold`` standard deviations above the mean of the
    ``window`` losses before them, once ``warmup`` of those are in; then it forgets them all (a fresh
    warm-up after every detection). ``recent = 3`` trades a step of delay for robustness to one
    outlying loss (a step of one or two points). Bounded memory.

    ``update(loss) -> bool``: whether this step's loss signals a change (NaN losses are skipped).
    """

    threshold: float = 4.0
    ratio: float = 2.0
    window: int = 20
    warmup: int = 5
    recent: int = 1
    history: deque = field(default_factory=deque, repr=False)
    latest: deque = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        for name in ("threshold", "ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ConfigError(f"LossJump {name}={v!r} is invalid; it must be a finite number >= 0")
        for name in ("window", "warmup", "recent"):
            inner.check_steps(f"LossJump {name}", getattr(self, name), 1)
        if self.warmup > self.window:
            raise ConfigError(f"LossJump warmup={self.warmup} exceeds window={self.window}")
        self.history = deque(self.history, maxlen=self.window)
        self.latest = deque(self.latest, maxlen=self.recent)

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        self.latest.append(float(loss))
        if len(self.latest) < self.recent:
            return False
        if len(self.history) >= self.warmup:
            h = np.asarray(self.history, dtype=np.float64)
            mean, std = float(h.mean()), float(h.std())
            stat = float(np.median(self.latest))
            if stat > self.ratio * mean and stat > mean + self.threshold * std:
                self.reset()
                return True
        self.history.append(self.latest[0])  # the oldest of the recent losses joins the reference window
        return False

    def reset(self) -> None:
        self.history.clear()
        self.latest.clear()


# --- one run ------------------------------------------------------------------------------------


@dataclass
class OnlineRun:
    """What :func:`online` records, one value per step (``T`` steps).

    ``error``: classification error rate or regression MSE on the step's data, before learning from
    it; ``loss``: the task loss there (cross-entropy over the labels the predictor knows, NaN when it
    knows none; MSE); ``probe_error``: the same error on the stream's probe of the current task (NaN
    without probes); ``probe_label_acc``: ``[T, labels]`` probe accuracy per label (NaN where the label
    is not active; classification only); ``resets``: steps where the detector reset the predictor.
    """

    error: np.ndarray
    loss: np.ndarray
    probe_error: np.ndarray
    change_points: tuple[int, ...]
    resets: tuple[int, ...] = ()
    classification: bool = False
    probe_label_acc: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def length(self) -> int:
        return len(self.error)

    def to_dict(self) -> dict[str, Any]:
        def plain(a: np.ndarray | None) -> Any:
            return (
                None
                if a is None
                else [None if not math.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64).ravel()]
            )

        out: dict[str, Any] = {
            "error": plain(self.error),
            "loss": plain(self.loss),
            "probe_error": plain(self.probe_error),
            "change_points": list(self.change_points),
            "resets": list(self.resets),
            "classification": self.classification,
            "seconds": self.seconds,
        }
        if self.probe_label_acc is not None:
            out["probe_label_acc"] = {"shape": list(self.probe_label_acc.shape), "values": plain(self.probe_label_acc)}
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> OnlineRun:
        def arr(v: Any) -> np.ndarray:
            return np.array([math.nan if x is None else x for x in v], dtype=np.float64)

        acc = d.get("probe_label_acc")
        return OnlineRun(
            arr(d["error"]),
            arr(d["loss"]),
            arr(d["probe_error"]),
            tuple(d["change_points"]),
            tuple(d.get("resets", ())),
            bool(d.get("classification", False)),
            None if acc is None else arr(acc["values"]).reshape(acc["shape"]),
            float(d.get("seconds", 0.0)),
        )


def _prior(algo: nn.Module, classification: bool) -> Callable[[Tensor], Tensor] | None:
    """Predictions before any label: the meta-learnt model itself (regression, or a model with a head), else None."""
    if classification and not contract.needs_head(type(algo)):
        return None
    model = algo.model
    return inner.AdaptedModel(model, inner.detached(inner.trainable_params(model)), inner.frozen_state(model))


def _score(out: Tensor | None, y: Tensor) -> tuple[float, float]:
    """Error (error rate / MSE) and loss of outputs ``out`` on targets ``y``; ``out=None``: no prediction possible."""
    if not len(y):
        return math.nan, math.nan
    if y.is_floating_point():
        if out is None:
            return math.nan, math.nan
        mse = float(F.mse_loss(out.to(y.dtype), y))
        return mse, mse
    if out is None:
        return 1.0, math.nan
    width = out.shape[-1]
    error = float((out.argmax(-1) != y).double().mean())
    known = y < width
    if not bool(known.any()):
        return error, math.nan
    logits, labels = out[known], y[known]
    if not bool(torch.isfinite(logits.gather(1, labels[:, None])).all()):
        return error, math.inf
    return error, float(F.cross_entropy(logits.double(), labels))


def _label_accuracy(out: Tensor | None, y: Tensor) -> dict[int, float]:
    labels = torch.unique(y).tolist()
    if out is None:
        return dict.fromkeys(labels, 0.0)
    pred = out.argmax(-1)
    return {int(c): float((pred[y == c] == c).double().mean()) for c in labels}


def online(
    algo: nn.Module,
    stream: Any,
    *,
    update: bool = True,
    options: Mapping[str, Any] | None = None,
    detector: LossJump | None = None,
    probe: bool = True,
) -> OnlineRun:
    """Run ``stream`` test-then-train with ``algo`` (a trained algorithm; it is never changed).

    Args:
        algo: any algorithm of the contract whose ``adapt`` returns a predictor with ``update`` and ``reset``.
        stream: a :class:`~fastadapt.data.streams.TaskStream`.
        update: learn from each step (False: the "no adaptation" baseline, the model as meta-learnt).
        options: the predictor's update policy, passed to ``predictor.configure(**options)`` after the
            first ``adapt`` (gradient-based: ``window``, ``policy`` = window | continue, ``steps``;
            ProtoNet: ``decay``; Matching Networks: ``window``).
        detector: change detection (e.g. :class:`LossJump`); on a detection the predictor is reset to
            the meta-learnt initialisation before it learns from the step. None: always-on adaptation.
        probe: also score ``stream.probe(t)`` at every step.

    Raises :class:`DataError` (one line) when the stream's inputs do not fit the model.
    """
    if not isinstance(stream.length, int) or stream.length < 1:
        raise DataError(f"the stream has length {stream.length!r}; it needs at least one step")
    length, classification = stream.length, bool(stream.classification)
    first = next(iter(algo.parameters()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    prior = _prior(algo, classification)
    error, loss, probe_error = (np.full(length, math.nan) for _ in range(3))
    label_acc: dict[int, np.ndarray] = {}
    resets: list[int] = []
    predictor: Any = None
    if detector is not None:
        detector.reset()
    start = time.perf_counter()

    def cast(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
        y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device)
        return x, y

    def predict(x: Tensor) -> Tensor | None:
        with torch.no_grad():
            return predictor(x) if predictor is not None else (prior(x) if prior is not None else None)

    for t in range(length):
        x, y = cast(*stream.step(t))
        try:
            out = predict(x)
        except (RuntimeError, ValueError) as e:
            if t:
                raise
            raise DataError(
                f"the stream's inputs of shape {list(x.shape[1:])} do not fit the model ({_first_line(e)}); "
                f"convert the stream to the input shape the run was trained for"
            ) from None
        error[t], loss[t] = _score(out, y)
        if probe and callable(getattr(stream, "probe", None)):
            px, py = cast(*stream.probe(t))
            if len(py):
                pout = predict(px)
                probe_error[t] = _score(pout, py)[0]
                if classification:
                    for c, a in _label_accuracy(pout, py).items():
                        label_acc.setdefault(c, np.full(length, math.nan))[t] = a
        if detector is not None and predictor is not None:
            signal = loss[t] if math.isfinite(loss[t]) or loss[t] == math.inf else error[t]
            if detector.update(float(signal)):
                predictor.reset()
                resets.append(t)
        if not update:
            continue
        if predictor is None:
            try:
                predictor = algo.adapt(x, y)
            except (RuntimeError, ValueError) as e:
                raise DataError(
                    f"adapting on the stream's first step failed ({_first_line(e)}); check that its inputs "
                    f"({list(x.shape[1:])}) and labels fit the model"
                ) from None
            missing = [m for m in ("update", "reset") if not callable(getattr(predictor, m, None))]
            if missing:
                raise ConfigError(
                    f"{type(algo).__name__}.adapt returns a predictor without {' and '.join(missing)}; "
                    "online adaptation needs predictor.update(x, y) "
                    "(every built-in learner of examples has it; docs/CHANGE.md lists what each does)"
                )
            if options:
                predictor.configure(**options)
        else:
            predictor.update(x, y)
    acc = None
    if label_acc:
        acc = np.full((length, max(label_acc) + 1), math.nan)
        for c, a in label_acc.items():
            acc[:, c] = a
    return OnlineRun(
        error,
        loss,
        probe_error,
        tuple(stream.change_points),
        tuple(resets),
        classification,
        acc,
        time.perf_counter() - start,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def state_nbytes(predictor: Any) -> int:
    """Bytes of every tensor storage a predictor's state holds (its fields, and dicts of tensors in them;
    the model and the algorithm are not counted): what ``update`` may grow. Views count their whole storage."""
    seen: set[int] = set()
    total = 0

    def add(v: Any) -> None:
        nonlocal total
        if isinstance(v, Tensor):
            storage = v.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(v, Mapping):
            for w in v.values():
                add(w)

    for name, v in vars(predictor).items():
        if name not in ("model", "net", "adapt_from") and not isinstance(v, nn.Module):
            add(getattr(v, "__dict__", v) if not isinstance(v, (Tensor, Mapping)) else v)
    return total


__all__ = ["LossJump", "OnlineRun", "online", "state_nbytes"]
