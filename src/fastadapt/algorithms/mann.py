"""Memory-augmented neural network (MANN), Santoro et al. 2016, "Meta-Learning with Memory-Augmented Neural
Networks" (ICML): the protocol, recipe and contract are on :class:`MANN`, the episodes in
:mod:`fastadapt.algorithms.mann_episodes`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.mann_episodes import (
    STRING_ALPHABET,
    STRING_LENGTH,
    LabelSequence,
    StringLabels,
    episode_sequence,
    fixed_order,
    flatten_state,
    instance_accuracy,
    instance_numbers,
    previous_onehot,
    repeat_state,
    translate_classes,
    unflatten_state,
)
from fastadapt.algorithms.predictors import check_update
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.nn.mann_memory import LRUMemoryCore, LSTMCore, least_used, lru_write_weights

REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)  # the columns of the paper's table 1
LABEL_ENCODINGS = ("onehot", "string")


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
    ]  # the core's state for one task (:func:`flatten_state`); empty after reset(): the initial state
    last: Tensor  # [1, width] the encoding of the last label fed (zeros: none yet)
    codes: Tensor | None  # string labels: the N strings [1, N, 5]
    support_x: Tensor | None = None  # what adapt wrote, kept for explain() until the first update or reset
    support_y: Tensor | None = None

    def _core_state(self, like: Tensor) -> Any:
        template = self.net.core.initial_state(1, like)
        return template if not self.state else unflatten_state(template, self.state)

    def __call__(self, query_x: Tensor) -> Tensor:
        return self.net._query_logits(self._core_state(self.last), self.last, query_x.unsqueeze(0), self.codes)[0]

    def configure(self) -> MemoryPredictor:
        """Nothing to set: the memory has no window or rate (it is there for the common ``configure(**options)``)."""
        return self

    def reset(self) -> None:
        """Back to the core's initial state (memory at its constant start, no previous label)."""
        self.state, self.last = {}, torch.zeros_like(self.last)
        self.support_x = self.support_y = None

    def update(self, x: Tensor, y: Tensor) -> None:
        """Feed the labelled batch ``x [B, *input_shape]``, ``y [B]`` (labels ``0..ways-1``) into the memory; returns
        nothing."""
        net = self.net
        if getattr(net.core, "controller_kind", "lstm") == "transformer":
            raise ConfigError(
                "MANN update: the transformer controller's state (its cache of "
                "every step) grows with each example, so online "
                "updates would not keep bounded memory; use controller='lstm' for online adaptation"
            )
        check_update(x, y, torch.empty(0, *net.input_shape), torch.empty(0, dtype=torch.long))
        if not y.numel():
            return
        if int(y.max()) >= net.ways:
            raise DataError(
                f"update: label {int(y.max())} is outside the {net.ways} classes this "
                f"MANN was built for (ways={net.ways}); its label "
                "input and output have a fixed width (use a metric-based learner, "
                "e.g. ProtoNet, or a stream with slot labels)"
            )
        order = fixed_order(y.shape[0])
        x, y = x.detach()[order].unsqueeze(0), y.detach()[order].unsqueeze(0)
        with torch.no_grad():
            feats = net._encode(x)
            enc = net._labels_in(y, self.codes, feats.dtype)
            prev = torch.cat([self.last.to(feats.dtype).unsqueeze(1), enc[:, :-1]], dim=1)
            _, state = net.core(feats, prev.transpose(0, 1), self._core_state(self.last) if self.state else None)
        self.state, self.last = flatten_state(state), enc[:, -1].clone()
        self.support_x = self.support_y = None

    def explain(self, x: Tensor) -> dict[str, Any] | None:
        """The LRUA memory's read and write weightings while the support set is written and each query read
        (:func:`memory_trace`); None for the LSTM baseline (``core="lstm"``: no memory to show)."""
        core = self.net.core
        if not isinstance(core, LRUMemoryCore):
            return None
        if self.support_x is None or self.support_y is None:  # updated since adapt: the current memory, read
            with torch.no_grad():
                state = self._core_state(self.last)
            trace = memory_trace(self.net, state, self.last, x)
            note = "the memory after the updates: query reads only (the support sequence is no longer kept)"
            return {"kind": "memory", **trace, "attribute": False, "notes": [note]}
        return {"kind": "memory", **memory_trace(self.net, None, self.last, x, self.support_x, self.support_y)}


def memory_trace(
    net: MANN,
    state: Any,
    last: Tensor,
    query_x: Tensor,
    support_x: Tensor | None = None,
    support_y: Tensor | None = None,
) -> dict[str, Any]:
    """Read and write weightings of a MANN's LRUA memory: the support set written from the initial state (when
    given, as :meth:`MANN.adapt` presents it, in its fixed shuffled order), then each query read from that memory
    (else from ``state``, with ``last`` the label fed before).

    Returns ``read_weights``, ``write_weights`` ``[S + Q, R, slots]`` (a row a step: the support steps, then one
    per query), ``phase`` (``"support"`` / ``"query"`` per row), ``order [S]`` (the presentation order) and
    ``query_outputs [Q, C]``, equal to the predictor's outputs; ``attribute``: False.
    """
    core: LRUMemoryCore = net.core  # type: ignore[assignment]
    reads, writes, order = [], [], torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        if support_x is not None and support_y is not None:
            s = support_y.shape[0]
            order = fixed_order(s)
            x, y = support_x[order], support_y[order]
            dtype = x.dtype if x.is_floating_point() else torch.float32
            prev = previous_onehot(y.unsqueeze(0), net.ways, dtype)[0]
            feats = net.model(x)
            state = core.initial_state(1, feats)
            for t in range(s):
                _, new = core.step(feats[t : t + 1], prev[t : t + 1], state)
                alpha = core.alpha(new.controller[0])
                writes.append(lru_write_weights(state.read_weights, least_used(state.usage, core.read_heads), alpha)[0])
                reads.append(new.read_weights[0])
                state = new
            last = F.one_hot(y[-1:], net.ways).to(dtype)
        q = query_x.shape[0]
        rep = repeat_state(state, q)
        out, qstate = core.step(net.model(query_x), last.expand(q, -1), rep)
        alpha = core.alpha(qstate.controller[0])
        qw = lru_write_weights(rep.read_weights, least_used(rep.usage, core.read_heads), alpha)
    return {
        "read_weights": torch.cat([*([torch.stack(reads)] if reads else []), qstate.read_weights]),
        "write_weights": torch.cat([*([torch.stack(writes)] if writes else []), qw]),
        "phase": ["support"] * len(reads) + ["query"] * q,
        "order": order,
        "query_outputs": out,
        "attribute": False,
    }


