"""Neural Turing Machine: each addressing stage on hand-computed cases, read/write semantics, the copy task."""

from __future__ import annotations

import math

import pytest
import torch

from fastadapt.core.errors import ConfigError
from fastadapt.data import CopyTask, copy_batch
from fastadapt.nn import (
    NTM,
    TransformerController,
    address,
    circular_shift,
    content_weighting,
    copy_bits_wrong,
    cosine_similarity,
    interpolate,
    read_memory,
    sharpen,
    split_head_params,
    write_memory,
)
from fastadapt.nn.controllers import sinusoidal_position
from fastadapt.nn.ntm import head_param_size

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_cosine_similarity_on_hand_cases():
    key = t([[1.0, 0.0]])
    memory = t([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]]])
    sim = cosine_similarity(key, memory, eps=0.0)
    torch.testing.assert_close(sim, t([[1.0, 0.0, 1 / math.sqrt(2), -1.0]]))


def test_content_weighting_is_softmax_of_beta_times_cosine():
    memory = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    key = t([[[1.0, 0.0]]])
    w = content_weighting(memory, key, t([[2.0]]))
    e = [math.exp(2.0), math.exp(0.0), math.exp(2.0 / math.sqrt(2))]
    torch.testing.assert_close(w, t([[[v / sum(e) for v in e]]]))
    # beta = 0: uniform whatever the key
    torch.testing.assert_close(content_weighting(memory, key, t([[0.0]])), torch.full((1, 1, 3), 1 / 3, dtype=D))


def test_interpolation_gate_mixes_content_and_previous_weighting():
    wc, wp = t([[0.7, 0.2, 0.1]]), t([[0.0, 0.0, 1.0]])
    torch.testing.assert_close(interpolate(wc, wp, t([0.25])), t([[0.175, 0.05, 0.775]]))
    torch.testing.assert_close(interpolate(wc, wp, t([1.0])), wc)
    torch.testing.assert_close(interpolate(wc, wp, t([0.0])), wp)


