"""Callbacks: code a user or an algorithm runs inside the training loop, after each outer step and after
each validation, with the :class:`~fastadapt.training.loop.Trainer` in hand; a hook may stop the run."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastadapt.core.errors import FastAdaptError

if TYPE_CHECKING:
    from fastadapt.eval import EvalResult
    from fastadapt.training.loop import Trainer

StepHook = Callable[["Trainer", int, dict[str, float]], "bool | None"]
ValidationHook = Callable[["Trainer", int, "EvalResult"], "bool | None"]
HOOKS = ("on_step", "on_validation")


@dataclass(frozen=True)
class Callback:
    """Optional hooks the trainer calls; any object with ``on_step`` / ``on_validation`` attributes does too.

    ``on_step(trainer, step, metrics)``: after every outer step, once that step's metrics row is logged and
    its validation (if any) is done, before its checkpoint. ``step`` counts the steps done (1 after the
    first); ``metrics`` are that step's own values (averaged over ranks; ``loss``, ``acc`` or ``mse``, ...,
    ``tasks_per_s``), not the logged average over ``run.log_every`` steps. A hook that changes the weights
    (say, more PPO epochs on ``trainer.batch``) has its change in that step's checkpoint.

    ``on_validation(trainer, step, result)``: after each validation, with its
    :class:`~fastadapt.eval.EvalResult`, once the row is logged and ``best.pt`` kept.

    Stopping: a hook that returns ``True`` asks the trainer to stop (any other return value, None
    included, does not). The step finishes (every callback still sees it, then its checkpoint), and the
    run ends as a spent ``optim.max_minutes`` ends it: the last weights are validated if that step was
    not a validation step, ``checkpoint.pt`` is written, the test runs and ``results.json`` is written;
    :attr:`TrainResult.stopped_by` names the hook. Training again in the same folder resumes from that
    checkpoint. Under ``torchrun`` every rank runs the callbacks; a stop on any rank stops them all.
    """

    on_step: StepHook | None = None
    on_validation: ValidationHook | None = None


def algorithm_callbacks(algo: Any) -> list[Any]:
    """An algorithm's own callbacks: what its optional ``training_callbacks()`` method returns, else none."""
    method = getattr(algo, "training_callbacks", None)
    return list(method()) if callable(method) else []


def check_callbacks(callbacks: Iterable[Any], where: str = "callbacks") -> list[Any]:
    """The callbacks as a list; a one-line error for one that has no hook or a hook that is not callable."""
    checked = list(callbacks)
    for cb in checked:
        hooks = {name: getattr(cb, name, None) for name in HOOKS}
        if all(h is None for h in hooks.values()) or any(h is not None and not callable(h) for h in hooks.values()):
            raise FastAdaptError(
                f"{where}: {cb!r} is not a callback; pass fastadapt.training.Callback(on_step=..., on_validation=...) "
                f"or an object with callable on_step / on_validation attributes"
            )
    return checked


def hook_name(cb: Any, hook: str) -> str:
    """How :attr:`TrainResult.stopped_by` names a callback's hook: its function's qualified name."""
    fn = getattr(cb, hook)
    return f"{getattr(fn, '__qualname__', type(fn).__name__)} ({hook})"


def run_hooks(callbacks: list[Any], hook: str, trainer: Trainer, step: int, value: Any) -> str | None:
    """Call every callback's ``hook`` in order; the name of the first that returned True, else None."""
    stopped = None
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None and fn(trainer, step, value) is True and stopped is None:
            stopped = hook_name(cb, hook)
    return stopped


__all__ = ["Callback", "StepHook", "ValidationHook", "algorithm_callbacks", "check_callbacks", "run_hooks"]
