"""Cooperative cancellation: a stop asked for (SIGINT / SIGTERM while a command or a training runs) reaches the long
loops below the layer that owns the signals, without any of them handling signals."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Interrupted(KeyboardInterrupt):
    """A signal stopped the work: ``signum`` says which (the command exits with ``128 + signum``: 130 for SIGINT,
    143 for SIGTERM). Raised as such by a second signal, at once and wherever the work was."""

    def __init__(self, signum: int, what: str = "") -> None:
        super().__init__(what or signal_name(signum))
        self.signum = signum


class Cancelled(Interrupted):
    """A stop was asked for and the work in progress was abandoned at a safe point (between two units of work,
    by :func:`check`), so nothing it would have written is written. A :class:`KeyboardInterrupt`, so
    ``except Exception`` never swallows it."""


_asked: ContextVar[Callable[[], int | None] | None] = ContextVar("fastadapt_stop_asked", default=None)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15; ``"signal 42"`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextmanager
def cancellable(asked: Callable[[], int | None]) -> Iterator[None]:
    """For the duration, :func:`check` raises :class:`Cancelled` once ``asked()`` returns a signal number.

    The owner of the signals (``fastadapt.training.environment.StopFlag``) enters it; the loops that may take long
    (evaluation batches) call :func:`check`. Outside it :func:`check` does nothing, so library code keeps running
    as it would without a command around it.
    """
    token = _asked.set(asked)
    try:
        yield
    finally:
        _asked.reset(token)


@contextmanager
def terminate_raises() -> Iterator[None]:
    """For the duration, SIGTERM raises :class:`Interrupted` where the work is, as SIGINT raises
    :class:`KeyboardInterrupt`, so that ``finally`` blocks run (temporary files removed) and the command exits 143
    instead of dying unannounced. Only where SIGTERM still has its default action, in the main thread; restored
    after. The ``fastadapt`` command enters it (a library never does): the phases that keep state
    (:class:`~fastadapt.training.environment.StopFlag`) turn the signal into a flag instead, for their duration."""
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            yield
            return
        old = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def requested() -> int | None:
    """The signal that asked to stop, or None (also when nothing is :func:`cancellable`)."""
    asked = _asked.get()
    return None if asked is None else asked()


def check() -> None:
    """Raise :class:`Cancelled` when a stop was asked for; call it between units of work (never inside one)."""
    signum = requested()
    if signum is not None:
        raise Cancelled(signum)
