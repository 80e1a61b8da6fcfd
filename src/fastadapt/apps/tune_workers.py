"""Workers of one ``fastadapt tune`` study: any number of processes, on one machine or many, share its trials.

The study lives in an Optuna RDB storage (the tune folder's SQLite file by default, or ``--storage URL``) with
heartbeats: every running trial's worker beats every ``heartbeat`` seconds, and a trial whose beats stop for
``3 x heartbeat`` seconds (or whose worker, on this host, is gone) is failed and queued again with the same values
(Optuna's ``RetryHeartbeatStaleTrialCallback``), for the next free worker. A worker takes its next trial under the
study's lock (:func:`fastadapt.apps.storage.study_lock`), so the budget is exact: ``trials`` finished trials, never
one more, however many workers race; a worker with nothing left to start waits while others' trials run, so a
trial whose worker dies is still retried.

The first :data:`STARTUP` fresh trials (TPE's random start) take their values from ``(seed, d, key)`` alone, ``d``
counting fresh trials in creation order (:class:`StartSampler`): the same values whatever the number of workers,
so a study on one worker and on three gives the same trials and the same best trial.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from fastadapt.apps.storage import StorageError, beating, connect, engine_options, gone, shown, study_lock, worker_id

STARTUP = 10  # fresh trials drawn at random (from the seed and their draw index) before TPE models the results
MAX_RETRY = 3  # a trial whose workers died this many times is left failed
GRACE = 3  # a trial is stale after this many heartbeat intervals without a beat


def fresh(trial: Any) -> bool:
    """True for a trial that drew its own values (not queued with values: a retry, or an enqueued trial)."""
    attrs = trial.system_attrs
    return "fixed_params" not in attrs and "failed_trial" not in attrs and "retry_of" not in trial.user_attrs


def draw_index(study: Any, number: int) -> int:
    """How many fresh trials were created before trial ``number``: its place in the study's sequence of draws."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and fresh(t))


class StartSampler(optuna.samplers.BaseSampler):
    """TPE, except for the first ``startup`` fresh trials, whose values come from ``(seed, draw index, key)`` alone."""

    def __init__(self, seed: int, startup: int = STARTUP) -> None:
        self.seed, self.startup = seed, startup
        self.tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    def _early(self, study: Any, trial: Any) -> bool:
        return draw_index(study, trial.number) < self.startup

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, space: dict[str, Any]) -> dict[str, Any]:
        return {} if self._early(study, trial) else self.tpe.sample_relative(study, trial, space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        if not self._early(study, trial):
            return self.tpe.sample_independent(study, trial, name, distribution)
        key = zlib.crc32(f"{self.seed}:{draw_index(study, trial.number)}:{name}".encode())
        return optuna.samplers.RandomSampler(seed=key).sample_independent(study, trial, name, distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
        self.tpe.after_trial(study, trial, state, values)


def distributions(space: Sequence[Any]) -> dict[str, Any]:
    """Optuna's distribution for each :class:`~fastadapt.apps.tuning.Param` of ``space`` (drawn when a trial is
    created, so a trial's values are in the database before its training starts)."""
    d = optuna.distributions
    out = {}
    for p in space:
        if p.choices:
            out[p.key] = d.CategoricalDistribution(list(p.choices))
        elif isinstance(p.low, int):
            out[p.key] = d.IntDistribution(p.low, p.high, log=p.log)
        else:
            out[p.key] = d.FloatDistribution(p.low, p.high, log=p.log)
    return out


def open_study(url: str, name: str, mark: dict[str, Any], seed: int, pruner: Any, heartbeat: int) -> tuple[Any, Any]:
    """Create or load study ``name`` in the storage at ``url`` (normalized) and check that it is the study of
    ``mark`` (the preset's config and the space): a study of another preset is one line. Returns ``(study, engine)``;
    the engine serves :func:`study_lock`."""
    engine = connect(url)
    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():  # the heartbeat arguments are experimental in Optuna
        warnings.simplefilter("ignore")
        retry = (retry_cls or optuna.storages.RetryFailedTrialCallback)(max_retry=MAX_RETRY)
        callback = {"heartbeat_stale_trial_callback" if retry_cls else "failed_trial_callback": retry}
        with study_lock(engine, name):  # one worker at a time creates the tables and the study
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_options(url), heartbeat_interval=heartbeat, grace_period=GRACE * heartbeat,
                **callback,
            )  # fmt: skip
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                load_if_exists=True,
                direction="maximize",
                sampler=StartSampler(seed),
                pruner=pruner,
            )
            found = study.user_attrs.get("fastadapt")
            if found is None:
                study.set_user_attr("fastadapt", mark)
    if found is not None and (found.get("config"), found.get("space")) != (mark["config"], mark["space"]):
        raise StorageError(
            f"the study {name!r} in {shown(url)} was created by another preset, config or space (recorded: "
            f"{found.get('preset')!r} with overrides {found.get('overrides')}); pass another --dir (the study's name) "
            "or the same preset, overrides and space"
        )
    return study, engine


