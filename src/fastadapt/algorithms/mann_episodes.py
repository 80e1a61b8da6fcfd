"""Episodes as sequences for the memory-augmented network (:mod:`fastadapt.algorithms.mann`), and the
nested state of its core as a flat dict (what its predictor keeps).

Episodes: :func:`episode_sequence`. Accuracy by instance (the paper's table 1): :func:`instance_numbers`,
:func:`instance_accuracy`. The paper's string labels: :class:`StringLabels`; per-class shifts of training episodes:
:func:`translate_classes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.core.episodes import TaskBatch

STRING_LENGTH, STRING_ALPHABET = 5, 5  # the paper's string labels: 5 characters, each one of 5 letters (3125 strings)


@dataclass(frozen=True)
class LabelSequence:
    """Episodes as sequences; ``T`` tasks of ``L`` steps, ``C`` classes.

    x: ``[T, L, *x_shape]`` inputs in presentation order; labels: ``[T, L]`` (int64, after the per-episode
    relabelling); prev_onehot: ``[T, L, C]`` the encoding of ``labels[:, t-1]`` (one-hot, or with string
    labels 5 concatenated one-hots: ``C = 25``; zeros at t = 0); instance: ``[T, L]`` 1-based presentation
    number of ``labels[:, t]`` within its episode; codes: ``[T, N, 5]`` each class's string (string labels only).
    """

    x: Tensor
    labels: Tensor
    prev_onehot: Tensor
    instance: Tensor
    codes: Tensor | None = None


class StringLabels:
    """The paper's string labels: ``N`` distinct strings of :data:`STRING_LENGTH` characters from
    :data:`STRING_ALPHABET` letters per episode, one-hot per character.

    ``codes(T, N, generator)`` draws ``[T, N, 5]`` (distinct within each episode); ``encode(labels, codes)``
    gives ``[T, L, 25]``; ``log_likelihood(outputs [..., 25], codes)`` gives each class's string
    log-likelihood ``sum_j log softmax(outputs_j)[code_j]`` as ``[T, L, N]``.
    """

    width = STRING_LENGTH * STRING_ALPHABET

    @staticmethod
    def codes(tasks: int, classes: int, generator: torch.Generator | None = None) -> Tensor:
        ids = torch.rand(tasks, STRING_ALPHABET**STRING_LENGTH, generator=generator).argsort(dim=1)[
            :, :classes
        ]  # distinct strings
        digits = [(ids // STRING_ALPHABET**j) % STRING_ALPHABET for j in range(STRING_LENGTH)]
        return torch.stack(digits, dim=-1)

    @staticmethod
    def encode(labels: Tensor, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        chars = codes.gather(1, labels.unsqueeze(-1).expand(*labels.shape, STRING_LENGTH))  # [T, L, 5]
        return F.one_hot(chars, STRING_ALPHABET).to(dtype).flatten(-2)

    @staticmethod
    def log_likelihood(outputs: Tensor, codes: Tensor) -> Tensor:
        logp = F.log_softmax(outputs.unflatten(-1, (STRING_LENGTH, STRING_ALPHABET)), dim=-1)  # [T, L, 5, 5]
        idx = codes.unsqueeze(1).expand(-1, logp.shape[1], -1, -1)  # [T, L, N, 5]
        return (
            logp.unsqueeze(2).expand(-1, -1, codes.shape[1], -1, -1).gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        )


def translate_classes(x: Tensor, labels: Tensor, shifts: Tensor) -> Tensor:
    """Shift every image of class ``c`` of task ``t`` by ``shifts[t, c] = (dy, dx)`` pixels, zeros filling in.

    ``x [T, M, C, H, W]``, ``labels [T, M]`` (0..N-1), ``shifts [T, N, 2]`` (int) -> ``[T, M, C, H, W]``;
    ``dy > 0`` moves the image down, ``dx > 0`` to the right.
    """
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    per_image = shifts.gather(1, labels.unsqueeze(-1).expand(*labels.shape, 2))  # [T, M, 2]
    rows = (torch.arange(h) + pad).view(1, 1, h) - per_image[..., :1]  # [T, M, H]: source row of each output row
    cols = (torch.arange(w) + pad).view(1, 1, w) - per_image[..., 1:]
    out = padded.gather(-2, rows[:, :, None, :, None].expand(*x.shape[:3], h, padded.shape[-1]))
    return out.gather(-1, cols[:, :, None, None, :].expand(*x.shape[:3], h, w))


def instance_numbers(labels: Tensor, num_classes: int) -> Tensor:
    """``[T, L]`` -> ``[T, L]``: at each step, how many times its label has appeared so far, this step included."""
    onehot = F.one_hot(labels, num_classes)
    return onehot.cumsum(dim=1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def previous_onehot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[T, L]`` -> ``[T, L, C]``: the one-hot label of the previous step; zeros at the first step."""
    onehot = F.one_hot(labels, num_classes).to(dtype)
    return torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], dim=1)


