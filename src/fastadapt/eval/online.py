"""Online adaptation on task streams, and the metrics that say how fast a learner recovers from a change.

:func:`online` runs a stream (:class:`~fastadapt.data.streams.TaskStream`) test-then-train, in River's
order: at every step the predictor first predicts the step's data and the error is recorded, then it
learns from them (``predictor.update(x, y)``), so every reported error is on data it had not seen.
The first step is predicted by the meta-learnt model itself (gradient-based algorithms, regression)
or counts as all wrong (a metric-based learner knows no class yet); then ``algo.adapt`` on the first
step's data gives the predictor, and every later step is an ``update``. With ``probe=True`` the
stream's held-out data of the current task (``stream.probe(t)``) is scored too, before the update:
the same curve without the noise of a few points per step.

Change detection (off by default): a :class:`LossJump` detector watches the step losses; when it
fires, the predictor is reset (``predictor.reset()``: back to the meta-learnt initialisation, an empty
window, no prototypes) before it learns from the step.

Metrics (free functions, over one run or many seeded runs):

* :func:`aligned`: error against steps since each change point;
* :func:`recovery_steps`: steps after a change until the error is back within ``tolerance`` (10 %)
  of its level just before the change, for ``hold`` steps in a row (censored at the next change);
* :func:`regret`: the cumulative error over the stream;
* :func:`summarize` / :func:`paired`: means with confidence intervals over seeded streams
  (:func:`~fastadapt.eval.stats.mean_ci`), paired per stream for comparisons;
* :func:`new_class_curves` / :func:`examples_to_fraction`: accuracy of the classes that appear at a
  change against the labelled examples seen of each.

Layer 4 (evaluation): it reads algorithms and streams, and never trains.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.core import contract
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.eval.stats import mean_ci

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
                    f"{type(algo).__name__}.adapt returns a predictor without {' and '.join(missing)}; online adaptation needs "
                    f"predictor.update(x, y) (every built-in learner of examples has it; docs/CHANGE.md lists what each does)"
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


# --- metrics ------------------------------------------------------------------------------------


def _bounds(change_points: Sequence[int], length: int) -> list[tuple[int, int, int]]:
    """``(previous start, change, next change)`` per change point."""
    starts = [0, *change_points, length]
    return [(starts[i], starts[i + 1], starts[i + 2]) for i in range(len(change_points))]


def aligned(values: np.ndarray, change_points: Sequence[int], horizon: int) -> np.ndarray:
    """``[changes, horizon]``: ``values[c + s]`` for every change point ``c`` and ``s < horizon``, NaN at or
    after the next change (or the end)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full((len(change_points), horizon), math.nan)
    for i, (_, c, nxt) in enumerate(_bounds(change_points, len(values))):
        n = min(horizon, nxt - c)
        out[i, :n] = values[c : c + n]
    return out


