"""``fastadapt analyze``: for a trained run (or a config's initial model) and its training tasks, every quantity of
:mod:`fastadapt.analysis` over a sweep of the inner step size, written to ``analysis/analysis.json`` and
``analysis/analysis.png`` in the run folder; for an algorithm without a head (ProtoNets, Matching Networks, ...),
what applies to its episode loss (:mod:`fastadapt.analysis.episodes`)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import task_loss
from fastadapt.analysis import terms as T
from fastadapt.analysis.episodes import analyze_episodes
from fastadapt.analysis.hessian import flat, top_eigenvalue
from fastadapt.analysis.plots import plot_analysis, plot_episodes
from fastadapt.analysis.transfer import adapted_spread, task_gradient_alignment, within_task_alignment
from fastadapt.config import Config, load_config
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.runs.folder import CONFIG, write_json

DEFAULT_TASKS = 8  # tasks drawn from the training source
DEFAULT_K = 2  # mini-batches per task (Nichol et al.'s k: MAML takes k - 1 inner steps)
AUTO_SCALES = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)  # default step sizes, as a * L (L: the top |eigenvalue|)
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Subject:
    """What is analysed: a model (a copy, never the caller's), the task source it learns from, where the numbers go."""

    config: Config
    model: nn.Module
    tasks: Any  # a TaskSource (sample_tasks)
    origin: dict[str, Any]  # "trained" (a run folder, its weights and step) or "init" (a config and its seed)
    out: Path  # the analysis folder
    algorithm: nn.Module | None = None  # a copy of the whole algorithm (its meta-loss: the episode analysis)

    @property
    def has_head(self) -> bool:
        """Whether the model ends in a head or a regression output, so that the task loss is the model's loss and
        the inner-loop theory applies (MAML, FOMAML, Reptile, iMAML, ...); else only the episode analysis does."""
        return self.algorithm is None or bool(getattr(type(self.algorithm), "needs_head", False))


def load_subject(source: str | Path, overrides: Sequence[str] = ()) -> Subject:
    """A run folder (a folder with config.json: its trained model, its training tasks, ``RUN/analysis``) or a preset
    or TOML file (the model as initialised with ``run.seed``, ``<run folder>/analysis``), with ``overrides``.

    An algorithm whose model does not end in a head or a regression output (ProtoNets, Matching Networks, ...:
    the task loss is not a function of the model's outputs alone) gets the episode analysis
    (:attr:`Subject.has_head` is False); one without a model module is refused in one line (:class:`ConfigError`).
    """
    from fastadapt.config.build import build_algorithm, probe_batch, task_sources, train_classes, train_domains

    path = Path(source)
    if (path / CONFIG).is_file():
        from fastadapt.runs.load import load_run

        run = load_run(path, overrides)
        cfg, algo, out = run.config, run.algorithm, path / "analysis"
        origin = {"kind": "trained", "run": str(path), "weights": run.weights, "step": run.step}
        train = run.tasks("train").train
    else:
        if path.suffix == ".toml" and not path.is_file():
            raise ConfigError(f"{path} does not exist; pass a run folder, a preset (fastadapt list) or a .toml file")
        cfg = load_config(str(source), list(overrides))
        sources = task_sources(cfg)
        train = sources.train
        batch = probe_batch(sources, cfg)
        if not isinstance(batch, TaskBatch):
            raise ConfigError(f"{cfg.data.dataset} gives environments; analyze needs tasks given by examples")
        with torch.random.fork_rng(devices=[]):  # the initial weights of run.seed; torch's generator is restored
            torch.manual_seed(cfg.run.seed)
            algo = build_algorithm(
                cfg, batch, num_classes=train_classes(sources), domain_sizes=train_domains(sources), check_memory=False
            )
        origin, out = {"kind": "init", "config": str(source), "seed": cfg.run.seed}, cfg.out_dir / "analysis"
    model = getattr(algo, "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"analyze needs an algorithm with a model module; {cfg.algorithm} has none")
    return Subject(cfg, copy.deepcopy(model), train, origin, out, copy.deepcopy(algo))


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``log y`` against ``log x`` (nan with fewer than 2 positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return float("nan") if sxx == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def local_slopes(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """The log-log slope between each pair of consecutive points (where a Taylor expansion stops holding, they
    leave 2)."""
    return [loglog_slope(xs[i : i + 2], ys[i : i + 2]) for i in range(len(xs) - 1)]


def check_options(step_sizes: Sequence[float] | None, tasks: int, k: int, dtype: str) -> None:
    """One-line :class:`ConfigError` for a bad step size (not a finite number > 0), task count (< 2), k (< 2) or
    dtype."""
    for a in step_sizes or ():
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < float("inf"):
            raise ConfigError(f"step size {a!r} is invalid; step sizes must be finite numbers > 0")
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 2:
        raise ConfigError(f"--tasks={tasks!r} is invalid; the alignment of task gradients needs at least 2 tasks")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"--k={k!r} is invalid; the meta-gradient's terms need k >= 2 mini-batches per task")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is unknown; choose one of {', '.join(DTYPES)}")


def analyze_subject(
    subject: Subject,
    step_sizes: Sequence[float] | None = None,
    tasks: int = DEFAULT_TASKS,
    k: int = DEFAULT_K,
    dtype: str = "float64",
    seed: int = 0,
    iterations: int = 100,
    scales: Sequence[float] = AUTO_SCALES,
) -> dict[str, Any]:
    """Every quantity of the analysis for ``subject`` (a JSON-ready record; nothing is written).

    ``tasks`` training tasks (``sample_tasks(seed, 0, tasks)``: the same tasks for the same seed), each one's support
    and query examples pooled and split into ``k`` mini-batches (:func:`~fastadapt.analysis.terms.split_minibatches`);
    in ``dtype`` (float64: the Taylor remainder stays far above rounding). At ``theta``: AvgGrad, AvgGradInner, the
    Hessian's top eigenvalue of the mean loss and of each task's first mini-batch, the alignment of gradients. For
    each step size ``a`` (default: ``scales`` divided by the largest per-task curvature L): the meta-gradients
    measured and predicted, ``|measured - predicted|``, the first-order error and its bound, the spread of the
    adapted weights. The summary holds the log-log slopes over the whole sweep (the fit's range is recorded).
    """
    check_options(step_sizes, tasks, k, dtype)
    if not subject.has_head:
        raise ConfigError(
            f"{subject.config.algorithm}'s model does not end in a head, so the inner-loop theory does not apply; "
            "use analyze (the episode analysis)"
        )
    started = time.perf_counter()
    model = (
        copy.deepcopy(subject.model).to(DTYPES[dtype]).train()
    )  # BatchNorm: per-mini-batch statistics, as in the inner loop
    theta = {n: v.detach() for n, v in inner.trainable_params(model).items()}
    batch = subject.tasks.sample_tasks(seed, 0, tasks)
    if not isinstance(batch, TaskBatch):
        raise ConfigError("analyze needs tasks given by examples; this source gives environments")
    batch = batch.to(dtype=DTYPES[dtype])
    g = torch.Generator().manual_seed(seed)
    minibatches = [
        T.split_minibatches(
            torch.cat([batch.support_x[t], batch.query_x[t]]), torch.cat([batch.support_y[t], batch.query_y[t]]), k, g
        )
        for t in range(tasks)
    ]

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(inner.call(model, params, x), y)

    def mean_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss(params, x, y) for mbs in minibatches for x, y in mbs) / (tasks * k)

    terms = T.gradient_terms(loss, theta, minibatches)
    top = top_eigenvalue(mean_loss, theta, iterations)
    curvature = T.curvatures(loss, theta, minibatches, iterations)
    scale = float(curvature.max())
    if step_sizes is None:
        if scale <= 0:
            raise ConfigError("the Hessian is zero at these weights; pass step sizes (--step-sizes)")
        step_sizes = [c / scale for c in scales]
    sweep = []
    for a in sorted(float(s) for s in step_sizes):
        got, want = T.measured(loss, theta, minibatches, a), T.predicted(terms, a)
        fo = T.first_order_error(loss, theta, minibatches, a, curvature)
        taylor = {}
        for name in T.ALGORITHMS:
            residual = float((got.gradients[name] - want[name]).norm())
            taylor[name] = {
                "residual": residual,
                "relative": residual / max(float(want[name].norm()), 1e-300),
                "measured_norm": float(got.gradients[name].norm()),
                "predicted_norm": float(want[name].norm()),
            }
        sweep.append(
            {
                "a": a,
                "a_times_L": a * scale,
                "taylor": taylor,
                "first_order": {
                    "error": float(fo.error.mean()),
                    "bound": float(fo.bound.mean()),
                    "max_ratio": float((fo.error / fo.bound.clamp_min(1e-300)).max()),
                    "holds": bool((fo.error <= fo.bound * (1 + 1e-9)).all()),
                },
                "transfer": adapted_spread(got.adapted, flat(theta)),
            }
        )
    a_values = [row["a"] for row in sweep]
    summary = {
        "taylor_slopes": {
            n: loglog_slope(a_values, [row["taylor"][n]["residual"] for row in sweep]) for n in T.ALGORITHMS
        },
        "taylor_local_slopes": {
            n: local_slopes(a_values, [row["taylor"][n]["residual"] for row in sweep]) for n in T.ALGORITHMS
        },
        "fo_slope": loglog_slope(a_values, [row["first_order"]["error"] for row in sweep]),
        "fo_bound_holds": all(row["first_order"]["holds"] for row in sweep),
        "fit_range": [min(a_values), max(a_values)],
    }
    return {
        "settings": {
            "tasks": tasks,
            "k": k,
            "minibatch": int(minibatches[0][0][0].shape[0]),
            "dtype": dtype,
            "seed": seed,
            "parameters": int(flat(theta).numel()),
            "batch_norm": inner.norm_mode(model),
            "power_iterations": iterations,
        },
        "origin": subject.origin,
        "algorithm": subject.config.algorithm,
        "model": subject.config.model.target or subject.config.model.name,
        "dataset": subject.config.data.target or subject.config.data.dataset,
        "terms": {
            "avg_grad_norm": float(terms.avg_grad.norm()),
            "avg_grad_inner_norm": float(terms.avg_grad_inner.norm()),
        },
        "hessian": {
            "top_eigenvalue": top.value,
            "iterations": top.iterations,
            "converged": top.converged,
            "task_curvature_max": scale,
            "task_curvature_mean": float(curvature.mean()),
        },
        "alignment": {
            "task_gradient_cosine": task_gradient_alignment(terms.task_grads),
            "within_task_cosine": within_task_alignment(terms.batch_grads),
        },
        "sweep": sweep,
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def analyze(
    source: str | Path,
    overrides: Sequence[str] = (),
    step_sizes: Sequence[float] | None = None,
    tasks: int = DEFAULT_TASKS,
    k: int = DEFAULT_K,
    dtype: str = "float64",
    seed: int = 0,
    out: str | Path | None = None,
    iterations: int = 100,
) -> tuple[dict[str, Any], list[Path]]:
    """:func:`analyze_subject` on :func:`load_subject` ``(source, overrides)``; writes ``analysis.json`` and
    ``analysis.png`` to ``out`` (default: the run folder's ``analysis/``) and returns the record and the paths."""
    check_options(step_sizes, tasks, k, dtype)
    subject = load_subject(source, overrides)
    if subject.has_head:
        record = analyze_subject(subject, step_sizes, tasks, k, dtype, seed, iterations)
    else:
        record = episode_record(subject, tasks, dtype, seed, iterations)
    folder = Path(out) if out is not None else subject.out
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / "analysis.json"
    write_json(js, record, elsewhere="choose another folder with --out")
    title = f"{record['algorithm']} / {record['model']} on {record['dataset']} ({record['origin']['kind']})"
    if subject.has_head:
        png = plot_analysis(record, folder / "analysis.png", title)
    else:
        png = plot_episodes(record, folder / "analysis.png", title)
    return record, [js, png]


def episode_record(subject: Subject, tasks: int, dtype: str, seed: int, iterations: int) -> dict[str, Any]:
    """:func:`~fastadapt.analysis.episodes.analyze_episodes` on ``tasks`` training tasks (``sample_tasks(seed, 0,
    tasks)``), with the subject's origin and names. ``summary`` holds the keys of the inner-loop record that the
    command prints, empty or nan (they do not apply), and ``line``: :func:`describe`'s sentence."""
    batch = subject.tasks.sample_tasks(seed, 0, tasks)
    if not isinstance(batch, TaskBatch):
        raise ConfigError("analyze needs tasks given by examples; this source gives environments")
    record = analyze_episodes(subject.algorithm, batch, DTYPES[dtype], iterations)
    record["settings"] |= {"dtype": dtype, "seed": seed}
    record |= {
        "origin": subject.origin,
        "algorithm": subject.config.algorithm,
        "model": subject.config.model.target or subject.config.model.name,
        "dataset": subject.config.data.target or subject.config.data.dataset,
    }
    nan = float("nan")
    record["summary"] = {"taylor_slopes": {}, "fo_slope": nan, "fo_bound_holds": None, "fit_range": [nan, nan]}
    record["summary"]["line"] = describe(record)
    return record


def describe(record: dict[str, Any]) -> str:
    """One sentence of an analysis record's main numbers (either kind), for the command's output."""
    h = record["hessian"]
    if record.get("kind") == "episodes":
        return (
            f"{record['algorithm']}: episode-loss Hessian top eigenvalue {h['top_eigenvalue']:.4g}; mean cosine "
            f"between task gradients {record['alignment']['task_gradient_cosine']:.3f}; not applicable (no inner "
            f"gradient step): {', '.join(record['not_applicable'])}"
        )
    s = record["summary"]
    slopes = ", ".join(f"{n} {v:.2f}" for n, v in s["taylor_slopes"].items())
    return (
        f"Taylor residual slopes over a in [{s['fit_range'][0]:.3g}, {s['fit_range'][1]:.3g}]: {slopes}; "
        f"first-order error slope {s['fo_slope']:.2f}, under its bound at every a: {s['fo_bound_holds']}; "
        f"Hessian top eigenvalue {h['top_eigenvalue']:.4g}"
    )
