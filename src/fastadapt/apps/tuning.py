"""``fastadapt tune PRESET``: hyperparameter search over a run's config keys with Optuna.

A search space maps config keys to ranges, in a ``[tune]`` section of a TOML file (the keys with a
dot) or on the command line (``--space "optim.lr={ low = 1e-4, high = 1e-2, log = true }"``); see
:class:`TuneSpec`. :func:`tune` runs (or resumes) the study in a folder, ``TUNEDIR``: one
``fastadapt.train`` per trial.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastadapt.config import Config, apply_overrides, config_from_dict, parse_override, read_toml, to_toml
from fastadapt.core.cancel import Interrupted
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.runtime import distributed

SETTINGS = ("trials", "minutes", "pruner", "seed")
PRUNERS = ("median", "halving", "none")
STUDY = "fastadapt"
RECORD = "tune.json"


@dataclass(frozen=True)
class Param:
    """One searched key: a float or int range (``log``: sampled on a log scale), or a list of ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class TuneSpec:
    """The search: the space and the budget.

    A ``[tune]`` section holds them::

        [tune]
        trials = 20                  # budget: trials in all (finished ones count on resume)
        minutes = 30                 # budget: minutes of this invocation (0: none)
        pruner = "median"            # "median", "halving" (successive halving) on the validation curve, or "none"
        seed = 0                     # the TPE sampler's seed
        "optim.lr" = { low = 1e-4, high = 1e-2, log = true }
        "algorithm.inner_steps" = { choices = [1, 3, 5] }
        "algorithm.inner_lr" = { low = 0.05, high = 1.0 }      # float, or int when both ends are integers
    """

    space: tuple[Param, ...]
    trials: int = 20
    minutes: float = 0.0
    pruner: str = "median"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise FastAdaptError("fastadapt tune needs Optuna; install it with: pip install 'fastadapt[tune]'") from None
    return optuna


def parse_param(key: str, value: Any) -> Param:
    """A range ``{ low, high, log }`` or ``{ choices = [...] }`` (or a bare list of choices) for ``key``; one-line
    errors."""
    if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"tune key {key!r} must be section.key, e.g. optim.lr or algorithm.inner_steps")
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"tune {key}={value!r} is not a range; write {{ low = 1e-4, high = 1e-2, log = true }} or "
            f"{{ choices = [1, 3, 5] }}"
        )
    unknown = set(value) - {"low", "high", "log", "choices"}
    if unknown:
        raise ConfigError(f"tune {key}: unknown field {sorted(unknown)[0]!r}; a range has low, high, log, or choices")
    if "choices" in value:
        if set(value) != {"choices"}:
            raise ConfigError(f"tune {key}: give either choices or low/high, not both")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"tune {key}: choices={choices!r} is empty; list at least one value")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"tune {key}: choices={choices!r} lists a value twice")
        return Param(key, choices=tuple(choices))
    if "low" not in value or "high" not in value:
        raise ConfigError(f"tune {key}: a range needs low and high, e.g. {{ low = 1e-4, high = 1e-2 }}")
    low, high, log = value["low"], value["high"], value.get("log", False)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"tune {key}: {name}={v!r} is not a finite number")
    if not isinstance(log, bool):
        raise ConfigError(f"tune {key}: log={log!r} must be true or false")
    if not low < high:
        raise ConfigError(
            f"tune {key}: the range [{low}, {high}] is {'empty' if low == high else 'inverted'}; give low < high"
        )
    if log and low <= 0:
        raise ConfigError(f"tune {key}: a log range needs low > 0, found low={low}")
    if isinstance(low, int) and isinstance(high, int):
        return Param(key, int(low), int(high), log)
    return Param(key, float(low), float(high), log)


