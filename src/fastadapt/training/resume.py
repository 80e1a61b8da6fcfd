"""Resuming a training from its run folder's checkpoint: which checkpoint is accepted, how a changed ``[optim]`` is
applied to the loaded optimizer and scheduler, and what a diverged training says about the checkpoint to resume."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from fastadapt.config import Config, OptimConfig, config_from_dict
from fastadapt.core.errors import FastAdaptError
from fastadapt.runs.checkpoint import load_checkpoint
from fastadapt.runtime import distributed

REFUSED_ON_RESUME = ("optimizer",)  # [optim] keys a resumed run cannot change (see apply_optim_changes)


class TrainingDiverged(FastAdaptError):
    """The loss became NaN or infinite; the message says which checkpoint of the run, if any, is kept."""


def diverged(objective: float, step: int, saved_at: int | None, checkpoint: Path, cfg: Config) -> TrainingDiverged:
    """The error for a loss of ``objective`` (NaN or infinite) at ``step``: the fix, and the checkpoint to resume from
    (the last one, saved at ``saved_at``), or that there is none yet."""
    if saved_at is not None:
        kept = (
            f"the last good checkpoint, step {saved_at}, is kept in {checkpoint}: rerun with the fix to resume from it"
        )
    else:
        kept = (
            f"no checkpoint of this run was saved yet (the first comes at step {cfg.run.checkpoint_every}); "
            f"check the data and the model too"
        )
    return TrainingDiverged(f"loss is {objective} at step {step}; lower optim.lr or set optim.clip_grad ({kept})")


def load_resume_state(cfg: Config, ckpt_path: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from (read on CPU by rank 0, sent to every rank), or None to start afresh.

    Refuses a checkpoint of another config (every section but ``[run]`` and ``[optim]``) and a changed
    ``optim.optimizer``; the other ``[optim]`` changes are applied by :func:`apply_optim_changes`.
    """
    state, error = None, None
    if distributed.is_main() and ckpt_path.exists():
        try:
            state = load_checkpoint(ckpt_path, "cpu")
            saved = config_from_dict(state["config"])
            if saved.to_dict() | {"run": None, "optim": None} != cfg.to_dict() | {"run": None, "optim": None}:
                raise FastAdaptError(
                    f"{cfg.out_dir} holds a run with another config; pass a new run.name/run.out or the same config "
                    f"to resume"
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


def optim_changes(old: OptimConfig, new: OptimConfig) -> dict[str, list[Any]]:
    """``{"optim.<key>": [old, new]}`` for every ``[optim]`` key that differs."""
    return {
        f"optim.{f.name}": [getattr(old, f.name), getattr(new, f.name)]
        for f in fields(OptimConfig)
        if getattr(old, f.name) != getattr(new, f.name)
    }


def apply_optim_changes(
    cfg: Config,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, list[Any]]:
    """Load the optimizer and scheduler states of ``state``, then apply ``cfg.optim`` where it changed.

    Applied: ``lr``, ``weight_decay``, ``momentum``, ``clip_grad``, ``steps``, ``max_minutes``,
    ``schedule``, ``step_size``, ``gamma``. After the states are loaded, the param groups get the new
    ``weight_decay`` / ``momentum`` (momentum: SGD only), the scheduler the new base rate, step size and
    factor, and the current rate is recomputed from the new schedule at the checkpoint's step (so the next
    step already uses it; the steps before keep the old one). ``load_state_dict`` brings back the saved
    hyperparameters of every param group and the scheduler's base rates: left alone, a changed
    ``optim.lr`` would be silently ignored. Refused (by :func:`load_resume_state`): ``optimizer``, since
    Adam's moments and SGD's momentum buffers do not translate.

    Returns the changes, which the trainer records in ``metrics.jsonl`` as
    ``{"step": s, "split": "event", "event": "config changed", "changes": {"optim.lr": [old, new], ...}}``.
    """
    old = config_from_dict(state["config"]).optim
    new = cfg.optim
    changes = optim_changes(old, new)
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
        set_rates(cfg, optimizer, scheduler)
    return changes


def set_rates(cfg: Config, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
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
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports until a step
