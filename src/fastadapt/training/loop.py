"""One training loop for every algorithm: :func:`train` runs a :class:`Trainer` through its phases
(setup, step, validate, checkpoint, test) with the callbacks of :mod:`fastadapt.training.callbacks`.
The run folder's files are named and written by :mod:`fastadapt.runs.folder`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms import compiled
from fastadapt.config import Config, load_config
from fastadapt.config.build import (
    build_algorithm,
    build_optimizer,
    probe_batch,
    task_sources,
    train_classes,
    train_domains,
)
from fastadapt.core import contract
from fastadapt.core.cancel import Cancelled
from fastadapt.core.errors import FastAdaptError
from fastadapt.core.registry import describe_object
from fastadapt.eval import EvalResult, evaluate
from fastadapt.runs.best import drop_kept_best, keep_checkpointed_best, restore_best
from fastadapt.runs.checkpoint import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from fastadapt.runs.folder import RunFolder, provenance
from fastadapt.runtime import distributed
from fastadapt.runtime.devices import check_device
from fastadapt.runtime.precision import autocast
from fastadapt.training.accumulate import check_task_chunk, meta_gradient
from fastadapt.training.callbacks import Callback, algorithm_callbacks, check_callbacks, run_hooks
from fastadapt.training.environment import StopFlag, deterministic, threads
from fastadapt.training.loggers import Loggers
from fastadapt.training.resolve import resolve_auto
from fastadapt.training.resume import apply_optim_changes, diverged, load_resume_state
from fastadapt.training.testing import run_tests


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    best_val: float | None
    tests: dict[str, EvalResult] = field(default_factory=dict)
    interrupted: bool = False
    train_seconds: float = 0.0
    stopped_by: str | None = None  # the callback hook that stopped the run early (Callback's stopping rule)
    signal: int | None = None  # the signal that interrupted the run (SIGINT 2, SIGTERM 15), when one did


_SHOWN = ("loss", "acc", "mse", "return", "tasks_per_s")  # the progress bar's columns


class Trainer:
    """The training of one run folder, phase by phase; :func:`train` makes one and calls :meth:`fit`.

    ``setup`` builds the tasks, the algorithm, optimizer and scheduler and loads the checkpoint to resume
    from; then each ``step`` samples the step's tasks (a pure function of seed, step and task index, so a
    resumed run sees the same tasks), back-propagates the meta-loss (chunk by chunk with
    ``optim.task_chunk``, under ``run.precision``), clips and steps the optimizer and scheduler; every
    ``eval.val_every`` steps ``validate`` scores the fixed validation episodes and keeps the best model
    (``best.pt``); every ``run.checkpoint_every`` steps, on SIGINT / SIGTERM and at the end, ``checkpoint``
    writes ``checkpoint.pt`` (atomic); at the end ``test`` scores the best model on the fixed test episodes
    and writes ``results.json``.

    Under ``torchrun`` every rank runs the same phases: each takes its block of the meta-batch's tasks,
    gradients are summed over ranks with the weights that make them equal one process's, evaluation
    episodes are split and gathered, and rank 0 alone writes files (:mod:`fastadapt.runtime.distributed`).

    State a callback may read: ``cfg``, ``folder``, ``device``, ``algo``, ``optimizer``, ``scheduler``,
    ``sources``, ``batch`` (this rank's tasks of the last step), ``global_step`` (steps done),
    ``best_val``, ``train_seconds``.
    """

    def __init__(
        self,
        cfg: Config,
        folder: RunFolder,
        device: torch.device,
        *,
        model: nn.Module | None = None,
        tasks: Any = None,
        callbacks: Sequence[Any] = (),
        plan: Callable[[Trainer], Any] | None = None,
    ) -> None:
        self.cfg, self.folder, self.device = cfg, folder, device
        self.model, self.tasks, self.plan = model, tasks, plan
        self.callbacks = check_callbacks(callbacks)
        self.main = distributed.is_main()
        self.global_step, self.best_val, self.train_seconds = 0, None, 0.0
        self.saved_at: int | None = None  # the step of this run's last checkpoint on disk
        self.batch: Any = None
        self.stopped_by: str | None = None
        self._validated_at: int | None = None
        self._best_step: int | None = None  # the step of the best validation so far
        self._saved_best_step: int | None = None  # ... as the last checkpoint on disk records it
        self._window: list[dict[str, float]] = []
        self._t_start = 0.0
        self._bar: Any = None

    # setup --------------------------------------------------------------------------------------------

    def setup(self, resume: bool = True) -> None:
        """Build tasks, algorithm, optimizer and scheduler; resume from ``checkpoint.pt`` when ``resume``."""
        cfg, main = self.cfg, self.main
        torch.manual_seed(cfg.run.seed)
        self.world = world = distributed.world_size()
        if cfg.data.meta_batch < world:
            raise FastAdaptError(
                f"data.meta_batch={cfg.data.meta_batch} is smaller than the {world} processes; use "
                f"data.meta_batch >= {world} or fewer processes"
            )
        self.task_start, self.task_count = distributed.shard(cfg.data.meta_batch)
        self.task_weight = distributed.task_weight(self.task_count, cfg.data.meta_batch)
        self.sources = task_sources(cfg, self.tasks)
        probe = probe_batch(self.sources, cfg)
        classes, domains = train_classes(self.sources), train_domains(self.sources)
        self.algo = build_algorithm(cfg, probe, model=self.model, num_classes=classes, domain_sizes=domains)
        self.algo = self.algo.to(self.device)
        asked, (cfg, resolved) = cfg, resolve_auto(cfg, probe, self.algo, self.task_count, self.device)
        self.cfg = cfg  # "auto" decided; config.json keeps what was asked, its provenance what was decided
        self.sync_bn = contract.encodes_meta_batch(self.algo)
        check_task_chunk(self.algo, cfg.optim.task_chunk, self.task_count)
        self.compile_session = compiled.CompileSession() if cfg.run.compile else None
        distributed.broadcast_parameters(self.algo)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.algo.parameters())
        _ = self.plan(self) if self.plan is not None else None  # the run's plan, before anything is written
        state = load_resume_state(cfg, self.folder.checkpoint_file) if resume else None
        if state is not None:
            load_weights(self.algo, state, self.folder.checkpoint_file)
            changes = apply_optim_changes(cfg, state, self.optimizer, self.scheduler)
            set_rng_state(state["rng"])
            self.global_step, self.best_val = int(state["step"]), state["best_val"]
            self.train_seconds = float(state["train_seconds"])
            self.saved_at = self.global_step
            self._validated_at = state.get("validated_at", self.global_step)  # None: a signal abandoned it
            self._best_step = self._saved_best_step = state.get("best_step")
            if main:
                self.folder.truncate_metrics(self.global_step)  # rows logged after the checkpoint come again
                if "best_step" in state:  # checkpoints written before it was recorded: best.pt as found
                    restore_best(self.folder.best_file, self._best_step)
                if changes:
                    event = {"step": self.global_step, "split": "event", "event": "config changed"}
                    self.folder.append_metrics(event | {"changes": changes})
        elif main:
            self.folder.clear_metrics()
            restore_best(self.folder.best_file, None)  # of a run killed before its first checkpoint, or restarted
        if main:
            given: dict[str, Any] = {"train_classes": classes, **resolved}
            given |= {} if domains is None else {"train_domains": domains}
            named = {"model_given": self.model, "tasks_given": self.tasks}  # the user's objects, by import path
            given |= {k: describe_object(type(v)) for k, v in named.items() if v is not None}
            self.folder.write_config(asked, provenance(probe, **given))
        own = check_callbacks(algorithm_callbacks(self.algo), f"{type(self.algo).__name__}.training_callbacks()")
        self.callbacks = [*own, *self.callbacks]  # the algorithm's first: they may change what the user's see
        self.validating = self.sources.val is not None and bool(cfg.eval.val_every)
        names = cfg.run.loggers if main else ()  # run.loggers, beside metrics.jsonl
        self.loggers = Loggers(names, self.folder.path, self.global_step, cfg.to_dict(), cfg.run.name)

    # step ---------------------------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One outer step: the meta-gradient of the step's tasks, clipped, then the optimizer and scheduler.

        Returns the step's metrics (averaged over ranks) with ``tasks_per_s``; a non-finite loss raises
        :class:`~fastadapt.training.resume.TrainingDiverged` before the optimizer steps.
        """
        cfg, algo = self.cfg, self.algo
        t0 = time.perf_counter()
        algo.train()
        self.batch = self.sources.train.sample_tasks(self.global_step, self.task_start, self.task_count)
        self.batch = self.batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        scale = None if self.world == 1 else self.task_weight
        local, local_metrics = meta_gradient(algo, self.batch, cfg.optim.task_chunk, scale, self._step_context)
        metrics = distributed.reduce_metrics({**local_metrics, "_objective": local}, self.task_weight)
        objective = metrics.pop("_objective")
        if not math.isfinite(objective):
            raise diverged(objective, self.global_step, self.saved_at, self.folder.checkpoint_file, self.cfg)
        distributed.all_reduce_gradients(algo.parameters())
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(algo.parameters(), cfg.optim.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        if self.compile_session is not None:
            compile_row = self.compile_session.step_done(time.perf_counter() - t0)
            if self.main and compile_row is not None:
                self._record({"step": self.global_step, "split": "compile", **compile_row})
        self.train_seconds = time.perf_counter() - self._t_start
        return metrics | {"tasks_per_s": cfg.data.meta_batch / (time.perf_counter() - t0)}

    def _step_context(self) -> ExitStack:
        """Around each ``meta_loss`` call: BatchNorm over the global meta-batch, ``run.precision``, ``run.compile``."""
        stack = ExitStack()
        stack.enter_context(distributed.global_batchnorm(enabled=self.sync_bn))
        stack.enter_context(autocast(self.cfg.run.precision, self.device))
        if self.compile_session is not None:
            stack.enter_context(compiled.compiling(self.compile_session))
        return stack

    def _after_step(self, metrics: dict[str, float]) -> None:
        """Log the step (every ``run.log_every``), validate (every ``eval.val_every``), run the step
        callbacks, checkpoint (every ``run.checkpoint_every``)."""
        cfg, step, last = self.cfg, self.global_step, self.global_step == self.cfg.optim.steps
        self._window.append(metrics)
        if step % cfg.run.log_every == 0 or last:
            if self.main:
                window = self._window
                avg = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                lr = self.scheduler.get_last_lr()[0]
                self._record({"step": step, "split": "train", "lr": lr, "time": self.train_seconds, **avg})
                if self._bar is not None:
                    self._bar.set_postfix({k: f"{v:.3g}" for k, v in avg.items() if k in _SHOWN})
            self._window = []
        if self._bar is not None:
            self._bar.update(1)
        if self.validating and (step % cfg.eval.val_every == 0 or last):
            self.validate()
        self._stop(run_hooks(self.callbacks, "on_step", self, step, dict(metrics)))  # a copy: the log keeps its own
        if step % cfg.run.checkpoint_every == 0:
            self.checkpoint()
        self.train_seconds = time.perf_counter() - self._t_start  # validation and checkpoint count in the budget

    def _stop(self, hook: str | None) -> None:
        if hook is not None and self.stopped_by is None:
            self.stopped_by = hook

    def _budget_spent(self) -> bool:
        return bool(self.cfg.optim.max_minutes and self.train_seconds > 60 * self.cfg.optim.max_minutes)

    def _record(self, row: dict[str, Any]) -> None:
        self.folder.append_metrics(row)
        self.loggers.log(row)

    # validate, checkpoint, test -----------------------------------------------------------------------

    def validate(self) -> EvalResult:
        """Score the fixed validation episodes, log them, keep ``best.pt``, then the validation callbacks."""
        cfg, step = self.cfg, self.global_step
        res = evaluate(
            self.algo,
            self.sources.val.fixed(cfg.eval.val_episodes, cfg.eval.batch),
            cfg.eval.level,
            self.device,
            distributed=True,
            precision=cfg.run.precision,
        )
        score = res.mean if res.metric in ("acc", "return") else -res.mean  # higher is better, lower for mse
        if self.main:
            self._record({"step": step, "split": "val", "time": self.train_seconds, res.metric: res.mean, "ci": res.ci})
        if self.best_val is None or score > self.best_val:
            if self.main and self._best_step is not None and self._best_step == self._saved_best_step:
                keep_checkpointed_best(self.folder.best_file)
            self.best_val, self._best_step = score, step
            if self.main:
                best = {"algorithm": self.algo.state_dict(), "step": step, "config": cfg.to_dict(), "val": res.mean}
                save_checkpoint(self.folder.best_file, best)
        self._validated_at = step
        self._stop(run_hooks(self.callbacks, "on_validation", self, step, res))
        return res

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0, atomic): weights, optimizer, scheduler, RNG, step, best score."""
        if self.main:
            state = {
                "algorithm": self.algo.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.global_step,
                "config": self.cfg.to_dict(),
                "rng": rng_state(),
                "best_val": self.best_val,
                "train_seconds": self.train_seconds,
                "world_size": self.world,
                "validated_at": self._validated_at,
                "best_step": self._best_step,
            }
            save_checkpoint(self.folder.checkpoint_file, state)
            drop_kept_best(self.folder.best_file)
        self.saved_at, self._saved_best_step = self.global_step, self._best_step

    def test(self) -> dict[str, EvalResult]:
        """Evaluate the best checkpoint (else the current model) on every test setting; write the records.

        Every rank calls it: rank 0 reads ``best.pt`` and sends it, the episodes are split across ranks.
        Rank 0 writes ``eval_<setting>.json`` (per-episode scores) and ``results.json`` (training length
        and every test's mean, CI and settings), all of them or none (:meth:`RunFolder.write_test_records`).
        """
        cfg, folder, tests = self.cfg, self.folder, {}
        if cfg.eval.test_episodes:
            best = load_checkpoint(folder.best_file, "cpu") if self.main and folder.best_file.exists() else None
            best = distributed.broadcast_object(best)
            if best is not None:
                load_weights(self.algo, best, folder.best_file)
            tests = run_tests(cfg, self.algo, self.sources, self.device, progress=cfg.run.progress and self.main)
        if self.main:
            summary = {k: {key: v for key, v in r.to_dict().items() if key != "scores"} for k, r in tests.items()}
            folder.write_test_records(
                {key: res.to_dict() for key, res in tests.items()},
                {
                    "steps": self.global_step,
                    "train_seconds": self.train_seconds,
                    "best_val": self.best_val,
                    "tests": summary,
                },
            )
        return tests

    # the run ------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Step until ``optim.steps``, the ``optim.max_minutes`` budget, a signal or a callback's stop; then
        checkpoint, and test unless a signal stopped it.

        A signal stops a validation or a test between two evaluation batches (:mod:`fastadapt.core.cancel`): a
        partial validation is abandoned (no row, no ``best.pt``), the checkpoint of the last completed step is
        written and the resumed run validates that step first; a partial test writes nothing, and the same command
        tests again.
        """
        cfg = self.cfg
        if cfg.run.progress and self.main:
            from tqdm import tqdm

            desc, start = f"train {cfg.algorithm}", self.global_step
            self._bar = tqdm(total=cfg.optim.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
        self._t_start = time.perf_counter() - self.train_seconds
        interrupted = False
        stopped: Cancelled | None = None  # what abandoned a validation or a test, or the signal that stopped a step
        with StopFlag() as signals:
            try:
                if self._validation_abandoned():
                    self.validate()  # the validation a signal abandoned before the checkpoint we resumed from
                # a resumed run whose budget is spent goes straight to testing
                while self.global_step < cfg.optim.steps and not self._budget_spent():
                    self._after_step(self.step())
                    spent = self._budget_spent() or self.stopped_by is not None
                    if distributed.any_rank(signals.signal is not None or spent):
                        interrupted = distributed.any_rank(signals.signal is not None)
                        if interrupted:  # every rank exits with 128 + the signal one of them saw
                            seen = [s for s in distributed.gather_scores([signals.signal]) if s is not None]
                            stopped = Cancelled(signals.signal if signals.signal is not None else seen[0])
                        if distributed.any_rank(self.stopped_by is not None) and self.stopped_by is None:
                            self.stopped_by = "a callback on another rank"
                        if not interrupted and self.validating and self._validated_at != self.global_step:
                            self.validate()  # stopped early: validate the last weights too
                        break
            except Cancelled as stop:  # raised between two validation batches only: the step itself is complete
                interrupted, stopped = True, stop
            finally:
                if self._bar is not None:
                    self._bar.close()
                self.loggers.close()
            self.checkpoint()
            result = TrainResult(
                self.folder.path,
                self.global_step,
                self.best_val,
                interrupted=interrupted,
                train_seconds=self.train_seconds,
                stopped_by=self.stopped_by,
            )
            if not interrupted and (self.global_step >= cfg.optim.steps or cfg.optim.max_minutes or self.stopped_by):
                try:
                    result.tests = self.test()
                except Cancelled as stop:  # between two test batches: no test record is written
                    result.interrupted, stopped = True, stop
            if result.interrupted:  # under torchrun a Cancelled may carry another rank's signal
                result.signal = stopped.signum if stopped is not None else signals.signal
        return result

    def _validation_abandoned(self) -> bool:
        """A validation was due at the step resumed from and a signal abandoned it."""
        step, cfg = self.global_step, self.cfg
        due = self.validating and step > 0 and (step % cfg.eval.val_every == 0 or step == cfg.optim.steps)
        return due and self._validated_at != step


def train(
    config: Config | str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    model: nn.Module | None = None,
    tasks: Any = None,
    resume: bool = True,
    step_hook: Callable[[int], None] | None = None,
    callbacks: Sequence[Callback | Any] = (),
    plan: Callable[[Trainer], Any] | None = None,
) -> TrainResult:
    """Train in ``config.out_dir``; resume from its ``checkpoint.pt`` when there is one.

    Args:
        config: a :class:`Config`, or a preset name / TOML path (then ``overrides`` apply).
        model: the user's ``nn.Module`` instead of the config's ``[model]`` (it is trained in place).
        tasks: the user's task sources instead of ``data.dataset``: one source (training only), or
            ``{"train": ..., "val": ..., "test": ...}``; a :class:`~fastadapt.data.ClassDataset` is
            drawn from with the config's ways, shots and queries (:func:`fastadapt.config.build.user_task_sources`).
        resume: continue from the folder's checkpoint (False: start over).
        step_hook: called with the step number after every step (its return value is ignored).
        callbacks: :class:`~fastadapt.training.callbacks.Callback` objects, called after the algorithm's own
            (``algo.training_callbacks()``); a hook returning True stops the run early (see ``Callback``).
        plan: called with the built Trainer before anything is written; it may refuse (``plan_check`` of commands).

    Returns the steps trained, the best validation score and every test setting's result; writes
    checkpoints, metrics, results (:mod:`fastadapt.runs.folder`), holding the folder's lock (rank 0 only
    under ``torchrun``) from before it reads the checkpoint until it has written its results: another
    live training of the same folder is a :class:`~fastadapt.runs.folder.RunFolderLocked` error.
    Resuming applies a changed ``[optim]`` except ``optim.optimizer``
    (:func:`fastadapt.training.resume.apply_optim_changes`). Under ``torchrun`` (``WORLD_SIZE`` > 1) this
    joins the process group for the run and leaves it after.
    """
    cfg = load_config(str(config), overrides) if isinstance(config, (str, Path)) else config
    if overrides and not isinstance(config, (str, Path)):
        raise FastAdaptError("overrides apply to a preset name or TOML path; pass a Config with its values set instead")
    if step_hook is not None:
        callbacks = [*callbacks, Callback(on_step=lambda trainer, step, metrics: step_hook(step) and None)]
    check_device(cfg.run.device)
    device = distributed.local_device(cfg.run.device)
    hint = f"the last checkpoint in {cfg.out_dir} is kept: rerun the same command to resume"
    folder = RunFolder(cfg.out_dir)
    with ExitStack() as held:
        held.enter_context(distributed.process_group(device, cfg.run.dist_timeout_s, hint))
        held.enter_context(threads(cfg.run.threads))
        held.enter_context(deterministic(cfg.run.deterministic))
        trainer = Trainer(cfg, folder, device, model=model, tasks=tasks, callbacks=callbacks, plan=plan)
        error = None
        if distributed.is_main():  # rank 0 holds the lock; the other ranks wait for it to have it
            try:
                held.enter_context(folder.lock())
            except FastAdaptError as e:
                error = e
        error = distributed.broadcast_object(error)
        if error is not None:
            raise error
        trainer.setup(resume)
        return trainer.fit()