def parse_spec(
    table: dict[str, Any],
    cli_space: list[str] | tuple[str, ...] = (),
    trials: int | None = None,
    minutes: float | None = None,
) -> TuneSpec:
    """A :class:`TuneSpec` from a ``[tune]`` table and ``--space key=range`` texts (the command line wins)."""
    if not isinstance(table, dict):
        raise ConfigError('[tune] must be a table: budget settings and "section.key" = { low, high } ranges')
    settings = {k: v for k, v in table.items() if "." not in k}
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ConfigError(
            f'unknown key tune.{sorted(unknown)[0]}; allowed: {", ".join(SETTINGS)} and "section.key" ranges'
        )
    space = {k: parse_param(k, v) for k, v in table.items() if "." in k}
    for text in cli_space:
        (section, key), value = parse_override(text)
        space[f"{section}.{key}"] = parse_param(f"{section}.{key}", value)
    if not space:
        raise ConfigError(
            "nothing to tune: give ranges in a [tune] section or with --space "
            '"optim.lr={ low = 1e-4, high = 1e-2, log = true }"'
        )
    trials = settings.get("trials", 20) if trials is None else trials
    minutes = settings.get("minutes", 0.0) if minutes is None else minutes
    pruner, seed = settings.get("pruner", "median"), settings.get("seed", 0)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"tune trials={trials!r} is invalid; it must be an integer >= 1")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 <= minutes < math.inf:
        raise ConfigError(f"tune minutes={minutes!r} is invalid; it must be a number >= 0 (0: no time limit)")
    if pruner not in PRUNERS:
        raise ConfigError(f"tune pruner={pruner!r} is unknown; choose one of {', '.join(PRUNERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"tune seed={seed!r} is invalid; it must be an integer >= 0")
    return TuneSpec(tuple(space.values()), trials, float(minutes), pruner, seed)


def _overrides_of(params: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def _trial_config(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...], params: dict[str, Any], what: str = ""
) -> Config:
    """The base config (``raw`` with ``overrides``) with ``params`` set; a bad key or value is one line naming
    ``what``."""
    data = json.loads(json.dumps(raw))
    try:
        return config_from_dict(apply_overrides(data, [*overrides, *_overrides_of(params)]))
    except ConfigError as e:
        raise ConfigError(f"{what}{e}" if what else str(e)) from None


def _check_space(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], spec: TuneSpec) -> None:
    """Every end of every range (and every choice) must make a valid config: unknown keys and values out of range fail
    here."""
    for p in spec.space:
        section, key = p.key.split(".")
        if section == "run" or (section, key) in (("eval", "val_every"), ("eval", "test_episodes")):
            raise ConfigError(
                f"tune {p.key}: [run] keys, eval.val_every and eval.test_episodes are set by the tuner, not searched"
            )
        for v in p.choices or (p.low, p.high):
            _trial_config(raw, overrides, {p.key: v}, f"tune {p.key}={v!r}: ")


def _record(preset: str, raw: dict[str, Any], overrides: list[str] | tuple[str, ...], spec: TuneSpec) -> dict[str, Any]:
    return {
        "preset": preset,
        "overrides": list(overrides),
        "config": _trial_config(raw, overrides, {}).to_dict(),
        "space": {p.key: p.to_dict() for p in spec.space},
    }