def recovery_steps(
    values: np.ndarray,
    change_points: Sequence[int],
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps to recover from each change, and whether each is censored.

    The level before change ``c`` is the mean of ``values`` over the ``pre`` steps before it (fewer when
    the previous phase is shorter). After the change the values are averaged over the last ``smooth``
    steps (never reaching back before ``c``). The recovery time is the first ``s >= 0`` from which
    ``hold`` consecutive (smoothed) values are at most ``(1 + tolerance)`` times that level; when the
    phase ends first, it is the phase's length and censored. Returns ``steps [changes]`` (float) and
    ``censored [changes]``.
    """
    values = np.asarray(values, dtype=np.float64)
    inner.check_steps("smooth", smooth, 1)
    steps = np.zeros(len(change_points))
    censored = np.zeros(len(change_points), dtype=bool)
    for i, (prev, c, nxt) in enumerate(_bounds(change_points, len(values))):
        level = float(np.nanmean(values[max(prev, c - pre) : c])) if c > prev else math.nan
        after = values[c:nxt]
        if smooth > 1:
            sums = np.cumsum(np.concatenate([[0.0], after]))
            idx = np.arange(len(after))
            lo = np.maximum(0, idx - smooth + 1)
            after = (sums[idx + 1] - sums[lo]) / (idx + 1 - lo)
        ok = after <= (1 + tolerance) * level
        run, found = 0, None
        for s, good in enumerate(ok):
            run = run + 1 if good else 0
            if run >= hold:
                found = s - hold + 1
                break
        steps[i] = found if found is not None else nxt - c
        censored[i] = found is None
    return steps, censored


def regret(values: np.ndarray) -> float:
    """The cumulative error over the stream (sum of the per-step errors)."""
    return float(np.sum(np.asarray(values, dtype=np.float64)))


def _values(run: OnlineRun, metric: str) -> np.ndarray:
    if metric == "probe":
        if np.all(np.isnan(run.probe_error)):
            raise DataError(
                "the runs have no probe errors (the stream has no probes, or online(probe=False)); use metric='error'"
            )
        return run.probe_error
    if metric == "error":
        return run.error
    raise ConfigError(f"metric={metric!r} is unknown; choose probe or error")


def _ci(values: Sequence[float], level: float) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return [float(v.mean()) if v.size else math.nan, math.nan]
    return list(mean_ci(v, level))


def summarize(
    runs: Sequence[OnlineRun],
    metric: str = "probe",
    horizon: int = 50,
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
    level: float = 0.95,
) -> dict[str, Any]:
    """Over seeded streams: recovery steps (each stream's mean over its changes), the fraction censored,
    regret (cumulative ``error`` over the stream; the step errors, not the probes), each as
    ``[mean, half-width]`` of the ``level`` interval over streams, and the mean error against steps
    since a change (``curve``, ``[horizon]``, with ``curve_ci``)."""
    if not runs:
        raise DataError("summarize needs at least one run")
    rec, cens, reg, curves = [], [], [], []
    for r in runs:
        v = _values(r, metric)
        steps, censored = recovery_steps(v, r.change_points, pre, tolerance, hold, smooth)
        if len(steps):
            rec.append(float(steps.mean()))
            cens.append(float(censored.mean()))
            curves.append(np.nanmean(aligned(v, r.change_points, horizon), axis=0))
        reg.append(regret(r.error))
    out: dict[str, Any] = {
        "streams": len(runs),
        "metric": metric,
        "regret": _ci(reg, level),
        "per_stream": {"regret": reg, "recovery": rec},
    }
    if rec:
        c = np.array(curves)
        out["recovery"] = _ci(rec, level)
        out["censored"] = float(np.mean(cens))
        out["curve"] = [float(v) for v in np.nanmean(c, axis=0)]
        out["curve_ci"] = [_ci(c[~np.isnan(c[:, s]), s], level)[1] for s in range(c.shape[1])]
    return out


def paired(
    a: Sequence[OnlineRun],
    b: Sequence[OnlineRun],
    metric: str = "probe",
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Per-stream differences ``a - b`` (the same seeded streams, in the same order) of recovery steps and
    regret, as ``[mean, half-width]``: an interval below 0 says ``a`` recovers faster / regrets less."""
    if len(a) != len(b) or not a:
        raise DataError(f"paired comparison needs the same streams for both: {len(a)} and {len(b)} runs")
    rec, reg = [], []
    for ra, rb in zip(a, b):
        if ra.change_points != rb.change_points:
            raise DataError("paired comparison: the runs are of different streams (change points differ)")
        sa = recovery_steps(_values(ra, metric), ra.change_points, pre, tolerance, hold, smooth)[0]
        sb = recovery_steps(_values(rb, metric), rb.change_points, pre, tolerance, hold, smooth)[0]
        if len(sa):
            rec.append(float(sa.mean() - sb.mean()))
        reg.append(regret(ra.error) - regret(rb.error))
    return {"recovery": _ci(rec, level), "regret": _ci(reg, level)}


def new_class_curves(run: OnlineRun, new_labels: Sequence[tuple[int, int]], horizon: int) -> np.ndarray:
    """``[new classes, horizon]``: probe accuracy of each class that appears at a change (``new_labels``:
    ``(label, step)``, e.g. ``ClassStream.new_labels()``) ``j`` steps after it appeared, i.e. after
    ``j * per_class`` labelled examples of it (the probe comes before the step's update)."""
    if run.probe_label_acc is None:
        raise DataError(
            "the run has no per-label probe accuracy (a classification stream with holdout > 0, online(probe=True))"
        )
    out = np.full((len(new_labels), horizon), math.nan)
    for i, (label, step) in enumerate(new_labels):
        if label < run.probe_label_acc.shape[1]:
            n = min(horizon, run.length - step)
            out[i, :n] = run.probe_label_acc[step : step + n, label]
    return out


def examples_to_fraction(curve: np.ndarray, fraction: float = 0.9, final: int = 10, per_class: int = 1) -> float:
    """Labelled examples a class needs to reach ``fraction`` of its final accuracy: ``curve [horizon]`` (or
    ``[classes, horizon]``, averaged first) is accuracy against steps since it appeared; final = the mean
    of the last ``final`` values; the first step at or above ``fraction * final``, times ``per_class``
    (NaN when never)."""
    c = np.asarray(curve, dtype=np.float64)
    c = np.nanmean(c, axis=0) if c.ndim == 2 else c
    target = fraction * float(np.nanmean(c[-final:]))
    hits = np.nonzero(c >= target)[0]
    return float(hits[0] * per_class) if len(hits) else math.nan


# --- plots ---------------------------------------------------------------------------------------


def plot_stream(
    runs: Mapping[str, OnlineRun], path: str | Path, metric: str = "probe", title: str = "", smooth: int = 1
) -> Path:
    """Error against step of one stream for each learner, change points as vertical lines, detector
    resets as ticks; saved to ``path`` (PNG). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6))
    first = next(iter(runs.values()))
    for c in first.change_points:
        ax.axvline(c, color="0.75", lw=1, zorder=0)
    for label, run in runs.items():
        v = _values(run, metric)
        if smooth > 1:
            v = np.convolve(np.nan_to_num(v), np.ones(smooth) / smooth, mode="same")
        (line,) = ax.plot(np.arange(run.length), v, lw=1.2, label=label)
        if run.resets:
            ax.plot(run.resets, [ax.get_ylim()[0]] * len(run.resets), "|", color=line.get_color(), ms=10)
    ax.set(
        xlabel="step",
        ylabel=("probe " if metric == "probe" else "") + ("error rate" if first.classification else "MSE"),
        title=title,
    )
    if not first.classification:
        ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


STREAMS_FILE = "streams.json"  # what save_runs writes and fastadapt plot reads


def save_runs(runs: Mapping[str, OnlineRun] | Mapping[str, Mapping[str, OnlineRun]], path: str | Path) -> Path:
    """Write the records of :func:`online` runs as JSON (``{learner: run}``, or ``{stream: {learner: run}}`` for several
    streams); a folder gets ``streams.json``. ``fastadapt plot PATH`` draws them."""
    path = Path(path)
    if path.is_dir():
        path = path / STREAMS_FILE

    def plain(v: Any) -> Any:
        return v.to_dict() if isinstance(v, OnlineRun) else {k: plain(x) for k, x in v.items()}

    path.write_text(json.dumps(plain(runs)) + "\n")
    return path


def is_streams_record(path: str | Path) -> bool:
    """Whether ``path`` is a record of online runs (a ``.json`` file or a folder holding ``streams.json``) rather than a run folder."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".json") or (
        path.is_dir() and (path / STREAMS_FILE).is_file() and not (path / "config.json").is_file()
    )


def plot_stream_record(path: str | Path) -> list[Path]:
    """``fastadapt plot`` of a :func:`save_runs` record: one PNG per stream (``stream_<name>.png``, or ``stream.png``) beside it,
    every learner's probe error along the stream with the change points. A file that is not such a record is one line."""
    path = Path(path)
    file = path / STREAMS_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: not a readable record of online runs ({_first_line(e)})") from None

    def is_run(v: Any) -> bool:
        return isinstance(v, Mapping) and "error" in v and "change_points" in v

    if not isinstance(data, Mapping) or not data:
        raise DataError(
            f"{file}: expected {{learner: run}} or {{stream: {{learner: run}}}} as written by fastadapt.eval.online.save_runs"
        )
    groups = {"": data} if all(is_run(v) for v in data.values()) else data
    out = []
    for name, runs in groups.items():
        if not isinstance(runs, Mapping) or not runs or not all(is_run(v) for v in runs.values()):
            raise DataError(
                f"{file}: stream {name!r} holds no online runs (each needs 'error' and 'change_points'; see save_runs)"
            )
        target = file.parent / (f"stream_{name}.png" if name else "stream.png")
        out.append(
            plot_stream(
                {k: OnlineRun.from_dict(v) for k, v in runs.items()}, target, title=f"{file.name} {name}".strip()
            )
        )
    return out


def plot_recovery(
    summaries: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "", ylabel: str = "MSE", log: bool = True
) -> Path:
    """Mean error against steps since a change (``summarize(...)["curve"]``) with its interval, one line per learner (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in summaries.items():
        if "curve" not in s:
            continue
        m, h = np.array(s["curve"]), np.nan_to_num(np.array(s["curve_ci"]))
        x = np.arange(len(m))
        ax.plot(x, m, label=label)
        ax.fill_between(x, m - h, m + h, alpha=0.2)
    ax.set(xlabel="steps since the change", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "LossJump",
    "OnlineRun",
    "aligned",
    "examples_to_fraction",
    "new_class_curves",
    "online",
    "paired",
    "plot_recovery",
    "plot_stream",
    "plot_stream_record",
    "recovery_steps",
    "regret",
    "save_runs",
    "state_nbytes",
    "summarize",
]
