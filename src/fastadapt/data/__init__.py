"""Task sources: class datasets (Omniglot, Fashion-MNIST, IDX files, image folders, arrays, any map-style
dataset), sinusoids, task streams, the NTM's sequence tasks, and the episode sampler."""

from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.copy import CopyBatch, CopyTask, copy_batch
from fastadapt.data.idx import load_fashion_mnist, load_idx, read_idx
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.originals import load_omniglot_originals
from fastadapt.data.sampler import EpisodeDataset, EpisodeSampler, check_episode_shape, class_groups
from fastadapt.data.sequences import SequenceTasks, copy_sequence, copy_source, recall_sequence, recall_source
from fastadapt.data.sinusoid import SinusoidTasks

__all__ = [
    "ClassDataset",
    "CopyBatch",
    "CopyTask",
    "EpisodeDataset",
    "EpisodeSampler",
    "SPLITS",
    "SequenceTasks",
    "SinusoidTasks",
    "check_episode_shape",
    "class_groups",
    "conform_images",
    "copy_batch",
    "copy_sequence",
    "copy_source",
    "load_fashion_mnist",
    "load_idx",
    "load_omniglot",
    "load_omniglot_originals",
    "read_idx",
    "recall_sequence",
    "recall_source",
]