def _check_folder(folder: Path, record: dict[str, Any]) -> None:
    """Write ``tune.json`` in a new folder; in an existing one, refuse another preset, config or space."""
    path = folder / RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FastAdaptError(
                f"{path} cannot be read ({e}); is {folder} a tune folder? choose another --dir"
            ) from None
        for key, what in (("config", "preset or config"), ("space", "search space")):
            if old.get(key) != record[key]:
                raise FastAdaptError(
                    f"{folder} holds a study of another {what} (recorded: {old.get('preset')!r} with overrides "
                    f"{old.get('overrides')}); pass another --dir, or the same preset, overrides and space to resume it"
                )
        return
    if (folder / "study.db").exists():
        raise FastAdaptError(
            f"{folder} has a study.db but no {RECORD}; it was not made by fastadapt tune: choose another --dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one temporary file per worker: several may start at once
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


@dataclass
class TuneResult:
    folder: Path
    finished: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_file: Path | None
    metric: str


def tune(
    preset: str,
    overrides: list[str] | tuple[str, ...] = (),
    folder: str | Path | None = None,
    space: list[str] | tuple[str, ...] = (),
    trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    heartbeat: int = 30,
) -> TuneResult:
    """Run (or resume) the study of ``preset`` with ``overrides`` in ``folder`` (default ``runs/tune-<name>``).

    Every trial is one ``fastadapt.train`` of the config with the trial's values, in
    ``TUNEDIR/trials/trial-NNNN`` (no test episodes: the objective is the best validation score the loop
    records, accuracy to maximise or minus the MSE). After every validation the loop's score goes to
    ``trial.report`` and the pruner may stop the trial (Optuna's TPE sampler; ``MedianPruner`` or
    ``SuccessiveHalvingPruner``). A trial whose loss becomes NaN or infinite (``TrainingDiverged``) is
    pruned, with the message kept as the trial's ``diverged`` attribute, and the study goes on.

    The trials live in ``TUNEDIR/study.db`` (Optuna's RDB storage on SQLite, ``load_if_exists``), or in the
    database at ``storage`` (``postgresql://...`` or ``sqlite:///...``; the study is named after the folder): any
    number of workers (this command started again, on this machine or others, with the same ``storage``) share the
    study's trials (:mod:`fastadapt.apps.tune_workers`). A tuning that is killed resumes with every finished trial
    when the same command runs again; a trial whose worker died (no heartbeat for 3 x ``heartbeat`` seconds, or its
    process gone on this host) is marked failed and its values are tried again first.
    ``TUNEDIR/tune.json`` records the preset, the overrides and the space; another preset, other overrides
    or another space in the same folder is refused (one line). The best trial's config is written as a
    preset file, ``TUNEDIR/best.toml`` (``fastadapt train TUNEDIR/best.toml``). ``fastadapt plot TUNEDIR``
    draws the objective over trials and the parameter importances (fANOVA) to ``TUNEDIR/study.png``.

    Under ``torchrun`` the command refuses (one trial per rank is not implemented): start workers instead.
    """
    if distributed.env_world_size() > 1:
        raise FastAdaptError(
            "fastadapt tune runs in one process (one trial per rank is not implemented); run it without torchrun"
        )
    raw = read_toml(preset)
    table = raw.pop("tune", {})
    spec = parse_spec(table, space, trials, minutes)
    base = _trial_config(raw, overrides, {})
    if not base.eval.val_every or not base.data.val_part:
        raise ConfigError(
            "tuning needs validation: set eval.val_every > 0 and data.val_part (the objective is the validation score)"
        )
    _check_space(raw, overrides, spec)
    folder = Path(folder) if folder else Path("runs") / f"tune-{base.run.name}"
    record = _record(preset, raw, overrides, spec)
    optuna = _optuna()
    from fastadapt.apps import storage as shared

    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat {heartbeat!r} is invalid; give whole seconds >= 1")
    if storage:  # a bad or unreachable URL is refused before anything is written
        url, name = shared.normalize(storage), folder.name
        shared.connect(url).dispose()
    _check_folder(folder, record)
    from fastadapt.apps.tune_workers import close, distributions, open_study, run_trials
    from fastadapt.runs.folder import RunFolder
    from fastadapt.training.loop import train
    from fastadapt.training.resume import TrainingDiverged

    if not storage:
        url, name = f"sqlite:///{(folder / 'study.db').resolve()}", STUDY
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2), "none": optuna.pruners.NopPruner,
               "halving": optuna.pruners.SuccessiveHalvingPruner}  # fmt: skip
    mark = json.loads(json.dumps(record))
    study, engine = open_study(url, name, mark, spec.seed, pruners[spec.pruner](), heartbeat)

    def objective(trial: Any) -> float:
        params = dict(trial.params)  # drawn when the trial was taken (tune_workers.run_trials)
        out = folder / "trials" / f"trial-{trial.number:04d}"
        cfg = _trial_config(
            raw,
            [*overrides, f"run.out={json.dumps(str(out))}", "run.progress=false", "eval.test_episodes=0"],
            params,
            f"trial {trial.number}: ",
        )
        trial.set_user_attr("run_dir", str(out))
        run = RunFolder(out)

        def report(step: int) -> None:
            if step % cfg.eval.val_every and step != cfg.optim.steps:
                return
            rows = [r for r in run.read_metrics() if r.get("split") == "val" and r.get("step") == step]
            if rows:
                metric = "acc" if "acc" in rows[-1] else "mse"
                trial.set_user_attr("metric", metric)
                trial.report(rows[-1][metric] if metric == "acc" else -rows[-1][metric], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        try:
            result = train(cfg, resume=False, step_hook=report)
        except TrainingDiverged as e:
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(f"diverged: {e}") from None
        if result.interrupted:  # a signal: the trial is failed and queued again (tune_workers), the command stops
            raise Interrupted(result.signal or signal.SIGINT, f"trial {trial.number} interrupted")
        if result.best_val is None or not math.isfinite(result.best_val):
            trial.set_user_attr("diverged", f"no finite validation score ({result.best_val})")
            raise optuna.TrialPruned("no finite validation score")
        trial.set_user_attr("minutes", result.train_seconds / 60)
        return float(result.best_val)

    deadline = time.monotonic() + 60 * spec.minutes if spec.minutes else None
    try:
        run_trials(study, engine, name, objective, distributions(spec.space), spec.trials, heartbeat, deadline)
        return summarise(folder, raw, overrides, study)
    finally:
        close(study, engine)


def summarise(folder: Path, raw: dict[str, Any], overrides: list[str] | tuple[str, ...], study: Any) -> TuneResult:
    """Counts, the best trial, and ``best.toml`` (written atomically when there is a finished trial)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    complete = [t for t in trials if t.state == state.COMPLETE]
    metric = "acc"
    best_file = None
    best_value, best_params = None, {}
    if complete:
        best = max(complete, key=lambda t: t.value)
        best_value, best_params = float(best.value), dict(best.params)
        metric = best.user_attrs.get("metric", "acc")
        cfg = _trial_config(raw, overrides, best_params)
        title = (
            f"fastadapt tune: best of {len(complete)} finished trials (trial {best.number}, validation score "
            f"{best_value:.6g}).\n"
            f"Train it: fastadapt train {folder / 'best.toml'}"
        )
        best_file = folder / "best.toml"
        tmp = best_file.with_suffix(f".{os.getpid()}.tmp")  # workers that end together each write their own
        tmp.write_text(to_toml(cfg, title))
        tmp.replace(best_file)
    return TuneResult(
        folder,
        len(complete),
        sum(t.state == state.PRUNED for t in trials),
        sum(t.state == state.FAIL for t in trials),
        best_value,
        best_params,
        best_file,
        metric,
    )


def is_tune_folder(path: str | Path) -> bool:
    return (Path(path) / RECORD).is_file() and (Path(path) / "study.db").is_file()


def plot_study(path: str | Path) -> list[Path]:
    """``study.png``: every trial's objective (finished, pruned at its last report) and the best so far; parameter
    importances."""
    from fastadapt.report.figure import pyplot

    folder = Path(path)
    if not is_tune_folder(folder):
        raise FastAdaptError(
            f"{folder} is not a tune folder (no {RECORD} and study.db); pass the --dir of fastadapt tune"
        )
    optuna = _optuna()
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{(folder / 'study.db').resolve()}")
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    done = [t for t in trials if t.state == state.COMPLETE]
    pruned = [t for t in trials if t.state == state.PRUNED and t.intermediate_values]
    ax1.scatter([t.number for t in done], [t.value for t in done], label="finished", zorder=3)
    ax1.scatter(
        [t.number for t in pruned],
        [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
        marker="x",
        label="pruned (last report)",
        zorder=3,
    )
    best, running = [], -math.inf
    for t in sorted(done, key=lambda t: t.number):
        running = max(running, t.value)
        best.append((t.number, running))
    if best:
        ax1.step([n for n, _ in best], [v for _, v in best], where="post", label="best so far")
    ax1.set(xlabel="trial", ylabel="validation score (acc, or -MSE)", title=f"{len(trials)} trials")
    ax1.legend(fontsize=7)
    importances: dict[str, float] = {}
    if len(done) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # too few distinct values for fANOVA
            importances = {}
    if importances:
        names = list(importances)
        ax2.barh(range(len(names)), [importances[n] for n in names])
        ax2.set_yticks(range(len(names)), names, fontsize=7)
        ax2.invert_yaxis()
    else:
        ax2.text(
            0.5, 0.5, "importance needs 2 or more finished trials\nwith different values", ha="center", va="center"
        )
    ax2.set(xlabel="importance (fANOVA)", title="parameter importance")
    fig.tight_layout()
    out = folder / "study.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
