"""Memory-augmented neural network (MANN), Santoro et al. 2016, "Meta-Learning with Memory-Augmented
Neural Networks" (ICML), as a fastadapt algorithm.

An episode is a *sequence*: at step t the network sees the input ``x_t`` together with the one-hot
label of the *previous* step ``y_{t-1}`` (zeros at t = 0), and must output ``y_t``. A class's label
is therefore first revealed one step after its first instance, and the network has to bind
"this image" to "this label" in its memory to classify the next instance of the class. Labels are
shuffled per episode so that no image-to-label mapping can be stored in the weights.

Episodes from a :class:`~fastadapt.TaskBatch` (see :func:`episode_sequence`): the support and the
query examples of each task are pooled (``N * (K + Q)`` examples, e.g. ways=5, shots=5, queries=5
gives the paper's 5 classes x 10 instances = 50 steps), presented in a uniformly random order, and
the task's labels ``0..N-1`` are relabelled by a random permutation. The loss is the cross-entropy
at every step (the paper trains on all steps), averaged over steps and tasks.

Accuracy by instance (the paper's table 1): :func:`instance_numbers` counts, for every step, the how
many-th presentation of its class it is; :func:`instance_accuracy` averages correctness by that number.

Options for the paper's recipe (issue 19), each defaulting to the behaviour before it:
``controller = "transformer"`` (the NTM's causal transformer as the controller); ``translate = k``
(training episodes only: every class of an episode is shifted by its own random offset of up to
``k`` pixels in each direction, zeros filling in, drawn per episode; :func:`translate_classes`);
``key_strength`` (a learnt read sharpening, not in the paper); ``label_encoding = "string"`` (the
paper's labels for many classes: each class of an episode gets a distinct random string of 5
characters from a 5-letter alphabet, fed back as 5 concatenated one-hots (25 values) and predicted
by 5 softmaxes; the loss is the negative log-likelihood of the whole string, and a step counts as
correct when its class's string is the most likely of the episode's N strings; :class:`StringLabels`).
The paper's optimizer is ``optim.optimizer = "rmsprop"``, ``optim.lr = 1e-4``.

The contract (``fastadapt.algorithms.base``) is kept loosely: ``needs_head=False`` (``model`` is an
encoder, default ``nn.Flatten``); ``adapt(support_x, support_y)`` runs the support set through the
memory (in a fixed shuffled order) and returns a predictor that classifies each query from that memory
state, the last support label being fed with the query; ``predict(batch)`` does that for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.predictors import check_update
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.nn.mann_memory import LRUMemoryCore, LSTMCore

REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)  # the columns of the paper's table 1
LABEL_ENCODINGS = ("onehot", "string")
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
    """Pool support and query of every task, shuffle the order, relabel the classes (see the module docstring).

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


def _repeat_state(state: Any, repeats: int) -> Any:
    """Repeat every tensor of a (nested, possibly named) tuple ``repeats`` times along dim 0, item by item."""
    if isinstance(state, Tensor):
        return state.repeat_interleave(repeats, dim=0)
    items = [_repeat_state(s, repeats) for s in state]
    return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)


def _flatten_state(state: Any, prefix: str = "") -> dict[str, Tensor]:
    """A (nested, possibly named) tuple of tensors as ``{"0": ..., "4.1": ...}`` (paths of indices), detached."""
    if isinstance(state, Tensor):
        return {prefix[:-1]: state.detach()}
    out: dict[str, Tensor] = {}
    for i, s in enumerate(state):
        out.update(_flatten_state(s, f"{prefix}{i}."))
    return out


def _unflatten_state(template: Any, flat: dict[str, Tensor], prefix: str = "") -> Any:
    """The inverse of :func:`_flatten_state`, shaped like ``template``."""
    if isinstance(template, Tensor):
        return flat[prefix[:-1]]
    items = [_unflatten_state(s, flat, f"{prefix}{i}.") for i, s in enumerate(template)]
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)


