"""Task sources: class datasets (Omniglot, Fashion-MNIST, IDX files, image folders, arrays, any map-style dataset), sinusoids, and the episode sampler."""

from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.idx import load_fashion_mnist, load_idx, read_idx
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.originals import load_omniglot_originals
from fastadapt.data.sampler import EpisodeDataset, EpisodeSampler, check_episode_shape, class_groups
from fastadapt.data.sinusoid import SinusoidTasks

__all__ = [
    "SPLITS",
    "ClassDataset",
    "EpisodeDataset",
    "EpisodeSampler",
    "SinusoidTasks",
    "check_episode_shape",
    "class_groups",
    "conform_images",
    "load_fashion_mnist",
    "load_idx",
    "load_omniglot",
    "load_omniglot_originals",
    "read_idx",
]
