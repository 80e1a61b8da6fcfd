"""Synthetic sequence tasks for memory-augmented networks."""

from fastadapt.tasks.copy import CopyBatch, CopyTask, copy_batch
from fastadapt.tasks.sources import SequenceTasks, copy_sequence, copy_source, recall_sequence, recall_source

__all__ = ["CopyBatch", "CopyTask", "SequenceTasks", "copy_batch", "copy_sequence", "copy_source", "recall_sequence", "recall_source"]
