"""Synthetic sequence tasks for memory-augmented networks."""

from fastadapt.tasks.copy import CopyBatch, CopyTask, copy_batch

__all__ = ["CopyBatch", "CopyTask", "copy_batch"]
