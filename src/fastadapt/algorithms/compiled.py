"""``run.compile``: ``torch.compile`` of the per-task function of MAML, FOMAML and Meta-SGD.

What is compiled, and why not the model's forward alone, is on :func:`maybe_compiled`; :func:`compiling` turns it on
and points inductor's caches at :func:`cache_dir`. Off by default; whether it pays: ``benchmarks/compile_paths.py``
(measured: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_ENV = "TORCHINDUCTOR_CACHE_DIR"


def cache_dir() -> Path:
    """The inductor cache of fastadapt runs: ``$XDG_CACHE_HOME/fastadapt/inductor`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastadapt" / "inductor"


@dataclass
class CompileSession:
    """The compiled functions of one run and its cold-start measurement."""

    cache: Path = field(default_factory=cache_dir)
    compiled: dict[Callable[..., Any], Callable[..., Any]] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)

    def get(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``torch.compile(fn)``, made once per session (static shapes)."""
        if fn not in self.compiled:
            self.compiled[fn] = torch.compile(fn, dynamic=False)
        return self.compiled[fn]

    def step_done(self, seconds: float) -> dict[str, Any] | None:
        """Record one training step's wall ``seconds``; after the second step of the session, the row to log:
        ``compile_seconds`` (first step minus second: compiling the forward and backward graphs), both step times and
        the cache."""
        self.step_seconds.append(seconds)
        if len(self.step_seconds) != 2:
            return None
        first, second = self.step_seconds
        return {
            "compile_seconds": max(first - second, 0.0),
            "first_step_s": first,
            "step_s": second,
            "cache_dir": str(self.cache),
        }


_SESSION: ContextVar[CompileSession | None] = ContextVar("fastadapt_compile_session", default=None)


@contextmanager
def compiling(session: CompileSession) -> Iterator[CompileSession]:
    """Within the block, :func:`maybe_compiled` returns compiled functions and inductor caches in ``session.cache``.

    Nothing happens on import. Compilation is on only inside :func:`compiling` (the training loop
    enters it around each ``meta_loss`` call when ``run.compile = true``), which points inductor's
    caches (``TORCHINDUCTOR_CACHE_DIR``: the FX graph and kernel caches) at :func:`cache_dir` for
    the duration of the block and restores the variable after it; a warm cache shortens the cold start
    of the next run with the same shapes. :class:`CompileSession` measures the cold start: the first
    training step's wall time minus the second's, written to ``metrics.jsonl`` as a ``"compile"`` row.
    """
    session.cache.mkdir(parents=True, exist_ok=True)
    token = _SESSION.set(session)
    old = os.environ.get(_ENV)
    os.environ[_ENV] = str(session.cache)
    try:
        yield session
    finally:
        if old is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = old
        _SESSION.reset(token)


def maybe_compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled inside :func:`compiling`, ``fn`` itself outside it.

    What is compiled is :func:`fastadapt.algorithms.inner.adapt_and_evaluate` (one task's inner loop
    with ``torch.func.grad`` and its query pass) under ``execution="loop"`` (``"auto"`` on image tasks
    on the CPU): dynamo traces the inner gradient as ordinary operations, so second-order MAML needs no
    double backward through a compiled graph. The model's forward alone cannot be compiled here: it
    runs inside ``torch.func.grad`` called from eager code, which dynamo refuses (a graph break, so it
    would silently run eager). Other execution paths and evaluation stay eager.
    """
    session = _SESSION.get()
    return fn if session is None else session.get(fn)
