"""The memory of the memory-augmented neural network (MANN) of Santoro et al. 2016, "Meta-Learning
with Memory-Augmented Neural Networks" (ICML), with least-recently-used access (LRUA).

State in, state out: ``core.step(x, y_prev, state) -> (logits, state)``. Shapes: ``B`` batch, ``N``
slots, ``Mw`` width, ``R`` read heads, ``C`` classes, ``F`` input features.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.controllers import make_controller, positive_ints
from fastadapt.nn.ntm import head_similarities, read_memory


def least_used(usage: Tensor, n: int) -> Tensor:
    """``w^lu [B, N]``: 1 at the ``n`` slots of smallest usage (ties: lowest index first), 0 elsewhere.

    ``w^lu_{t-1}(i) = 1`` if ``w^u_{t-1}(i) <= m(w^u_{t-1}, n)`` else 0, with ``m(v, n)`` the n-th smallest
    element of ``v`` and ``n`` the number of read heads; ties broken so that exactly ``n`` slots are least used.
    """
    order = torch.sort(usage, dim=-1, stable=True).indices[..., :n]
    return torch.zeros_like(usage).scatter_(-1, order, 1.0)


def lru_write_weights(read_weights_prev: Tensor, least_used_prev: Tensor, alpha: Tensor) -> Tensor:
    """``w^w = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}`` (eq. 6).

    Args:
        read_weights_prev: ``[B, R, N]``; least_used_prev: ``[B, N]``; alpha: ``[B, R]`` (raw gate, before
            the sigmoid).

    Returns:
        ``[B, R, N]``.
    """
    s = torch.sigmoid(alpha).unsqueeze(-1)
    return s * read_weights_prev + (1 - s) * least_used_prev.unsqueeze(1)


def usage_update(usage: Tensor, read_weights: Tensor, write_weights: Tensor, gamma: float) -> Tensor:
    """``w^u_t = gamma w^u_{t-1} + sum_r w^r_t + sum_r w^w_t`` (eq. 5); usage ``[B, N]``, weights ``[B, R, N]``."""
    return gamma * usage + read_weights.sum(1) + write_weights.sum(1)


def lru_write(memory: Tensor, usage_prev: Tensor, write_weights: Tensor, keys: Tensor) -> Tensor:
    """Zero the least used slot of ``memory [B, N, Mw]`` (by ``usage_prev [B, N]``), then add ``sum_r w^w_r k_r^T``:
    ``M_t(i) = M_{t-1}(i) + sum_r w^w_{t,r}(i) k_{t,r}``.

    ``write_weights [B, R, N]``, ``keys [B, R, Mw]``; returns a new memory.
    """
    slot = torch.sort(usage_prev, dim=-1, stable=True).indices[..., :1]  # [B, 1]
    keep = torch.ones_like(usage_prev).scatter_(-1, slot, 0.0)
    return memory * keep.unsqueeze(-1) + write_weights.transpose(1, 2) @ keys


def content_read_weights(memory: Tensor, keys: Tensor, beta: Tensor | None = None) -> Tensor:
    """``softmax_i(beta_r K(k_r, M(i)))`` for every head (``K`` the cosine similarity, eq. 2-3): memory
    ``[B, N, Mw]``, keys ``[B, R, Mw]`` -> ``[B, R, N]``.

    ``beta [B, R]`` is an optional key strength (the NTM's; the MANN paper has none, i.e. beta = 1).
    """
    sim = head_similarities(keys, memory)
    return torch.softmax(sim if beta is None else beta.unsqueeze(-1) * sim, dim=-1)


class LRUState(NamedTuple):
    """memory ``[B, N, Mw]``; read_weights ``[B, R, N]``; usage ``[B, N]``; reads ``[B, R, Mw]``; controller:
    ``(h, c)`` (LSTM) or each transformer block's inputs so far ``[B, t, D]`` (transformer)."""

    memory: Tensor
    read_weights: Tensor
    usage: Tensor
    reads: Tensor
    controller: Any


class LRUMemoryCore(nn.Module):
    """LSTM controller + LRUA memory (the MANN of Santoro et al. 2016).

    At each step the controller sees ``[x_t, y_{t-1}, r_{t-1}]`` (the input, the previous step's one-hot
    label, the previous reads) and emits per read head a key ``k_r`` and a gate ``alpha_r``; the write
    (:func:`lru_write_weights`, :func:`lru_write`), the read (:func:`content_read_weights`) and the usage
    (:func:`usage_update`) follow; the output is ``Linear([h_t, r_t])`` (class logits).

    The initial memory is the constant ``1e-6``, usage and read weights start at zero (so the first
    writes go to slots ``0..R-1``), the initial reads are zero.

    Args:
        input_size: F, the width of the encoded input ``x_t``.
        num_classes: C, the width of the one-hot labels and of the output.
        memory_size, memory_width: N x Mw (128 x 40 in the paper).
        read_heads: R (4 in the paper).
        controller_size: LSTM hidden size (200 in the paper).
        gamma: usage decay (0.95 in the paper).
        key_strength: also emit a key strength ``beta = 1 + softplus(.)`` per read head that sharpens the
            content read, as the NTM does. The paper reads with ``softmax(cosine)`` (False, the
            default): cosine similarities lie in [-1, 1], so over 128 slots the read can put at most
            ``e^2 / (e^2 + 127)`` ~ 5.5% of its weight on the best-matching slot.
        controller: ``"lstm"`` (the paper) or ``"transformer"``: the NTM's causal transformer
            (:class:`~fastadapt.nn.controllers.TransformerController`, width ``controller_size``) over the
            controller inputs so far; everything else is unchanged.
        transformer_layers, transformer_heads: depth and attention heads of the transformer controller.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        memory_size: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        controller_size: int = 200,
        gamma: float = 0.95,
        key_strength: bool = False,
        controller: str = "lstm",
        transformer_layers: int = 2,
        transformer_heads: int = 4,
    ) -> None:
        super().__init__()
        positive_ints(
            "MANN",
            input_size=input_size,
            num_classes=num_classes,
            memory_size=memory_size,
            memory_width=memory_width,
            read_heads=read_heads,
            controller_size=controller_size,
        )
        if read_heads > memory_size:
            raise ConfigError(
                f"MANN read_heads={read_heads} exceeds memory_size={memory_size}; use read_heads <= memory_size"
            )
        if not 0.0 <= float(gamma) <= 1.0:
            raise ConfigError(f"MANN gamma={gamma!r} is invalid; the usage decay must be in [0, 1]")
        self.num_classes, self.memory_size, self.memory_width = num_classes, memory_size, memory_width
        self.read_heads, self.gamma = read_heads, float(gamma)
        ctrl_in = input_size + num_classes + read_heads * memory_width
        self.controller = make_controller(
            "MANN", controller, nn.LSTMCell, ctrl_in, controller_size, transformer_heads, transformer_layers
        )
        self.controller_kind = controller
        self.keys = nn.Linear(controller_size, read_heads * memory_width)
        self.alpha = nn.Linear(controller_size, read_heads)
        self.beta = nn.Linear(controller_size, read_heads) if key_strength else None
        self.out = nn.Linear(controller_size + read_heads * memory_width, num_classes)

    def initial_state(self, batch_size: int, like: Tensor) -> LRUState:
        n, m, r = self.memory_size, self.memory_width, self.read_heads
        if self.controller_kind == "lstm":
            h = like.new_zeros(batch_size, self.controller.hidden_size)
            ctrl: Any = (h, h)
        else:
            ctrl = self.controller.initial_state(batch_size, like)
        return LRUState(
            like.new_full((batch_size, n, m), 1e-6),
            like.new_zeros(batch_size, r, n),
            like.new_zeros(batch_size, n),
            like.new_zeros(batch_size, r, m),
            ctrl,
        )

    def step(self, x: Tensor, y_prev: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        """``x [B, F]``, ``y_prev [B, C]`` -> ``(logits [B, C], new state)``."""
        b = x.shape[0]
        inp = torch.cat([x, y_prev, state.reads.flatten(1)], dim=-1)
        if self.controller_kind == "lstm":
            h, c = self.controller(inp, state.controller)
            ctrl: Any = (h, c)
        else:
            h, ctrl = self.controller(inp, state.controller)
        keys = torch.tanh(self.keys(h)).view(b, self.read_heads, self.memory_width)
        ww = lru_write_weights(state.read_weights, least_used(state.usage, self.read_heads), self.alpha(h))
        memory = lru_write(state.memory, state.usage, ww, keys)
        beta = None if self.beta is None else 1 + F.softplus(self.beta(h))
        rw = content_read_weights(memory, keys, beta)
        reads = read_memory(memory, rw)
        usage = usage_update(state.usage, rw, ww, self.gamma)
        logits = self.out(torch.cat([h, reads.flatten(1)], dim=-1))
        return logits, LRUState(memory, rw, usage, reads, ctrl)

    def forward(self, x: Tensor, y_prev: Tensor, state: LRUState | None = None) -> tuple[Tensor, LRUState]:
        """Run over ``x [L, B, F]`` and ``y_prev [L, B, C]``: ``(logits [L, B, C], final state)``."""
        return unroll(self, x, y_prev, state)


class LSTMCore(nn.Module):
    """The paper's LSTM baseline with the same interface: an LSTM cell over ``[x_t, y_{t-1}]`` and a linear read-out.

    State ``(h, c)``, each ``[B, hidden_size]``.
    """

    def __init__(self, input_size: int, num_classes: int, controller_size: int = 200) -> None:
        super().__init__()
        if not isinstance(controller_size, int) or controller_size < 1:
            raise ConfigError(f"LSTM controller_size={controller_size!r} is invalid; it must be a positive integer")
        self.num_classes = num_classes
        self.controller = nn.LSTMCell(input_size + num_classes, controller_size)
        self.out = nn.Linear(controller_size, num_classes)

    def initial_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, Tensor]:
        h = like.new_zeros(batch_size, self.controller.hidden_size)
        return h, h

    def step(self, x: Tensor, y_prev: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.controller(torch.cat([x, y_prev], dim=-1), state)
        return self.out(h), (h, c)

    def forward(
        self, x: Tensor, y_prev: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run over ``x [L, B, F]`` and ``y_prev [L, B, C]``: ``(logits [L, B, C], final state)``."""
        return unroll(self, x, y_prev, state)


def unroll(core: Any, x: Tensor, y_prev: Tensor, state: Any) -> tuple[Tensor, Any]:
    """``core.step`` over ``x [L, B, F]`` and ``y_prev [L, B, C]`` from ``state`` (None: the core's initial
    state): ``(logits [L, B, C], final state)``."""
    if state is None:
        state = core.initial_state(x.shape[1], x)
    outs = []
    for xt, yt in zip(x, y_prev):
        o, state = core.step(xt, yt, state)
        outs.append(o)
    return torch.stack(outs), state