def test_circular_shift_moves_focus_and_wraps_around():
    offsets = (-1, 0, 1)
    w = t([0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(
        circular_shift(w, t([0.0, 0.0, 1.0]), offsets), t([0.4, 0.1, 0.2, 0.3])
    )  # +1, last wraps to first
    torch.testing.assert_close(
        circular_shift(w, t([1.0, 0.0, 0.0]), offsets), t([0.2, 0.3, 0.4, 0.1])
    )  # -1, first wraps to last
    torch.testing.assert_close(circular_shift(w, t([0.0, 1.0, 0.0]), offsets), w)
    torch.testing.assert_close(circular_shift(w, t([0.5, 0.0, 0.5]), offsets), t([0.3, 0.2, 0.3, 0.2]))
    # the paper's definition w~(i) = sum_j w(j) s(i - j mod N), written out as a double loop
    g = torch.Generator().manual_seed(0)
    w = torch.rand(6, generator=g, dtype=D)
    s = torch.softmax(torch.randn(5, generator=g, dtype=D), 0)
    offs = (-2, -1, 0, 1, 2)
    ref = torch.zeros(6, dtype=D)
    for i in range(6):
        for j in range(6):
            for k, o in enumerate(offs):
                if (i - j) % 6 == o % 6:
                    ref[i] += w[j] * s[k]
    torch.testing.assert_close(circular_shift(w, s, offs), ref)
    # offsets that are not -k..k take the general path: only forward moves by 0 or 2
    s2 = t([0.25, 0.75])
    ref2 = torch.stack([0.25 * w[i] + 0.75 * w[(i - 2) % 6] for i in range(6)])
    torch.testing.assert_close(circular_shift(w, s2, (0, 2)), ref2)


def test_sharpening_raises_to_gamma_and_renormalises():
    w = t([[0.2, 0.3, 0.5]])
    torch.testing.assert_close(sharpen(w, t([2.0]), eps=0.0), t([[0.04, 0.09, 0.25]]) / 0.38)
    torch.testing.assert_close(sharpen(w, t([1.0]), eps=0.0), w)
    assert sharpen(w, t([50.0]))[0].argmax() == 2 and sharpen(w, t([50.0]))[0, 2] > 0.999


def test_head_activations_respect_their_ranges_and_weightings_sum_to_one():
    g = torch.Generator().manual_seed(1)
    b, h, n, m, offs = 3, 2, 7, 4, (-1, 0, 1)
    raw = 3 * torch.randn(b, h, head_param_size(m, len(offs), write=True), generator=g, dtype=D)
    p = split_head_params(raw, m, len(offs), write=True)
    assert (p.beta >= 0).all() and (p.gamma >= 1).all() and ((p.gate >= 0) & (p.gate <= 1)).all()
    assert ((p.erase >= 0) & (p.erase <= 1)).all() and (p.add.abs() <= 1).all()
    torch.testing.assert_close(p.shift.sum(-1), torch.ones(b, h, dtype=D))
    memory = torch.randn(b, n, m, generator=g, dtype=D)
    w_prev = torch.softmax(torch.randn(b, h, n, generator=g, dtype=D), -1)
    w = address(memory, w_prev, p, offs)
    assert w.shape == (b, h, n) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(b, h, dtype=D))


def test_write_erases_then_adds_and_erases_of_two_heads_multiply():
    memory = torch.ones(1, 3, 2, dtype=D)
    w = t([[[1.0, 0.0, 0.5]]])
    new = write_memory(memory, w, t([[[1.0, 0.0]]]), t([[[0.0, 2.0]]]))
    torch.testing.assert_close(new, t([[[0.0, 3.0], [1.0, 1.0], [0.5, 2.0]]]))
    assert torch.equal(memory, torch.ones(1, 3, 2, dtype=D))  # input untouched
    # two heads on slot 0: erase 0.5 and 0.5 -> keep 0.25; adds 1 and 2 -> +3 (Graves: erases first, then adds)
    w2 = t([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    new2 = write_memory(memory, w2, t([[[0.5, 0.5], [0.5, 0.5]]]), t([[[1.0, 1.0], [2.0, 2.0]]]))
    torch.testing.assert_close(new2, t([[[3.25, 3.25], [1.0, 1.0], [1.0, 1.0]]]))


def test_read_is_weighted_sum_of_rows():
    memory = t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    torch.testing.assert_close(
        read_memory(memory, t([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])), t([[[2.0, 3.0], [5.0, 6.0]]])
    )


@pytest.mark.parametrize("controller", ["lstm", "transformer"])
def test_ntm_runs_with_normalised_weightings_and_gradients_reach_every_parameter(controller):
    torch.manual_seed(0)
    ntm = NTM(
        9, 8, memory_size=16, memory_width=6, read_heads=2, write_heads=1, controller=controller, controller_size=16
    ).double()
    batch = copy_batch(3, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    out = ntm(batch.inputs, record=True)
    assert out.outputs.shape == (7, 2, 8)
    assert out.read_weights.shape == (7, 2, 2, 16) and out.write_weights.shape == (7, 2, 1, 16)
    torch.testing.assert_close(out.read_weights.sum(-1), torch.ones(7, 2, 2, dtype=D))
    torch.testing.assert_close(out.write_weights.sum(-1), torch.ones(7, 2, 1, dtype=D))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(batch.output_steps(out.outputs), batch.targets)
    loss.backward()
    for name, p in ntm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # state in, state out: running in two halves from the returned state gives the same outputs
    first = ntm(batch.inputs[:3])
    second = ntm(batch.inputs[3:], first.state)
    torch.testing.assert_close(torch.cat([first.outputs, second.outputs]), out.outputs)


def test_transformer_controller_equals_a_causally_masked_full_sequence_run():
    torch.manual_seed(0)
    ctrl = TransformerController(5, d_model=8, heads=2, layers=2).double()
    xs = torch.randn(6, 3, 5, dtype=D)
    state = ctrl.initial_state(3, xs)
    outs = []
    for x in xs:
        o, state = ctrl(x, state)
        outs.append(o)
    # reference: whole sequence at once with an explicit causal mask
    h = torch.stack([ctrl.embed(x) + sinusoidal_position(i, 8, x) for i, x in enumerate(xs)], dim=1)  # [B, T, D]
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    for blk in ctrl.blocks:
        b, n, d = h.shape
        q = blk.q(blk.norm1(h)).view(b, n, 2, 4).transpose(1, 2)
        k, v = blk.kv(blk.norm1(h)).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / 2.0
        att = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
        h = h + blk.proj(att.transpose(1, 2).reshape(b, n, d))
        h = h + blk.mlp(blk.norm2(h))
    torch.testing.assert_close(torch.stack(outs, 1), ctrl.norm(h))


def test_copy_task_layout_and_seeding():
    task = CopyTask(bits=8, min_length=1, max_length=20, seed=3)
    b = task.batch(5, 4)
    length = b.length
    assert 1 <= length <= 20
    assert b.inputs.shape == (2 * length + 1, 4, 9) and b.targets.shape == (length, 4, 8)
    assert torch.equal(b.inputs[:length, :, :8], b.targets)
    assert (
        (b.inputs[:length, :, 8] == 0).all()
        and (b.inputs[length, :, 8] == 1).all()
        and (b.inputs[length, :, :8] == 0).all()
    )
    assert (b.inputs[length + 1 :] == 0).all()
    assert set(b.targets.unique().tolist()) <= {0.0, 1.0}
    again = task.batch(5, 4)
    assert torch.equal(again.inputs, b.inputs)
    assert not torch.equal(task.batch(6, 4, length=length).targets, b.targets)
    lengths = {task.batch(s, 1).length for s in range(400)}
    assert lengths == set(range(1, 21))
    assert task.batch(0, 2, length=50).length == 50


def test_bits_wrong_counts_per_sequence():
    targets = t([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])  # [T=2, B=2, bits=2]
    logits = t([[[3.0, -1.0], [-2.0, 1.0]], [[1.0, -1.0], [2.0, 2.0]]])
    torch.testing.assert_close(copy_bits_wrong(logits, targets), t([1.0, 2.0]))


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError):
        NTM(9, 8, controller="gru")
    with pytest.raises(ConfigError):
        NTM(9, 8, memory_size=0)
    with pytest.raises(ConfigError):
        NTM(9, 8, shifts=(0, 0))
    with pytest.raises(ConfigError):
        CopyTask(min_length=5, max_length=2)
