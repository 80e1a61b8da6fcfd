"""The copy task of the Neural Turing Machine paper (Graves et al. 2014, section 4.1) as seeded batches
(:class:`CopyTask`, :func:`copy_batch`; the layout in :class:`CopyBatch`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastadapt.core.errors import ConfigError


class CopyBatch(NamedTuple):
    """``inputs [2L+1, B, bits+1]``, ``targets [L, B, bits]`` (float 0/1); outputs are read at steps ``L+1..2L``.

    A sequence of ``L`` random binary vectors of ``bits`` bits (8 in the paper) is shown, followed by a
    delimiter flag on an extra input channel; the network must then reproduce the sequence with no
    further input (``B`` sequences, all of length ``L``):

    =========  ======================  ============================================================
    field      shape                   meaning
    =========  ======================  ============================================================
    inputs     ``[2L+1, B, bits+1]``   steps ``0..L-1``: the vectors (last channel 0); step ``L``:
                                       the delimiter (only the last channel is 1); steps ``L+1..2L``: zeros
    targets    ``[L, B, bits]``        the vectors, to be produced at steps ``L+1..2L``
    =========  ======================  ============================================================
    """

    inputs: Tensor
    targets: Tensor

    @property
    def length(self) -> int:
        return self.targets.shape[0]

    def output_steps(self, outputs: Tensor) -> Tensor:
        """The part of ``outputs [2L+1, B, *]`` that must match ``targets``: steps ``L+1..2L``."""
        return outputs[self.length + 1 :]


def copy_batch(
    length: int,
    batch_size: int,
    bits: int = 8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> CopyBatch:
    """A batch of ``batch_size`` copy sequences of ``length`` random ``bits``-bit vectors (layout in
    :class:`CopyBatch`)."""
    for name, v in (("length", length), ("batch_size", batch_size), ("bits", bits)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"copy task {name}={v!r} is invalid; it must be a positive integer")
    seq = torch.randint(0, 2, (length, batch_size, bits), generator=generator).to(dtype)
    inputs = torch.zeros(2 * length + 1, batch_size, bits + 1, dtype=dtype)
    inputs[:length, :, :bits] = seq
    inputs[length, :, bits] = 1
    return CopyBatch(inputs, seq)


class CopyTask:
    """A seeded stream of copy batches with lengths uniform in ``[min_length, max_length]`` (1..20 in the
    paper; generalisation is tested on longer sequences).

    ``batch(step, batch_size)`` is a pure function of ``(seed, step)``: one length per batch (every
    sequence of a batch has the same length, so no padding is needed), drawn with the vectors.
    """

    def __init__(self, bits: int = 8, min_length: int = 1, max_length: int = 20, seed: int = 0) -> None:
        if not isinstance(min_length, int) or not isinstance(max_length, int) or not 1 <= min_length <= max_length:
            raise ConfigError(
                f"copy task lengths {min_length!r}..{max_length!r} are invalid; "
                "need integers 1 <= min_length <= max_length"
            )
        if not isinstance(bits, int) or bits < 1:
            raise ConfigError(f"copy task bits={bits!r} is invalid; it must be a positive integer")
        self.bits, self.min_length, self.max_length, self.seed = bits, min_length, max_length, int(seed)

    @property
    def input_size(self) -> int:
        return self.bits + 1

    @property
    def output_size(self) -> int:
        return self.bits

    def batch(
        self, step: int, batch_size: int, length: int | None = None, dtype: torch.dtype = torch.float32
    ) -> CopyBatch:
        """Batch number ``step``; ``length`` overrides the drawn length (for generalisation tests)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) % (2**63))
        drawn = int(torch.randint(self.min_length, self.max_length + 1, (1,), generator=g))
        return copy_batch(length if length is not None else drawn, batch_size, self.bits, g, dtype)
