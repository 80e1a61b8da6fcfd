"""Sequence models with a state, registered as models (``model.name``): ``ntm`` (the NTM), ``lstm-seq``
(a stacked LSTM) and ``transformer-seq`` (the NTM's causal transformer controller with a linear read-out).
Each keeps the interface :class:`SequenceRun` describes; each factory takes the input shape ``(S, in)``
and ``out_features`` from the engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.controllers import TransformerController, positive_ints
from fastadapt.nn.ntm import NTM


class SequenceRun(NamedTuple):
    """``outputs [B, S, out]`` logits; ``state`` after the last step; NTM with ``record``: ``read_weights
    [B, S, R, N]``, ``write_weights [B, S, W, N]``.

    Every sequence model keeps one interface, which :class:`fastadapt.algorithms.ntm.NTMLearner` uses:
    ``run(x [B, S, in], state=None, record=False) -> SequenceRun`` (``state=None``: the model's initial
    state; ``record`` matters to the NTM only) and ``forward(x [B, S, in]) -> [B, out]``, the logits of the
    last step (what the engine's model check runs: one vector per example).
    """

    outputs: Tensor
    state: Any
    read_weights: Tensor | None = None
    write_weights: Tensor | None = None


def _sizes(input_shape: Sequence[int], out_features: int | None, what: str) -> tuple[int, int]:
    if out_features is None:
        raise ConfigError(f"model {what} predicts bits; use it with a sequence task (data.dataset = copy or recall)")
    if len(input_shape) != 2:
        raise ConfigError(
            f"model {what} takes sequences [steps, channels]; the task gives examples of shape {list(input_shape)} "
            f"(use data.dataset = copy or recall)"
        )
    return int(input_shape[-1]), int(out_features)


class NTMSequence(nn.Module):
    """The NTM (:class:`~fastadapt.nn.ntm.NTM`) batch-first; state: :class:`~fastadapt.nn.ntm.NTMState`."""

    def __init__(self, input_size: int, output_size: int, **ntm: Any) -> None:
        super().__init__()
        self.ntm = NTM(input_size, output_size, **ntm)

    def run(self, x: Tensor, state: Any = None, record: bool = False) -> SequenceRun:
        out = self.ntm(x.transpose(0, 1), state, record=record)
        if record:
            return SequenceRun(
                out.outputs.transpose(0, 1),
                out.state,
                out.read_weights.transpose(0, 1),  # type: ignore[union-attr]
                out.write_weights.transpose(0, 1),
            )  # type: ignore[union-attr]
        return SequenceRun(out.outputs.transpose(0, 1), out.state)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).outputs[:, -1]


class LSTMSequence(nn.Module):
    """A stacked LSTM and a linear read-out; state ``(h, c)``, each ``[layers, B, hidden]``."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 120, num_layers: int = 1) -> None:
        super().__init__()
        positive_ints("lstm-seq", hidden_size=hidden_size, num_layers=num_layers)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)

    def run(self, x: Tensor, state: Any = None, record: bool = False) -> SequenceRun:
        h, state = self.lstm(x, state)
        return SequenceRun(self.out(h), state)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).outputs[:, -1]


class TransformerSequence(nn.Module):
    """The NTM's causal transformer controller (:class:`~fastadapt.nn.controllers.TransformerController`,
    sinusoidal positions) and a linear read-out; state: each block's inputs so far (a key/value cache)."""

    def __init__(self, input_size: int, output_size: int, d_model: int = 60, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.controller = TransformerController(input_size, d_model, heads, layers)
        self.out = nn.Linear(d_model, output_size)

    def run(self, x: Tensor, state: Any = None, record: bool = False) -> SequenceRun:
        if state is None:
            state = self.controller.initial_state(x.shape[0], x)
        outs = []
        for t in range(x.shape[1]):
            h, state = self.controller(x[:, t], state)
            outs.append(h)
        return SequenceRun(self.out(torch.stack(outs, dim=1)), state)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).outputs[:, -1]


def ntm(
    input_shape: Sequence[int],
    out_features: int | None = None,
    controller: str = "lstm",
    controller_size: int = 100,
    memory_size: int = 128,
    memory_width: int = 20,
    read_heads: int = 1,
    write_heads: int = 1,
    shifts: Sequence[int] = (-1, 0, 1),
    transformer_layers: int = 2,
    transformer_heads: int = 4,
) -> NTMSequence:
    """Model ``ntm``: the NTM of Graves et al. 2014 (defaults: the paper's copy-task machine, 128 x 20 memory)."""
    i, o = _sizes(input_shape, out_features, "ntm")
    return NTMSequence(
        i,
        o,
        memory_size=memory_size,
        memory_width=memory_width,
        read_heads=read_heads,
        write_heads=write_heads,
        controller=controller,
        controller_size=controller_size,
        shifts=tuple(shifts),
        transformer_layers=transformer_layers,
        transformer_heads=transformer_heads,
    )


def lstm_seq(
    input_shape: Sequence[int], out_features: int | None = None, hidden_size: int = 120, num_layers: int = 1
) -> LSTMSequence:
    """Model ``lstm-seq``: a plain LSTM over the sequence (default 120 units: 63,848 parameters on the copy
    task, the NTM preset has 62,660)."""
    i, o = _sizes(input_shape, out_features, "lstm-seq")
    return LSTMSequence(i, o, hidden_size, num_layers)


def transformer_seq(
    input_shape: Sequence[int], out_features: int | None = None, d_model: int = 60, heads: int = 4, layers: int = 2
) -> TransformerSequence:
    """Model ``transformer-seq``: a plain causal transformer over the sequence."""
    i, o = _sizes(input_shape, out_features, "transformer-seq")
    return TransformerSequence(i, o, d_model, heads, layers)
