"""Neural Turing Machine (Graves, Wayne & Danihelka 2014, "Neural Turing Machines", arXiv:1410.5401).

A controller network reads from and writes to an external memory ``M`` of ``N`` slots of width
``M_w`` through *heads*. Each head emits, from the controller output, the parameters of an
addressing mechanism (section 3.3 of the paper) that turns the previous weighting ``w_{t-1}``
into a new one ``w_t`` (a distribution over the N slots):

1. content addressing   ``w^c(i) = softmax_i(beta * K(k, M(i)))``, ``K`` the cosine similarity (eq. 5-6)
2. interpolation        ``w^g = g * w^c + (1 - g) * w_{t-1}``                               (eq. 7)
3. convolutional shift  ``w~(i) = sum_j w^g(j) s(i - j)``, indices modulo N                (eq. 8)
4. sharpening           ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma``, ``gamma >= 1``          (eq. 9)

Reading is ``r = sum_i w(i) M(i)`` (eq. 2); writing is an erase then an add (eq. 3-4):
``M <- M * (1 - w e^T) + w a^T``; with several write heads the erases multiply and the adds sum.

Everything is a free function of tensors, plus small modules that hold parameters; the machine
itself is state in, state out: :meth:`NTM.step` maps ``(x_t, NTMState) -> (y_t, NTMState)``.

Shapes: ``B`` batch, ``N`` memory slots, ``Mw`` slot width, ``R`` read heads, ``W`` write heads,
``S`` number of allowed shifts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError

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
    """:func:`cosine_similarity` of every head's key with every slot: ``keys [B, H, Mw]``, ``memory [B, N, Mw]`` -> ``[B, H, N]``.

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
    """Interpolation (eq. 7): ``g * w^c + (1 - g) * w_{t-1}``; ``gate`` is ``[..., ]`` in [0, 1], weights ``[..., N]``."""
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
    """The four addressing stages in order: content, interpolation, shift, sharpening.

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
# controllers: modules that hold parameters; state in, state out


class LSTMController(nn.Module):
    """One LSTM cell; state ``(h, c)``, each ``[B, hidden]``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, Tensor]:
        z = like.new_zeros(batch_size, self.output_size)
        return z, z

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.cell(x, state)
        return h, (h, c)


def sinusoidal_position(position: int, dim: int, like: Tensor) -> Tensor:
    """The sinusoidal position code of Vaswani et al. 2017 for one position: ``[dim]``."""
    i = torch.arange(0, dim, 2, dtype=like.dtype, device=like.device)
    angle = position / torch.pow(torch.tensor(10000.0, dtype=like.dtype, device=like.device), i / dim)
    out = like.new_zeros(dim)
    out[0::2] = torch.sin(angle)
    out[1::2] = torch.cos(angle[: dim // 2])
    return out


class _CausalBlock(nn.Module):
    """Pre-norm transformer block applied to the newest position only, attending to all positions so far."""

    def __init__(self, d_model: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.kv, self.proj = (
            nn.Linear(d_model, d_model),
            nn.Linear(d_model, 2 * d_model),
            nn.Linear(d_model, d_model),
        )
        self.mlp = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x_new: Tensor, history: Tensor) -> Tensor:
        """``x_new [B, D]`` the newest input to this block, ``history [B, t, D]`` all inputs so far (x_new last)."""
        b, t, d = history.shape
        hd = d // self.heads
        q = self.q(self.norm1(x_new)).view(b, self.heads, 1, hd)
        k, v = self.kv(self.norm1(history)).view(b, t, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).reshape(b, d)
        h = x_new + self.proj(att)
        return h + self.mlp(self.norm2(h))


class TransformerController(nn.Module):
    """A small causal transformer over the controller inputs seen so far (an alternative to the LSTM).

    The state is a tuple with, for each block, the inputs that block has seen so far ``[B, t, D]``
    (a key/value cache of the layer inputs), so one step costs ``O(t)`` and the output at step t is
    exactly that of a causally-masked transformer run over steps ``0..t``. Positions use the
    sinusoidal code, so sequences longer than any seen in training still have a position.
    """

    def __init__(
        self, input_size: int, d_model: int = 64, heads: int = 4, layers: int = 2, ff: int | None = None
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("heads", heads), ("layers", layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"transformer {name}={v!r} is invalid; it must be a positive integer")
        if d_model % heads or d_model % 2:
            raise ConfigError(f"transformer d_model={d_model} must be even and divisible by heads={heads}")
        self.embed = nn.Linear(input_size, d_model)
        self.blocks = nn.ModuleList([_CausalBlock(d_model, heads, ff or 2 * d_model) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.output_size = d_model

    def initial_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        return tuple(like.new_zeros(batch_size, 0, self.output_size) for _ in self.blocks)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        t = state[0].shape[1]
        h = self.embed(x) + sinusoidal_position(t, self.output_size, x)
        new_state = []
        for block, hist in zip(self.blocks, state):
            hist = torch.cat([hist, h.unsqueeze(1)], dim=1)
            new_state.append(hist)
            h = block(h, hist)
        return self.norm(h), tuple(new_state)


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

    At each step: the controller sees ``[x_t, r_{t-1}]``; the write heads address the memory
    ``M_{t-1}`` and erase/add to give ``M_t``; the read heads address ``M_t`` and read ``r_t``; the
    output is ``Linear([controller output, r_t])`` (logits; use a sigmoid for bits).

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
        for name, v in (
            ("input_size", input_size),
            ("output_size", output_size),
            ("memory_size", memory_size),
            ("memory_width", memory_width),
            ("read_heads", read_heads),
            ("write_heads", write_heads),
            ("controller_size", controller_size),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"NTM {name}={v!r} is invalid; it must be a positive integer")
        if not shifts or any(not isinstance(o, int) for o in shifts) or len(set(shifts)) != len(shifts):
            raise ConfigError(
                f"NTM shifts={tuple(shifts)!r} is invalid; give distinct integer offsets such as (-1, 0, 1)"
            )
        self.memory_size, self.memory_width = memory_size, memory_width
        self.read_heads, self.write_heads = read_heads, write_heads
        self.shifts = tuple(int(o) for o in shifts)
        ctrl_in = input_size + read_heads * memory_width
        if controller == "lstm":
            self.controller: nn.Module = LSTMController(ctrl_in, controller_size)
        elif controller == "transformer":
            self.controller = TransformerController(ctrl_in, controller_size, transformer_heads, transformer_layers)
        else:
            raise ConfigError(f"NTM controller={controller!r} is unknown; choose 'lstm' or 'transformer'")
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
