"""A run folder and everything that reads or writes one: the folder and its lock (:mod:`.folder`),
atomic checkpoints (:mod:`.checkpoint`), :func:`load_run`, and weights export (:mod:`.export`)."""

from fastadapt.runs.folder import Run, RunFolder, load_run

__all__ = ["Run", "RunFolder", "load_run"]
