"""``best.pt`` kept consistent with ``checkpoint.pt`` across kills and resumes.

A validation that finds a new best writes ``best.pt`` at once; the checkpoint that records it (its ``best_step``)
comes later. A run killed in between would resume from the older checkpoint with the newer ``best.pt``, a model of
steps it then trains again, maybe with another ``[optim]``. So the ``best.pt`` the last checkpoint names is kept
beside it (:func:`keep_checkpointed_best`) until the next checkpoint (:func:`drop_kept_best`), and a resume puts it
back (:func:`restore_best`). Rank 0 calls these, holding the run's lock."""

from __future__ import annotations

import os
from pathlib import Path

from fastadapt.runs.checkpoint import CheckpointError, atomic_write, load_checkpoint

KEPT_BEST = ".best.pt.kept"  # the best.pt the last checkpoint names, kept while a newer best.pt is not checkpointed


def keep_checkpointed_best(best: Path) -> None:
    """Keep ``best`` (the ``best.pt`` the last checkpoint names) as ``KEPT_BEST`` beside it, a hard link, else an
    atomic copy, before a newer best replaces it."""
    kept = best.parent / KEPT_BEST
    if not best.is_file():
        return
    kept.unlink(missing_ok=True)
    try:
        os.link(best, kept)
    except OSError:  # a file system without hard links
        atomic_write(kept, lambda f: f.write(best.read_bytes()))


def drop_kept_best(best: Path) -> None:
    """A checkpoint now names ``best`` itself: the kept copy is not needed any more."""
    (best.parent / KEPT_BEST).unlink(missing_ok=True)


def restore_best(best: Path, best_step: int | None) -> None:
    """Make ``best`` the model of the checkpoint's ``best_step``: none when it is None (a fresh start, or a run killed
    before its first checkpoint), else the kept copy when ``best`` holds another step's model."""
    kept = best.parent / KEPT_BEST
    if best_step is None:
        best.unlink(missing_ok=True)
    elif step_of(best) != best_step and step_of(kept) == best_step:
        os.replace(kept, best)
    kept.unlink(missing_ok=True)


def step_of(file: Path) -> int | None:
    """The step of the model in ``file`` (``best.pt``), or None when there is none or it cannot be read."""
    if not file.is_file():
        return None
    try:
        return int(load_checkpoint(file, "cpu")["step"])
    except (CheckpointError, KeyError):
        return None


__all__ = ["KEPT_BEST", "drop_kept_best", "keep_checkpointed_best", "restore_best", "step_of"]