class MANN(nn.Module):
    """Memory-augmented network (``core="mann"``) or its LSTM baseline (``core="lstm"``) for few-shot sequences.

    An episode is a *sequence*: at step t the network sees the input ``x_t`` together with the one-hot
    label of the *previous* step ``y_{t-1}`` (zeros at t = 0), and must output ``y_t``. A class's label
    is therefore first revealed one step after its first instance, and the network has to bind
    "this image" to "this label" in its memory to classify the next instance of the class. Labels are
    shuffled per episode so that no image-to-label mapping can be stored in the weights.

    Episodes, the paper's string labels, translations and accuracy by presentation number are in
    :mod:`fastadapt.algorithms.mann_episodes`; the options of the paper's recipe (issue 19) are the
    arguments of :class:`MANN`. The paper's optimizer is ``optim.optimizer = "rmsprop"``, ``optim.lr = 1e-4``.

    The contract (``fastadapt.algorithms.base``) is kept loosely: ``needs_head=False`` (``model`` is an
    encoder, default ``nn.Flatten``); ``adapt(support_x, support_y)`` runs the support set through the
    memory (in a fixed shuffled order) and returns a predictor that classifies each query from that memory
    state, the last support label being fed with the query; ``predict(batch)`` does that for every task.

    Args:
        model: encoder applied to every image (``[*, *input_shape] -> [*, F]``); default ``nn.Flatten()``
            (the paper feeds the flattened 20x20 image).
        ways: C, the number of classes per episode (5 in the paper's one-hot experiments).
        input_shape: shape of one input (default ``(1, 20, 20)``: Omniglot at the paper's 20x20).
        core: ``"mann"`` (controller + LRUA memory) or ``"lstm"`` (the baseline).
        memory_size, memory_width, read_heads, controller_size, gamma: see
            :class:`~fastadapt.nn.mann_memory.LRUMemoryCore` (paper: 128, 40, 4, 200, 0.95).
        shuffle_labels: relabel the classes with a random permutation in every training episode (the paper does).
        key_strength: sharpen the content reads with a learnt key strength (not in the paper; see
            :class:`~fastadapt.nn.mann_memory.LRUMemoryCore`).
        controller: the MANN's controller, ``"lstm"`` (the paper) or ``"transformer"`` (``core="mann"`` only).
        transformer_layers, transformer_heads: the transformer controller's depth and heads (width:
            ``controller_size``).
        translate: training episodes only: shift each class of an episode by its own random offset of up
            to this many pixels (per axis), drawn per episode (0: off).
        label_encoding: ``"onehot"`` or ``"string"`` (the paper's 5-character strings;
            :class:`~fastadapt.algorithms.mann_episodes.StringLabels`).
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
                f"MANN was built for inputs {self.input_shape}, got {tuple(x.shape[2:])}; "
                "resize the images or pass input_shape"
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
        """What the network is fed for ``labels [T, L]``: one-hot ``[T, L, C]`` or the strings' one-hots ``[T, L,
        25]``."""
        return F.one_hot(labels, self.ways).to(dtype) if codes is None else StringLabels.encode(labels, codes, dtype)

    def _class_scores(self, outputs: Tensor, codes: Tensor | None) -> Tensor:
        """Network outputs ``[T, L, width]`` -> scores of the episode's classes ``[T, L, C]`` (strings:
        log-likelihoods)."""
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
        """Run ``[T, S, ...]`` support sequences (shuffled, labels kept); returns the state, the last label's encoding
        ``[T, width]``
        and the strings (or None)."""
        t, s = support_y.shape
        if generator is None:  # the same fixed shuffle of positions for every task, whatever the batch
            order = fixed_order(s).expand(t, s)
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
        outputs, _ = self.core.step(feats, last.repeat_interleave(q, dim=0), repeat_state(state, q))
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
        return MemoryPredictor(
            self, flatten_state(state), last.clone(), codes, support_x.detach().clone(), support_y.detach().clone()
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[T, N*Q, N]`` of every task, each from its own support memory."""
        self._check(batch.support_x, batch.ways)
        state, last, codes = self._support_state(batch.support_x, batch.support_y, None)
        return self._query_logits(state, last, batch.query_x, codes)


__all__ = [
    "MANN",
    "REPORTED_INSTANCES",
    "STRING_ALPHABET",
    "STRING_LENGTH",
    "LabelSequence",
    "MemoryPredictor",
    "StringLabels",
    "episode_sequence",
    "instance_accuracy",
    "instance_numbers",
    "memory_trace",
    "previous_onehot",
    "translate_classes",
]
