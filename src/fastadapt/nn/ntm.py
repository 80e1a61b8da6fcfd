"""Neural Turing Machine (Graves, Wayne & Danihelka 2014, "Neural Turing Machines", arXiv:1410.5401).

Addressing, reading and writing are free functions of tensors; :class:`NTM` holds the parameters and
is state in, state out: :meth:`NTM.step` maps ``(x_t, NTMState) -> (y_t, NTMState)``. Shapes: ``B``
batch, ``N`` memory slots, ``Mw`` slot width, ``R`` read heads, ``W`` write heads, ``S`` allowed shifts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.controllers import LSTMController, make_controller, positive_ints

# --------------------------------------------------------------------------------------------------
# addressing, reading and writing: free functions


def cosine_similarity(key: Tensor, memory: Tensor, eps: float = 1e-8) -> Tensor:
    """``K(k, M(i)) = k . M(i) / (|k| |M(i)|)`` for every slot.

    Args:
        key: ``[..., Mw]``.
        memory: ``[..., N, Mw]`` (the leading dimensions broadcast against ``key``'s).
        eps: added under the square roots so that zero vectors give a finite value and gradient.

    Returns:
        ``[..., N]``.
    """
    dot = (key.unsqueeze(-2) @ memory.transpose(-1, -2)).squeeze(-2)
    key_norm = (key * key).sum(-1, keepdim=True).add(eps).sqrt()
    mem_norm = (memory * memory).sum(-1).add(eps).sqrt()
    return dot / (key_norm * mem_norm)


def head_similarities(keys: Tensor, memory: Tensor, eps: float = 1e-8) -> Tensor:
    """:func:`cosine_similarity` of every head's key with every slot: ``keys [B, H, Mw]``, ``memory [B, N, Mw]``
    -> ``[B, H, N]``.

    The same value as ``cosine_similarity(keys, memory.unsqueeze(1))``, as one batched matrix product
    (broadcasting the memory over the heads copies it H times, forward and backward: the MANN's step
    spent 7% of its time in those copies).
    """
    dot = keys @ memory.transpose(1, 2)
    key_norm = (keys * keys).sum(-1, keepdim=True).add(eps).sqrt()  # [B, H, 1]
    mem_norm = (memory * memory).sum(-1).add(eps).sqrt().unsqueeze(1)  # [B, 1, N]
    return dot / (key_norm * mem_norm)


def content_weighting(memory: Tensor, key: Tensor, beta: Tensor) -> Tensor:
    """Content addressing (eq. 5): ``softmax_i(beta * K(k, M(i)))``.

    Args:
        memory: ``[B, N, Mw]``; key: ``[B, H, Mw]`` (H heads); beta: ``[B, H]`` key strength ``>= 0``.

    Returns:
        ``[B, H, N]``, each row summing to 1.
    """
    sim = head_similarities(key, memory)
    return torch.softmax(beta.unsqueeze(-1) * sim, dim=-1)


def interpolate(w_content: Tensor, w_prev: Tensor, gate: Tensor) -> Tensor:
    """Interpolation (eq. 7): ``g * w^c + (1 - g) * w_{t-1}``; ``gate`` is ``[...]`` in [0, 1], weights
    ``[..., N]``."""
    g = gate.unsqueeze(-1)
    return g * w_content + (1 - g) * w_prev


def circular_shift(w: Tensor, shift: Tensor, offsets: Sequence[int]) -> Tensor:
    """Circular convolution (eq. 8): ``w~(i) = sum_k s_k w(i - offsets[k])``, indices modulo N.

    Shifting by ``+1`` moves the focus one slot forward (slot ``N-1`` wraps to slot 0).

    Args:
        w: ``[..., N]``.
        shift: ``[..., S]`` a distribution over the ``S = len(offsets)`` allowed offsets.
        offsets: the integer offsets, e.g. ``(-1, 0, 1)``.
    """
    k = len(offsets) // 2
    if tuple(offsets) == tuple(range(-k, k + 1)) and k < w.shape[-1]:
        # contiguous offsets -k..k: windows of the circularly padded w; w(i - o) sits at window index k - o
        padded = torch.cat([w[..., w.shape[-1] - k :], w, w[..., :k]], dim=-1)
        windows = padded.unfold(-1, 2 * k + 1, 1)  # [..., N, 2k+1]
        return (windows @ shift.flip(-1).unsqueeze(-1)).squeeze(-1)
    rolled = torch.stack([torch.roll(w, shifts=int(o), dims=-1) for o in offsets], dim=-1)  # [..., N, S]
    return (rolled * shift.unsqueeze(-2)).sum(-1)


def sharpen(w: Tensor, gamma: Tensor, eps: float = 1e-12) -> Tensor:
    """Sharpening (eq. 9): ``w(i)^gamma / sum_j w(j)^gamma``; ``gamma`` is ``[...]``, ``w`` is ``[..., N]``.

    Computed as ``softmax_i(gamma * log(w(i) + eps))`` (the same value, without overflow); ``eps``
    keeps the logarithm and the gradient with respect to gamma finite at ``w = 0``.
    """
    return torch.softmax(gamma.unsqueeze(-1) * torch.log(w + eps), dim=-1)


class HeadParams(NamedTuple):
    """What a head emits at one step (activations applied); ``H`` heads of the same kind.

    key ``[B, H, Mw]``; beta ``[B, H]`` (>= 0); gate ``[B, H]`` (in [0, 1]); shift ``[B, H, S]`` (sums to 1);
    gamma ``[B, H]`` (>= 1); erase ``[B, H, Mw]`` (in [0, 1], write heads) and add ``[B, H, Mw]`` (write heads).
    """

    key: Tensor
    beta: Tensor
    gate: Tensor
    shift: Tensor
    gamma: Tensor
    erase: Tensor | None = None
    add: Tensor | None = None


def head_param_size(memory_width: int, num_shifts: int, write: bool) -> int:
    """Length of one head's raw parameter vector: key, beta, g, s, gamma (+ erase, add for a write head)."""
    return memory_width + 3 + num_shifts + (2 * memory_width if write else 0)


def split_head_params(raw: Tensor, memory_width: int, num_shifts: int, write: bool) -> HeadParams:
    """Split ``raw [B, H, head_param_size]`` and apply the activations.

    key: identity; beta: softplus; g: sigmoid; s: softmax; gamma: 1 + softplus; erase: sigmoid; add: tanh.
    """
    m, s = memory_width, num_shifts
    key, beta, gate, shift, gamma = raw[..., : m + 3 + s].split([m, 1, 1, s, 1], dim=-1)
    params = {
        "key": key,
        "beta": F.softplus(beta.squeeze(-1)),
        "gate": torch.sigmoid(gate.squeeze(-1)),
        "shift": torch.softmax(shift, dim=-1),
        "gamma": 1 + F.softplus(gamma.squeeze(-1)),
    }
    if write:
        erase, add = raw[..., m + 3 + s :].split([m, m], dim=-1)
        params["erase"] = torch.sigmoid(erase)
        params["add"] = torch.tanh(add)
    return HeadParams(**params)


def address(memory: Tensor, w_prev: Tensor, head: HeadParams, offsets: Sequence[int]) -> Tensor:
    """The four addressing stages of section 3.3, in order, from the previous weighting ``w_{t-1}``:

    1. content addressing   ``w^c(i) = softmax_i(beta * K(k, M(i)))``, ``K`` the cosine similarity (eq. 5-6)
    2. interpolation        ``w^g = g * w^c + (1 - g) * w_{t-1}``                               (eq. 7)
    3. convolutional shift  ``w~(i) = sum_j w^g(j) s(i - j)``, indices modulo N                (eq. 8)
    4. sharpening           ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma``, ``gamma >= 1``          (eq. 9)

    Args:
        memory: ``[B, N, Mw]``; w_prev: ``[B, H, N]`` the heads' previous weightings.

    Returns:
        ``[B, H, N]`` the new weightings (each a distribution over slots).
    """
    wc = content_weighting(memory, head.key, head.beta)
    wg = interpolate(wc, w_prev, head.gate)
    ws = circular_shift(wg, head.shift, offsets)
    return sharpen(ws, head.gamma)


def read_memory(memory: Tensor, weights: Tensor) -> Tensor:
    """Read (eq. 2): ``r_h = sum_i w_h(i) M(i)``; memory ``[B, N, Mw]``, weights ``[B, H, N]`` -> ``[B, H, Mw]``."""
    return weights @ memory


def write_memory(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """Write (eq. 3-4): ``M <- M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T``.

    Args:
        memory: ``[B, N, Mw]``; weights: ``[B, W, N]``; erase, add: ``[B, W, Mw]``.

    Returns:
        the new memory ``[B, N, Mw]`` (the input is not modified).
    """
    if weights.shape[1] == 1:  # one write head (the common case): skip the product over heads
        keep = 1 - weights.transpose(1, 2) @ erase  # [B, N, Mw]
    else:
        keep = (1 - weights.unsqueeze(-1) * erase.unsqueeze(-2)).prod(dim=1)
    return memory * keep + weights.transpose(1, 2) @ add


# --------------------------------------------------------------------------------------------------
# the machine


class NTMState(NamedTuple):
    """The whole state of an NTM between steps.

    memory ``[B, N, Mw]``; read_weights ``[B, R, N]``; write_weights ``[B, W, N]``; reads ``[B, R, Mw]``
    (the last read vectors, fed to the controller at the next step); controller: the controller's
    state (``(h, c)`` for the LSTM, a tuple of per-block histories for the transformer).
    """

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    reads: Tensor
    controller: Any


class NTMOutput(NamedTuple):
    """``outputs [T, B, out]`` (logits); ``state`` after the last step; with ``record=True`` the
    weightings at every step, ``read_weights [T, B, R, N]`` and ``write_weights [T, B, W, N]``."""

    outputs: Tensor
    state: NTMState
    read_weights: Tensor | None = None
    write_weights: Tensor | None = None


class NTM(nn.Module):
    """Neural Turing Machine with an LSTM (default) or causal transformer controller.

    At each step: the controller sees ``[x_t, r_{t-1}]``; the write heads address (:func:`address`) the
    memory ``M_{t-1}`` and erase/add to give ``M_t`` (eq. 3-4: ``M <- M * (1 - w e^T) + w a^T``; with
    several write heads the erases multiply and the adds sum); the read heads address ``M_t`` and read
    ``r_t = sum_i w(i) M_t(i)`` (eq. 2); the output is ``Linear([controller output, r_t])`` (logits; use a
    sigmoid for bits).

    The initial memory is the constant ``1e-6`` (Collier & Beel 2018 found a small constant the most
    reliable start), the initial weightings are all on slot 0, the initial reads are read from it.

    Args:
        input_size, output_size: widths of ``x_t`` and ``y_t``.
        memory_size: N slots (128 in the paper's copy task); memory_width: Mw (20).
        read_heads, write_heads: number of heads of each kind (1 and 1 in the paper).
        controller: ``"lstm"`` or ``"transformer"``; controller_size: LSTM hidden size / transformer width.
        shifts: the allowed shift offsets (``(-1, 0, 1)`` in the paper).
        transformer_layers, transformer_heads: depth and attention heads of the transformer controller.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        memory_size: int = 128,
        memory_width: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        controller: str = "lstm",
        controller_size: int = 100,
        shifts: Sequence[int] = (-1, 0, 1),
        transformer_layers: int = 2,
        transformer_heads: int = 4,
    ) -> None:
        super().__init__()
        positive_ints(
            "NTM",
            input_size=input_size,
            output_size=output_size,
            memory_size=memory_size,
            memory_width=memory_width,
            read_heads=read_heads,
            write_heads=write_heads,
            controller_size=controller_size,
        )
        if not shifts or any(not isinstance(o, int) for o in shifts) or len(set(shifts)) != len(shifts):
            raise ConfigError(
                f"NTM shifts={tuple(shifts)!r} is invalid; give distinct integer offsets such as (-1, 0, 1)"
            )
        self.memory_size, self.memory_width = memory_size, memory_width
        self.read_heads, self.write_heads = read_heads, write_heads
        self.shifts = tuple(int(o) for o in shifts)
        ctrl_in = input_size + read_heads * memory_width
        self.controller = make_controller(
            "NTM", controller, LSTMController, ctrl_in, controller_size, transformer_heads, transformer_layers
        )
        hidden = self.controller.output_size
        s = len(self.shifts)
        self.read_size = head_param_size(memory_width, s, write=False)
        self.write_size = head_param_size(memory_width, s, write=True)
        self.heads = nn.Linear(hidden, read_heads * self.read_size + write_heads * self.write_size)
        self.out = nn.Linear(hidden + read_heads * memory_width, output_size)

    def initial_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> NTMState:
        """The state before the first input (see the class docstring)."""
        like = self.out.weight.new_zeros((), dtype=dtype, device=device)
        memory = like.new_full((batch_size, self.memory_size, self.memory_width), 1e-6)
        rw = like.new_zeros(batch_size, self.read_heads, self.memory_size)
        rw[..., 0] = 1
        ww = like.new_zeros(batch_size, self.write_heads, self.memory_size)
        ww[..., 0] = 1
        return NTMState(memory, rw, ww, read_memory(memory, rw), self.controller.initial_state(batch_size, like))

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """One time step: ``x [B, input_size]`` -> ``(y [B, output_size], new state)``."""
        b = x.shape[0]
        h, ctrl = self.controller(torch.cat([x, state.reads.flatten(1)], dim=-1), state.controller)
        raw = self.heads(h)
        raw_r = raw[:, : self.read_heads * self.read_size].view(b, self.read_heads, self.read_size)
        raw_w = raw[:, self.read_heads * self.read_size :].view(b, self.write_heads, self.write_size)
        wp = split_head_params(raw_w, self.memory_width, len(self.shifts), write=True)
        ww = address(state.memory, state.write_weights, wp, self.shifts)
        memory = write_memory(state.memory, ww, wp.erase, wp.add)  # type: ignore[arg-type]
        rp = split_head_params(raw_r, self.memory_width, len(self.shifts), write=False)
        rw = address(memory, state.read_weights, rp, self.shifts)
        reads = read_memory(memory, rw)
        y = self.out(torch.cat([h, reads.flatten(1)], dim=-1))
        return y, NTMState(memory, rw, ww, reads, ctrl)

    def forward(self, inputs: Tensor, state: NTMState | None = None, record: bool = False) -> NTMOutput:
        """Run over ``inputs [T, B, input_size]`` from ``state`` (default: :meth:`initial_state`)."""
        if state is None:
            state = self.initial_state(inputs.shape[1], inputs.dtype, inputs.device)
        outs, rws, wws = [], [], []
        for x in inputs:
            y, state = self.step(x, state)
            outs.append(y)
            if record:
                rws.append(state.read_weights)
                wws.append(state.write_weights)
        if record:
            return NTMOutput(torch.stack(outs), state, torch.stack(rws), torch.stack(wws))
        return NTMOutput(torch.stack(outs), state)


def lstm_sequence_baseline(input_size: int, output_size: int, hidden_size: int = 256, layers: int = 3) -> nn.Module:
    """The paper's LSTM baseline for the copy task: a stacked LSTM (3 x 256 in the paper) and a linear read-out.

    Call it as ``model(inputs [T, B, input_size]) -> logits [T, B, output_size]``.
    """
    return _LSTMSequence(input_size, output_size, hidden_size, layers)


class _LSTMSequence(nn.Module):
    def __init__(self, input_size: int, output_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, layers)
        self.out = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: Tensor) -> Tensor:
        h, _ = self.lstm(inputs)
        return self.out(h)


def copy_bits_wrong(logits: Tensor, targets: Tensor) -> Tensor:
    """Bits wrong per sequence: ``sum_t,k |1[sigmoid(y) > 0.5] - target|``; ``[T, B, bits]`` -> ``[B]``."""
    return ((logits > 0).to(targets.dtype) - targets).abs().sum(dim=(0, 2))


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
