"""What a training (or a command) holds in the process for its duration and restores after: SIGINT / SIGTERM
turned into a flag (save and exit), ``run.threads`` and ``run.deterministic``."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from fastadapt.core import cancel


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag, for the duration, and makes it the stop asked of
    :func:`fastadapt.core.cancel.check`: the trainer reads :attr:`signal` after each step, an evaluation checks
    between its batches (and abandons the partial one with :class:`~fastadapt.core.cancel.Cancelled`). A second
    signal stops at once, wherever the work is: :class:`~fastadapt.core.cancel.Interrupted` (a
    :class:`KeyboardInterrupt`). The handlers in place before are restored on exit; outside the main thread signals
    are left alone."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self._held = ExitStack()

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        self._held.enter_context(cancel.cancellable(lambda: self.signal))
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise cancel.Interrupted(signum, f"a second {cancel.signal_name(signum)}: stopped at once")
        self.signal = signum

    def __exit__(self, *exc) -> None:
        self._held.close()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


@contextmanager
def threads(n: int):
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
def deterministic(on: bool):
    """``torch.use_deterministic_algorithms(True)`` for the duration when ``on``, restored after.

    cuBLAS is deterministic only with ``CUBLAS_WORKSPACE_CONFIG`` set: ``:4096:8`` for the run unless the
    environment sets it.
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