def episode_sequence(
    batch: TaskBatch, generator: torch.Generator | None = None, shuffle_labels: bool = True
) -> LabelSequence:
    """Pool support and query of every task, shuffle the order, relabel the classes.

    An episode is pooled from a :class:`~fastadapt.TaskBatch`: the support and query examples of each task
    (``N * (K + Q)``, e.g. 5 ways x (5 + 5) = the paper's 50 steps) in a random order, the labels ``0..N-1``
    relabelled by a random permutation; the loss is taken at every step.
    ``generator`` drives both permutations (default: the global torch generator).
    """
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    y = torch.cat([batch.support_y, batch.query_y], dim=1)
    t, length = y.shape
    n = batch.ways
    order = torch.rand(t, length, generator=generator).argsort(dim=1)
    if shuffle_labels:
        relabel = torch.rand(t, n, generator=generator).argsort(dim=1)
        y = relabel.gather(1, y)
    y = y.gather(1, order)
    x = x[torch.arange(t).unsqueeze(1), order]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return LabelSequence(x, y, previous_onehot(y, n, dtype), instance_numbers(y, n))


def instance_accuracy(logits: Tensor, labels: Tensor, instance: Tensor, max_instance: int = 10) -> Tensor:
    """Accuracy by presentation number, per episode: ``[T, max_instance]`` float64.

    Entry ``[e, k-1]`` is the fraction of the k-th presentations (of any class) in episode ``e`` that
    were classified correctly; NaN where episode ``e`` has no k-th presentation.
    """
    correct = (logits.argmax(-1) == labels).double()
    out = torch.full((labels.shape[0], max_instance), float("nan"), dtype=torch.float64)
    for k in range(1, max_instance + 1):
        mask = (instance == k).double()
        count = mask.sum(1)
        acc = (correct * mask).sum(1) / count.clamp_min(1)
        out[:, k - 1] = torch.where(count > 0, acc, torch.full_like(acc, float("nan")))
    return out


def fixed_order(n: int) -> Tensor:
    """The fixed shuffle of ``n`` positions ``MANN.adapt`` presents a support set in (and ``update`` a batch)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(0)).argsort()


def repeat_state(state: Any, repeats: int) -> Any:
    """Repeat every tensor of a (nested, possibly named) tuple ``repeats`` times along dim 0, item by item."""
    if isinstance(state, Tensor):
        return state.repeat_interleave(repeats, dim=0)
    items = [repeat_state(s, repeats) for s in state]
    return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)


def flatten_state(state: Any, prefix: str = "") -> dict[str, Tensor]:
    """A (nested, possibly named) tuple of tensors as ``{"0": ..., "4.1": ...}`` (paths of indices), detached."""
    if isinstance(state, Tensor):
        return {prefix[:-1]: state.detach()}
    out: dict[str, Tensor] = {}
    for i, s in enumerate(state):
        out.update(flatten_state(s, f"{prefix}{i}."))
    return out


def unflatten_state(template: Any, flat: dict[str, Tensor], prefix: str = "") -> Any:
    """The inverse of :func:`flatten_state`, shaped like ``template``."""
    if isinstance(template, Tensor):
        return flat[prefix[:-1]]
    items = [unflatten_state(s, flat, f"{prefix}{i}.") for i, s in enumerate(template)]
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)
