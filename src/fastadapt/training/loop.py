"""One training loop for every algorithm.

    for step: batch = tasks of step -> out = algo.meta_loss(batch) -> out.loss.backward()
              -> clip -> optimizer.step() -> scheduler.step()
    (``optim.task_chunk``: meta_loss and backward chunk by chunk, :mod:`fastadapt.training.accumulate`;
    ``run.precision``: autocast around meta_loss and evaluation, :mod:`fastadapt.runtime.precision`)
    every val_every steps: accuracy on fixed validation episodes; the best model is kept (best.pt)
    every checkpoint_every steps, on SIGINT/SIGTERM and at the end: checkpoint.pt (atomic)
    at the end: the best model on the fixed test episodes -> results.json

The tasks of a step are a pure function of (seed, step, task index), so a resumed run sees the
same tasks as an uninterrupted one.

Under ``torchrun`` the same loop runs on every rank: each takes its block of the meta-batch's tasks,
gradients are summed over ranks with the weights that make them equal one process's, evaluation
episodes are split and gathered, and rank 0 alone writes files (see :mod:`fastadapt.runtime.distributed`).

The run folder's files are named and written by :mod:`fastadapt.runs.folder`. A training holds the
folder's lock (rank 0 only under ``torchrun``) from before it reads the checkpoint until it has written
its results, also when it fails or is stopped by a signal; a second training of the same folder refuses.

Resuming with a changed ``[optim]`` (every other section but ``[run]`` must be equal):

* applied: ``lr``, ``weight_decay``, ``momentum``, ``clip_grad``, ``steps``, ``max_minutes``,
  ``schedule``, ``step_size``, ``gamma``. After the optimizer and scheduler states are loaded, the
  param groups get the new ``weight_decay`` / ``momentum`` (momentum: SGD only, as always), the
  scheduler the new base rate, step size and factor, and the current rate is recomputed from the new
  schedule at the checkpoint's step (so the next step already uses it; the steps before keep the old
  one). The change is recorded in ``metrics.jsonl`` as
  ``{"step": s, "split": "event", "event": "config changed", "changes": {"optim.lr": [old, new], ...}}``.
* refused: ``optimizer`` (Adam's moments and SGD's momentum buffers do not translate): one line
  saying to keep it or start a new run.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms import compiled
from fastadapt.config import Config, OptimConfig, config_from_dict, load_config
from fastadapt.config.build import (
    TaskSources,
    build_algorithm,
    build_optimizer,
    probe_batch,
    task_sources,
    train_classes,
)
from fastadapt.core import contract
from fastadapt.core.errors import FastAdaptError
from fastadapt.core.registry import describe_object
from fastadapt.eval import EvalResult, evaluate
from fastadapt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fastadapt.runs.folder import RunFolder, load_weights, provenance
from fastadapt.runtime import distributed
from fastadapt.runtime.devices import check_device
from fastadapt.runtime.precision import autocast
from fastadapt.training.accumulate import check_task_chunk, meta_gradient
from fastadapt.training.loggers import Loggers
from fastadapt.training.testing import run_tests


class TrainingDiverged(FastAdaptError):
    """The loss became NaN or infinite; the message says which checkpoint of the run, if any, is kept."""


REFUSED_ON_RESUME = ("optimizer",)  # [optim] keys a resumed run cannot change (see the module docstring)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    best_val: float | None
    tests: dict[str, EvalResult] = field(default_factory=dict)
    interrupted: bool = False
    train_seconds: float = 0.0


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextmanager
def _threads(n: int):
    """``torch.set_num_threads(n)`` for the duration (0: leave torch's setting), restored after."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _deterministic(on: bool):
    """``torch.use_deterministic_algorithms(True)`` for the duration when ``on`` (``run.deterministic``), restored after.

    cuBLAS is deterministic only with ``CUBLAS_WORKSPACE_CONFIG`` set: ``:4096:8`` for the run unless the environment sets it.
    """
    if not on:
        yield
        return
    old, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    had_workspace = "CUBLAS_WORKSPACE_CONFIG" in os.environ
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=warn_only)
        if not had_workspace:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def train(
    config: Config | str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    model: nn.Module | None = None,
    tasks: Any = None,
    resume: bool = True,
    step_hook: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train in ``config.out_dir``; resume from its ``checkpoint.pt`` when there is one.

    Args:
        config: a :class:`Config`, or a preset name / TOML path (then ``overrides`` apply).
        model: the user's ``nn.Module`` instead of the config's ``[model]`` (it is trained in place).
        tasks: the user's task sources instead of ``data.dataset``: one source (training only), or
            ``{"train": ..., "val": ..., "test": ...}``; a :class:`~fastadapt.data.ClassDataset` is
            drawn from with the config's ways, shots and queries (see :func:`fastadapt.config.build.user_task_sources`).
        resume: continue from the folder's checkpoint (False: start over).
        step_hook: called with the step number after every step.

    Returns the steps trained, the best validation score and every test setting's result; writes
    checkpoints, metrics, results (:mod:`fastadapt.runs.folder`), holding the folder's lock: another
    live training of the same folder is a :class:`~fastadapt.runs.folder.RunFolderLocked` error.
    Resuming applies a changed ``[optim]`` except ``optim.optimizer`` (module docstring). Under
    ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group for the run and leaves it after.
    """
    cfg = load_config(str(config), overrides) if isinstance(config, (str, Path)) else config
    if overrides and not isinstance(config, (str, Path)):
        raise FastAdaptError("overrides apply to a preset name or TOML path; pass a Config with its values set instead")
    check_device(cfg.run.device)
    device = distributed.local_device(cfg.run.device)
    hint = f"the last checkpoint in {cfg.out_dir} is kept: rerun the same command to resume"
    with (
        distributed.process_group(device, cfg.run.dist_timeout_s, hint),
        _threads(cfg.run.threads),
        _deterministic(cfg.run.deterministic),
    ):
        return _train(cfg, resume, step_hook, device, model, tasks)


def _load_resume_state(cfg: Config, ckpt_path: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from (read on CPU by rank 0, sent to every rank), or None to start afresh.

    Refuses a checkpoint of another config (every section but ``[run]`` and ``[optim]``) and a changed
    ``optim.optimizer``; the other ``[optim]`` changes are applied by :func:`_apply_optim_changes`.
    """
    state, error = None, None
    if distributed.is_main() and ckpt_path.exists():
        try:
            state = load_checkpoint(ckpt_path, "cpu")
            saved = config_from_dict(state["config"])
            if saved.to_dict() | {"run": None, "optim": None} != cfg.to_dict() | {"run": None, "optim": None}:
                raise FastAdaptError(
                    f"{cfg.out_dir} holds a run with another config; pass a new run.name/run.out or the same config to resume"
                )
            for key in REFUSED_ON_RESUME:
                was, now = getattr(saved.optim, key), getattr(cfg.optim, key)
                if was != now:
                    raise FastAdaptError(
                        f"optim.{key} changed from {was!r} to {now!r} since the checkpoint in {cfg.out_dir}, and the "
                        f"optimizer's state cannot carry over; keep optim.{key}={was!r} to resume, or start a new run "
                        f"(another run.out, or --restart)"
                    )
        except FastAdaptError as e:
            state, error = None, e
    state, error = distributed.broadcast_object((state, error))
    if error is not None:
        raise error
    return state


def _optim_changes(old: OptimConfig, new: OptimConfig) -> dict[str, list[Any]]:
    """``{"optim.<key>": [old, new]}`` for every ``[optim]`` key that differs."""
    return {
        f"optim.{f.name}": [getattr(old, f.name), getattr(new, f.name)]
        for f in fields(OptimConfig)
        if getattr(old, f.name) != getattr(new, f.name)
    }


def _apply_optim_changes(
    cfg: Config,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, list[Any]]:
    """Load the optimizer and scheduler states of ``state``, then apply ``cfg.optim`` where it changed; returns the changes.

    ``load_state_dict`` brings back the saved hyperparameters of every param group and the scheduler's
    base rates (and a step schedule's step size and factor): left alone, a changed ``optim.lr`` would
    be silently ignored.
    """
    old = config_from_dict(state["config"]).optim
    new = cfg.optim
    changes = _optim_changes(old, new)
    optimizer.load_state_dict(state["optimizer"])
    if old.schedule == new.schedule:
        scheduler.load_state_dict(state["scheduler"])
    else:  # another scheduler class: only the step count carries over
        scheduler.last_epoch = int(state["scheduler"]["last_epoch"])
    for group in optimizer.param_groups:
        if "optim.weight_decay" in changes:
            group["weight_decay"] = new.weight_decay
        if "optim.momentum" in changes and "momentum" in group:
            group["momentum"] = new.momentum
    rate_keys = {"optim.lr", "optim.schedule", "optim.step_size", "optim.gamma"}
    if new.schedule in ("cosine", "linear"):
        rate_keys.add("optim.steps")  # these schedules run over optim.steps
    if rate_keys & set(changes):
        _set_rates(cfg, optimizer, scheduler)
    return changes


def _set_rates(cfg: Config, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Every param group's rate as ``cfg``'s schedule gives it at the scheduler's step (closed form)."""
    s = scheduler.last_epoch
    scheduler.base_lrs = [cfg.optim.lr for _ in optimizer.param_groups]
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        scheduler.step_size, scheduler.gamma = cfg.optim.step_size, cfg.optim.gamma
        factors = [cfg.optim.gamma ** (s // cfg.optim.step_size) for _ in optimizer.param_groups]
    elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        factors = [f(s) for f in scheduler.lr_lambdas]
    else:  # build_optimizer makes only these two
        raise TypeError(f"cannot change the rate of a {type(scheduler).__name__} on resume")
    for group, factor in zip(optimizer.param_groups, factors):
        group["initial_lr"] = cfg.optim.lr
        group["lr"] = cfg.optim.lr * factor
    scheduler._last_lr = [
        group["lr"] for group in optimizer.param_groups
    ]  # what get_last_lr() reports until the next step


def _train(
    cfg: Config,
    resume: bool,
    step_hook: Callable[[int], None] | None,
    device: torch.device,
    model: nn.Module | None,
    tasks: Any,
) -> TrainResult:
    """Hold the run folder's lock (rank 0) for the whole training; the other ranks wait for rank 0 to have it."""
    folder = RunFolder(cfg.out_dir)
    with ExitStack() as held:
        error = None
        if distributed.is_main():
            try:
                held.enter_context(folder.lock())
            except FastAdaptError as e:
                error = e
        error = distributed.broadcast_object(error)
        if error is not None:
            raise error
        return _train_locked(cfg, folder, resume, step_hook, device, model, tasks)


def _train_locked(
    cfg: Config,
    folder: RunFolder,
    resume: bool,
    step_hook: Callable[[int], None] | None,
    device: torch.device,
    model: nn.Module | None,
    tasks: Any,
) -> TrainResult:
    out = folder.path
    main = distributed.is_main()
    torch.manual_seed(cfg.run.seed)
    world = distributed.world_size()
    if cfg.data.meta_batch < world:
        raise FastAdaptError(
            f"data.meta_batch={cfg.data.meta_batch} is smaller than the {world} processes; use data.meta_batch >= {world} "
            f"or fewer processes"
        )
    task_start, task_count = distributed.shard(cfg.data.meta_batch)
    weight = distributed.task_weight(task_count, cfg.data.meta_batch)

    sources = task_sources(cfg, tasks)
    probe = probe_batch(sources, cfg)
    classes = train_classes(sources)
    algo = build_algorithm(cfg, probe, model=model, num_classes=classes).to(device)
    sync_bn = contract.encodes_meta_batch(algo)
    check_task_chunk(algo, cfg.optim.task_chunk, task_count)

    compile_session = compiled.CompileSession() if cfg.run.compile else None

    def step_context() -> ExitStack:
        """Around each ``meta_loss`` call: BatchNorm over the global meta-batch (``encodes_meta_batch``), ``run.precision``, ``run.compile``."""
        stack = ExitStack()
        stack.enter_context(distributed.global_batchnorm(enabled=sync_bn))
        stack.enter_context(autocast(cfg.run.precision, device))
        if compile_session is not None:
            stack.enter_context(compiled.compiling(compile_session))
        return stack

    distributed.broadcast_parameters(algo)
    optimizer, scheduler = build_optimizer(cfg, algo.parameters())
    start, best_val, train_seconds = 0, None, 0.0
    ckpt_path, best_path = folder.checkpoint_file, folder.best_file

    state = _load_resume_state(cfg, ckpt_path) if resume else None
    saved_at: int | None = None  # the step of this run's last checkpoint on disk
    if state is not None:
        load_weights(algo, state, ckpt_path)
        changes = _apply_optim_changes(cfg, state, optimizer, scheduler)
        set_rng_state(state["rng"])
        start, best_val, train_seconds = int(state["step"]), state["best_val"], float(state["train_seconds"])
        saved_at = start
        if main:
            folder.truncate_metrics(start)  # rows logged after the checkpoint are logged again below
            if changes:
                folder.append_metrics({"step": start, "split": "event", "event": "config changed", "changes": changes})
    elif main:
        folder.clear_metrics()
    if main:
        given: dict[str, Any] = {"train_classes": classes}
        if model is not None:
            given["model_given"] = describe_object(type(model))
        if tasks is not None:
            given["tasks_given"] = describe_object(type(tasks))
        folder.write_config(cfg, provenance(probe, **given))
    loggers = Loggers(
        cfg.run.loggers if main else (), out, start, cfg.to_dict(), cfg.run.name
    )  # run.loggers, beside metrics.jsonl

    def record(row: dict[str, Any]) -> None:
        folder.append_metrics(row)
        loggers.log(row)

    def checkpoint(step: int) -> None:
        nonlocal saved_at
        if main:
            save_checkpoint(
                ckpt_path,
                {
                    "algorithm": algo.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "config": cfg.to_dict(),
                    "rng": rng_state(),
                    "best_val": best_val,
                    "train_seconds": train_seconds,
                    "world_size": world,
                },
            )
        saved_at = step

    def diverged(objective: float, step: int) -> TrainingDiverged:
        if saved_at is not None:
            kept = f"the last good checkpoint, step {saved_at}, is kept in {ckpt_path}: rerun with the fix to resume from it"
        else:
            kept = (
                f"no checkpoint of this run was saved yet (the first comes at step {cfg.run.checkpoint_every}); "
                f"check the data and the model too"
            )
        return TrainingDiverged(f"loss is {objective} at step {step}; lower optim.lr or set optim.clip_grad ({kept})")

    bar = None
    if cfg.run.progress and main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.optim.steps, initial=start, desc=f"train {cfg.algorithm}", unit="step", dynamic_ncols=True)
    step, interrupted = start, False
    t_start = time.perf_counter() - train_seconds

    def budget_spent() -> bool:
        return bool(cfg.optim.max_minutes and train_seconds > 60 * cfg.optim.max_minutes)

    validating = sources.val is not None and bool(cfg.eval.val_every)

    def validate(step: int, best_val: float | None) -> float | None:
        """Score the fixed validation episodes, log them, keep ``best.pt``; returns the new best score."""
        res = evaluate(
            algo,
            sources.val.fixed(cfg.eval.val_episodes, cfg.eval.batch),
            cfg.eval.level,
            device,
            distributed=True,
            precision=cfg.run.precision,
        )
        score = res.mean if res.metric in ("acc", "return") else -res.mean  # higher is better, lower for mse
        if main:
            record({"step": step, "split": "val", "time": train_seconds, res.metric: res.mean, "ci": res.ci})
        if best_val is None or score > best_val:
            best_val = score
            if main:
                save_checkpoint(
                    best_path, {"algorithm": algo.state_dict(), "step": step, "config": cfg.to_dict(), "val": res.mean}
                )
        return best_val

    window: list[dict[str, float]] = []
    with _StopFlag() as stop:
        try:
            while (
                step < cfg.optim.steps and not budget_spent()
            ):  # a resumed run whose budget is spent goes straight to testing
                t0 = time.perf_counter()
                algo.train()
                batch = sources.train.sample_tasks(step, task_start, task_count).to(device)
                optimizer.zero_grad(set_to_none=True)
                local, local_metrics = meta_gradient(
                    algo, batch, cfg.optim.task_chunk, None if world == 1 else weight, step_context
                )
                metrics = distributed.reduce_metrics({**local_metrics, "_objective": local}, weight)
                objective = metrics.pop("_objective")
                if not math.isfinite(objective):
                    raise diverged(objective, step)
                distributed.all_reduce_gradients(algo.parameters())
                if cfg.optim.clip_grad:
                    torch.nn.utils.clip_grad_norm_(algo.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                scheduler.step()
                step += 1
                compile_row = (
                    compile_session.step_done(time.perf_counter() - t0) if compile_session is not None else None
                )
                if main and compile_row is not None:
                    record({"step": step, "split": "compile", **compile_row})
                train_seconds = time.perf_counter() - t_start
                window.append(metrics | {"tasks_per_s": cfg.data.meta_batch / (time.perf_counter() - t0)})
                if main and (step % cfg.run.log_every == 0 or step == cfg.optim.steps):
                    avg = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                    record(
                        {"step": step, "split": "train", "lr": scheduler.get_last_lr()[0], "time": train_seconds, **avg}
                    )
                    if bar is not None:
                        bar.set_postfix(
                            {
                                k: f"{v:.3g}"
                                for k, v in avg.items()
                                if k in ("loss", "acc", "mse", "return", "tasks_per_s")
                            }
                        )
                    window = []
                if bar is not None:
                    bar.update(1)
                if validating and (step % cfg.eval.val_every == 0 or step == cfg.optim.steps):
                    best_val = validate(step, best_val)
                if step_hook is not None:
                    step_hook(step)
                if step % cfg.run.checkpoint_every == 0:
                    checkpoint(step)
                train_seconds = time.perf_counter() - t_start  # the validation and checkpoint above count in the budget
                if distributed.any_rank(stop.signal is not None or budget_spent()):
                    interrupted = distributed.any_rank(stop.signal is not None)
                    if (
                        not interrupted and validating and step % cfg.eval.val_every
                    ):  # budget spent: validate the last weights too
                        best_val = validate(step, best_val)
                    break
        finally:
            if bar is not None:
                bar.close()
            loggers.close()
        checkpoint(step)
    result_obj = TrainResult(out, step, best_val, interrupted=interrupted, train_seconds=train_seconds)
    if interrupted:
        return result_obj
    if step >= cfg.optim.steps or cfg.optim.max_minutes:
        result_obj.tests = test(cfg, algo, sources, device)
        if main:
            write_results(folder, step, train_seconds, best_val, result_obj.tests)
    return result_obj


def write_results(
    folder: RunFolder, steps: int, train_seconds: float, best_val: float | None, tests: dict[str, EvalResult]
) -> Path:
    """The training's test files (``eval_<setting>.json``, per-episode scores) and ``results.json``
    (training length and every test's mean, CI and settings), written once every setting is scored:
    all of them or none (:meth:`RunFolder.write_test_records`)."""
    return folder.write_test_records(
        {key: res.to_dict() for key, res in tests.items()},
        {
            "steps": steps,
            "train_seconds": train_seconds,
            "best_val": best_val,
            "tests": {k: {key: v for key, v in r.to_dict().items() if key != "scores"} for k, r in tests.items()},
        },
    )


def test(
    cfg: Config, algo: torch.nn.Module, sources: TaskSources, device: torch.device | str = "cpu"
) -> dict[str, EvalResult]:
    """Evaluate the best checkpoint (else the current model) on every test setting.

    Under a process group every rank calls it: rank 0 reads best.pt and sends it, the episodes are
    split across ranks.
    """
    if not cfg.eval.test_episodes:
        return {}
    folder = RunFolder(cfg.out_dir)
    main = distributed.is_main()
    best = load_checkpoint(folder.best_file, "cpu") if main and folder.best_file.exists() else None
    best = distributed.broadcast_object(best)
    if best is not None:
        load_weights(algo, best, folder.best_file)
    return run_tests(cfg, algo, sources, device, progress=cfg.run.progress and main)