def _retry(study: Any, trial: Any) -> None:
    """Fail running ``trial`` and queue its values again (as a stale trial is)."""
    storage = study._storage
    try:
        failed = storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    callback = storage.get_heartbeat_stale_trial_callback() if hasattr(storage, "get_heartbeat_stale_trial_callback") \
        else storage.get_failed_trial_callback()  # fmt: skip
    if failed and callback is not None:
        callback(study, storage.get_trial(trial._trial_id))


def reap(study: Any) -> None:
    """Fail and queue again the trials whose workers are dead: no heartbeat for the grace period (any host), or a
    worker on this host whose process is gone, or no worker at all (killed between taking a trial and naming
    itself: both happen under the lock, which the caller holds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fail_stale_trials is experimental in Optuna
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None or gone(worker):
            _retry(study, t)


def _next_trial(study: Any, trials: int, space: dict[str, Any]) -> tuple[Any, bool]:
    """Under the lock: ``(trial, False)`` to run, ``(None, True)`` when the budget is finished, ``(None, False)``
    when only others' running trials are left (wait)."""
    state = optuna.trial.TrialState
    reap(study)
    every = study.get_trials(deepcopy=False)
    done = sum(t.state in (state.COMPLETE, state.PRUNED) for t in every)
    running = sum(t.state == state.RUNNING for t in every)
    waiting = any(t.state == state.WAITING for t in every)
    if done >= trials:
        return None, True
    if not waiting and done + running >= trials:
        return None, False
    with warnings.catch_warnings():  # Optuna expects heartbeats under Study.optimize; run_trials beats itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask(space)  # a queued retry first, else a fresh draw
    trial.set_user_attr("worker", worker_id())
    return trial, False


def _run_one(study: Any, trial: Any, objective: Callable[[Any], float], heartbeat: int) -> None:
    """Run ``trial`` with its heartbeat; tell the study how it ended. An interrupted trial (Ctrl-C, SIGTERM) is failed
    and queued again before the interrupt goes on; any other error fails it and goes on (a bug stops the worker)."""
    state = optuna.trial.TrialState
    storage = study._storage
    try:
        with beating(lambda: storage.record_heartbeat(trial._trial_id), heartbeat):
            value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=state.PRUNED, skip_if_finished=True)
        return
    except KeyboardInterrupt:
        _retry(study, study._storage.get_trial(trial._trial_id))
        raise
    except BaseException:
        study.tell(trial, state=state.FAIL, skip_if_finished=True)
        raise
    study.tell(trial, value, skip_if_finished=True)


def run_trials(
    study: Any,
    engine: Any,
    name: str,
    objective: Callable[[Any], float],
    space: dict[str, Any],
    trials: int,
    heartbeat: int,
    deadline: float | None = None,
) -> None:
    """Work on study ``name`` until it has ``trials`` finished (complete or pruned) trials, or ``deadline``
    (``time.monotonic()``) passes: take the next trial under the lock, run it with its heartbeat, repeat; wait while
    only other workers' trials are running (one of them may die and be retried here)."""
    while deadline is None or time.monotonic() < deadline:
        with study_lock(engine, name):
            trial, finished = _next_trial(study, trials, space)
        if finished:
            return
        if trial is None:
            time.sleep(min(heartbeat, 2.0))
            continue
        _run_one(study, trial, objective, heartbeat)


def close(study: Any, engine: Any) -> None:
    """Close the connections of ``study``'s storage and of ``engine`` (a server's connections are not left to
    the garbage collector)."""
    rdb = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDBStorage in a cache
    rdb.remove_session()
    rdb.engine.dispose()
    engine.dispose()


__all__ = ["STARTUP", "close", "distributions", "draw_index", "StartSampler", "open_study", "reap", "run_trials"]