def _fixed_order(n: int) -> Tensor:
    """The fixed shuffle of ``n`` positions ``adapt`` presents a support set in (and ``update`` a batch)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(0)).argsort()


@dataclass(eq=False)
class MemoryPredictor:
    """What :meth:`MANN.adapt` returns: ``query_x [Q, *x] -> logits [Q, C]``, each query classified from the
    memory state the labelled examples wrote, the last label fed with it, and that keeps adapting with :meth:`update`.

    The memory is online by nature: ``update(x, y)`` continues the sequence that ``adapt`` began. The batch is
    presented as ``adapt`` presents a support set (in the same fixed shuffle of its positions), each example
    with the encoding of the label of the example before it (the one-step offset of the task's protocol:
    the first example of the batch gets the last label fed before it), and the memory and controller state
    carry on from where they were. After :meth:`reset` (the core's initial state, no previous label)
    ``update(x, y)`` equals ``algo.adapt(x, y)``.

    Bounded memory: the LRUA memory (``memory_size x memory_width``) and the controller state have fixed
    sizes, whatever the number of updates (the transformer controller's cache grows with every step:
    ``update`` refuses it in one line); bounded work: one core step per example. No graph is kept.
    Labels must lie in ``0..ways-1`` (the network's label input and output have that fixed width: a larger
    label is a one-line :class:`DataError`); a rejected update leaves the state as it was.
    """

    net: MANN
    state: dict[
        str, Tensor
    ]  # the core's state for one task (:func:`_flatten_state`); empty after reset(): the initial state
    last: Tensor  # [1, width] the encoding of the last label fed (zeros: none yet)
    codes: Tensor | None  # string labels: the N strings [1, N, 5]

    def _core_state(self, like: Tensor) -> Any:
        template = self.net.core.initial_state(1, like)
        return template if not self.state else _unflatten_state(template, self.state)

    def __call__(self, query_x: Tensor) -> Tensor:
        return self.net._query_logits(self._core_state(self.last), self.last, query_x.unsqueeze(0), self.codes)[0]

    def configure(self) -> MemoryPredictor:
        """Nothing to set: the memory has no window or rate (it is there for the common ``configure(**options)``)."""
        return self

    def reset(self) -> None:
        """Back to the core's initial state (memory at its constant start, no previous label)."""
        self.state, self.last = {}, torch.zeros_like(self.last)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Feed the labelled batch ``x [B, *input_shape]``, ``y [B]`` (labels ``0..ways-1``) into the memory; returns nothing."""
        net = self.net
        if getattr(net.core, "controller_kind", "lstm") == "transformer":
            raise ConfigError(
                "MANN update: the transformer controller's state (its cache of every step) grows with each example, so online "
                "updates would not keep bounded memory; use controller='lstm' for online adaptation"
            )
        check_update(x, y, torch.empty(0, *net.input_shape), torch.empty(0, dtype=torch.long))
        if not y.numel():
            return
        if int(y.max()) >= net.ways:
            raise DataError(
                f"update: label {int(y.max())} is outside the {net.ways} classes this MANN was built for (ways={net.ways}); its label "
                f"input and output have a fixed width (use a metric-based learner, e.g. ProtoNet, or a stream with slot labels)"
            )
        order = _fixed_order(y.shape[0])
        x, y = x.detach()[order].unsqueeze(0), y.detach()[order].unsqueeze(0)
        with torch.no_grad():
            feats = net._encode(x)
            enc = net._labels_in(y, self.codes, feats.dtype)
            prev = torch.cat([self.last.to(feats.dtype).unsqueeze(1), enc[:, :-1]], dim=1)
            _, state = net.core(feats, prev.transpose(0, 1), self._core_state(self.last) if self.state else None)
        self.state, self.last = _flatten_state(state), enc[:, -1].clone()


class MANN(nn.Module):
    """Memory-augmented network (``core="mann"``) or its LSTM baseline (``core="lstm"``) for few-shot sequences.

    Args:
        model: encoder applied to every image (``[*, *input_shape] -> [*, F]``); default ``nn.Flatten()``
            (the paper feeds the flattened 20x20 image).
        ways: C, the number of classes per episode (5 in the paper's one-hot experiments).
        input_shape: shape of one input (default ``(1, 20, 20)``: Omniglot at the paper's 20x20).
        core: ``"mann"`` (controller + LRUA memory) or ``"lstm"`` (the baseline).
        memory_size, memory_width, read_heads, controller_size, gamma: see :class:`~fastadapt.nn.mann_memory.LRUMemoryCore`
            (paper: 128, 40, 4, 200, 0.95).
        shuffle_labels: relabel the classes with a random permutation in every training episode (the paper does).
        key_strength: sharpen the content reads with a learnt key strength (not in the paper; see
            :class:`~fastadapt.nn.mann_memory.LRUMemoryCore`).
        controller: the MANN's controller, ``"lstm"`` (the paper) or ``"transformer"`` (``core="mann"`` only).
        transformer_layers, transformer_heads: the transformer controller's depth and heads (width: ``controller_size``).
        translate: training episodes only: shift each class of an episode by its own random offset of up
            to this many pixels (per axis), drawn per episode (0: off).
        label_encoding: ``"onehot"`` or ``"string"`` (the paper's 5-character strings; see the module docstring).
    """

    needs_head = False

    def __init__(
        self,
        model: nn.Module | None = None,
        ways: int = 5,
        input_shape: tuple[int, ...] = (1, 20, 20),
        core: str = "mann",
        memory_size: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        controller_size: int = 200,
        gamma: float = 0.95,
        shuffle_labels: bool = True,
        key_strength: bool = False,
        controller: str = "lstm",
        transformer_layers: int = 2,
        transformer_heads: int = 4,
        translate: int = 0,
        label_encoding: str = "onehot",
    ) -> None:
        super().__init__()
        if not isinstance(ways, int) or isinstance(ways, bool) or ways < 2:
            raise ConfigError(f"MANN ways={ways!r} is invalid; it must be an integer >= 2")
        if (
            not isinstance(translate, int)
            or isinstance(translate, bool)
            or not 0 <= translate <= max(tuple(input_shape)[-2:], default=0)
        ):
            raise ConfigError(
                f"MANN translate={translate!r} is invalid; it must be an integer in [0, the image side] (pixels)"
            )
        if label_encoding not in LABEL_ENCODINGS:
            raise ConfigError(
                f"MANN label_encoding={label_encoding!r} is unknown; choose one of {', '.join(LABEL_ENCODINGS)}"
            )
        if label_encoding == "string" and ways > STRING_ALPHABET**STRING_LENGTH:
            raise ConfigError(f"MANN ways={ways} exceeds the {STRING_ALPHABET**STRING_LENGTH} string labels")
        self.model = model if model is not None else nn.Flatten()
        self.ways, self.input_shape, self.shuffle_labels = ways, tuple(input_shape), bool(shuffle_labels)
        self.translate, self.label_encoding = translate, label_encoding
        feature_dim = self._feature_dim()
        width = StringLabels.width if label_encoding == "string" else ways
        if core == "mann":
            self.core: nn.Module = LRUMemoryCore(
                feature_dim,
                width,
                memory_size,
                memory_width,
                read_heads,
                controller_size,
                gamma,
                key_strength,
                controller,
                transformer_layers,
                transformer_heads,
            )
        elif core == "lstm":
            if controller != "lstm":
                raise ConfigError(
                    f"MANN controller={controller!r} applies to core='mann'; the baseline core='lstm' is an LSTM"
                )
            self.core = LSTMCore(feature_dim, width, controller_size)
        else:
            raise ConfigError(f"MANN core={core!r} is unknown; choose 'mann' or 'lstm'")

    def _feature_dim(self) -> int:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                z = self.model(torch.zeros(2, *self.input_shape))
        finally:
            self.model.train(was_training)
        if z.ndim != 2:
            raise ConfigError(
                f"MANN encoder maps {self.input_shape} to shape {tuple(z.shape[1:])}; it must give flat feature vectors"
            )
        return int(z.shape[1])

    def _check(self, x: Tensor, ways: int) -> None:
        if tuple(x.shape[-len(self.input_shape) :]) != self.input_shape:
            raise ConfigError(
                f"MANN was built for inputs {self.input_shape}, got {tuple(x.shape[2:])}; resize the images or pass input_shape"
            )
        if ways != self.ways:
            raise ConfigError(
                f"MANN was built for ways={self.ways}, the batch has {ways}-way tasks; sample {self.ways}-way tasks"
            )

    def _encode(self, x: Tensor) -> Tensor:
        """``[T, L, *x_shape]`` -> ``[L, T, F]`` (time first, as the cores take it)."""
        t, length = x.shape[:2]
        return self.model(x.flatten(0, 1)).view(t, length, -1).transpose(0, 1)

    def _fixed_codes(self, tasks: int) -> Tensor | None:
        """String labels at adaptation / prediction: the same N strings for every task (drawn once from seed 0)."""
        if self.label_encoding != "string":
            return None
        return StringLabels.codes(1, self.ways, torch.Generator().manual_seed(0)).expand(tasks, -1, -1)

    def _labels_in(self, labels: Tensor, codes: Tensor | None, dtype: torch.dtype) -> Tensor:
        """What the network is fed for ``labels [T, L]``: one-hot ``[T, L, C]`` or the strings' one-hots ``[T, L, 25]``."""
        return F.one_hot(labels, self.ways).to(dtype) if codes is None else StringLabels.encode(labels, codes, dtype)

    def _class_scores(self, outputs: Tensor, codes: Tensor | None) -> Tensor:
        """Network outputs ``[T, L, width]`` -> scores of the episode's classes ``[T, L, C]`` (strings: log-likelihoods)."""
        return outputs if codes is None else StringLabels.log_likelihood(outputs, codes)

    def make_sequence(
        self, batch: TaskBatch, generator: torch.Generator | None = None, train: bool = False
    ) -> LabelSequence:
        """The episodes of ``batch`` as sequences (:func:`episode_sequence`), with this network's label encoding;
        ``train``: also the training-only augmentation (``translate``) and fresh strings per episode."""
        if train and self.translate:
            t, n = batch.num_tasks, batch.ways
            shifts = torch.randint(-self.translate, self.translate + 1, (t, n, 2), generator=generator)
            batch = TaskBatch(
                translate_classes(batch.support_x, batch.support_y, shifts),
                batch.support_y,
                translate_classes(batch.query_x, batch.query_y, shifts),
                batch.query_y,
                batch.classes,
            )
        seq = episode_sequence(batch, generator, self.shuffle_labels)
        if self.label_encoding == "onehot":
            return seq
        codes = (
            StringLabels.codes(batch.num_tasks, batch.ways, generator) if train else self._fixed_codes(batch.num_tasks)
        )
        enc = self._labels_in(seq.labels, codes, seq.prev_onehot.dtype)
        prev = torch.cat([torch.zeros_like(enc[:, :1]), enc[:, :-1]], dim=1)
        return LabelSequence(seq.x, seq.labels, prev, seq.instance, codes)

    def sequence_outputs(self, seq: LabelSequence) -> Tensor:
        """The network's outputs ``[T, L, width]`` for a :class:`LabelSequence`."""
        outputs, _ = self.core(self._encode(seq.x), seq.prev_onehot.transpose(0, 1).to(seq.x.dtype))
        return outputs.transpose(0, 1)

    def sequence_logits(self, seq: LabelSequence) -> Tensor:
        """Scores of the episode's classes ``[T, L, C]`` for a :class:`LabelSequence` (one-hot: the logits)."""
        return self._class_scores(self.sequence_outputs(seq), seq.codes)

    def meta_loss(self, batch: TaskBatch, generator: torch.Generator | None = None) -> MetaOutput:
        """Cross-entropy at every step of the pooled, shuffled episodes (mean over steps and tasks; string labels:
        the negative log-likelihood of the class's string).

        Metrics: ``loss``, ``acc`` (all steps) and ``inst1``, ``inst2``, ... (accuracy at the k-th
        presentation, for the k of :data:`REPORTED_INSTANCES` that the episodes contain).
        """
        self._check(batch.support_x, batch.ways)
        seq = self.make_sequence(batch, generator, train=True)
        outputs = self.sequence_outputs(seq)
        logits = self._class_scores(outputs, seq.codes)
        if seq.codes is None:
            loss = F.cross_entropy(logits.flatten(0, 1), seq.labels.flatten())
        else:
            loss = -logits.gather(-1, seq.labels.unsqueeze(-1)).mean()
        with torch.no_grad():
            metrics = {"loss": float(loss.detach()), "acc": float((logits.argmax(-1) == seq.labels).double().mean())}
            per_inst = instance_accuracy(logits, seq.labels, seq.instance, max(REPORTED_INSTANCES))
            for k in REPORTED_INSTANCES:
                col = per_inst[:, k - 1]
                if not torch.isnan(col).all():
                    metrics[f"inst{k}"] = float(col.nanmean())
        return MetaOutput(loss, metrics)

    def _support_state(
        self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None
    ) -> tuple[Any, Tensor, Tensor | None]:
        """Run ``[T, S, ...]`` support sequences (shuffled, labels kept); returns the state, the last label's encoding ``[T, width]``
        and the strings (or None)."""
        t, s = support_y.shape
        if generator is None:  # the same fixed shuffle of positions for every task, whatever the batch
            order = _fixed_order(s).expand(t, s)
        else:
            order = torch.rand(t, s, generator=generator).argsort(dim=1)
        x = support_x[torch.arange(t).unsqueeze(1), order]
        y = support_y.gather(1, order)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        codes = self._fixed_codes(t)
        enc = self._labels_in(y, codes, dtype)
        prev = torch.cat([torch.zeros_like(enc[:, :1]), enc[:, :-1]], dim=1)
        _, state = self.core(self._encode(x), prev.transpose(0, 1))
        return state, enc[:, -1], codes

    def _query_logits(self, state: Any, last: Tensor, query_x: Tensor, codes: Tensor | None) -> Tensor:
        """Each query of ``[T, Q, ...]`` classified from its task's memory state: ``[T, Q, C]``."""
        t, q = query_x.shape[:2]
        feats = self.model(query_x.flatten(0, 1))
        outputs, _ = self.core.step(feats, last.repeat_interleave(q, dim=0), _repeat_state(state, q))
        return self._class_scores(outputs.view(t, q, -1), codes)

    def adapt(self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None = None) -> MemoryPredictor:
        """Write one task's support set into memory; the predictor maps ``query_x [Q, ...]`` to logits ``[Q, C]``.

        The support set is presented in an order shuffled by ``generator`` (default: one fixed shuffle of
        the positions, so ``adapt`` is deterministic and agrees with ``predict``); the module is not changed.
        ``update(x, y)`` on the result feeds more labelled examples into the memory (:class:`MemoryPredictor`).
        """
        self._check(support_x.unsqueeze(0), self.ways)
        if support_y.numel() and not 0 <= int(support_y.min()) <= int(support_y.max()) < self.ways:
            raise ConfigError(f"MANN was built for ways={self.ways}; support labels must lie in 0..{self.ways - 1}")
        with torch.no_grad():
            state, last, codes = self._support_state(support_x.unsqueeze(0), support_y.unsqueeze(0), generator)
        return MemoryPredictor(self, _flatten_state(state), last.clone(), codes)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[T, N*Q, N]`` of every task, each from its own support memory."""
        self._check(batch.support_x, batch.ways)
        state, last, codes = self._support_state(batch.support_x, batch.support_y, None)
        return self._query_logits(state, last, batch.query_x, codes)
