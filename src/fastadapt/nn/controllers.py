"""The controllers of the memory models (an LSTM cell or a small causal transformer), state in, state
out, and the checks the NTM and the MANN share."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError


def positive_ints(owner: str, **values: Any) -> None:
    """A one-line :class:`ConfigError` naming the first of ``values`` that is not a positive integer."""
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{owner} {name}={v!r} is invalid; it must be a positive integer")


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
        positive_ints("transformer", d_model=d_model, heads=heads, layers=layers)
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


def make_controller(
    owner: str, kind: str, lstm: type[nn.Module], input_size: int, size: int, heads: int, layers: int
) -> nn.Module:
    """``lstm(input_size, size)`` for ``kind="lstm"``, a :class:`TransformerController` of width ``size`` for
    ``kind="transformer"``; any other kind is a one-line :class:`ConfigError` naming ``owner``."""
    if kind == "lstm":
        return lstm(input_size, size)
    if kind == "transformer":
        return TransformerController(input_size, size, heads, layers)
    raise ConfigError(f"{owner} controller={kind!r} is unknown; choose 'lstm' or 'transformer'")
