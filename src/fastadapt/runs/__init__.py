"""A run folder and everything that reads or writes one: the folder (:mod:`.folder`) and its lock
(:mod:`.lock`), atomic checkpoints (:mod:`.checkpoint`), :func:`load_run` (:mod:`.load`), and weights
export (:mod:`.export`)."""

from fastadapt.runs.export import export_run
from fastadapt.runs.folder import RunFolder, RunFolderLocked
from fastadapt.runs.load import Run, load_run

__all__ = ["Run", "RunFolder", "RunFolderLocked", "export_run", "load_run"]
