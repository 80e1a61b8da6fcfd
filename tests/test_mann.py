"""MANN: least-recently-used access on hand-computed cases, episode sequences, accuracy by instance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastadapt import TaskBatch
from fastadapt.algorithms import algorithm_class
from fastadapt.algorithms.mann import MANN, episode_sequence, instance_accuracy, instance_numbers, previous_onehot
from fastadapt.core.errors import ConfigError
from fastadapt.nn import (
    LRUMemoryCore,
    content_read_weights,
    least_used,
    lru_write,
    lru_write_weights,
    read_memory,
    usage_update,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_least_used_marks_the_n_smallest_usages_ties_by_index():
    torch.testing.assert_close(least_used(t([[0.5, 0.1, 0.3, 0.1]]), 2), t([[0.0, 1.0, 0.0, 1.0]]))
    torch.testing.assert_close(least_used(t([[0.5, 0.1, 0.3, 0.2]]), 1), t([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(least_used(torch.zeros(1, 4, dtype=D), 2), t([[1.0, 1.0, 0.0, 0.0]]))


def test_lru_write_weights_interpolate_previous_reads_and_least_used():
    w_r = t([[[0.7, 0.1, 0.1, 0.1]]])
    w_lu = t([[0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(lru_write_weights(w_r, w_lu, t([[0.0]])), t([[[0.35, 0.55, 0.05, 0.55]]]))
    # sigmoid(log 3) = 0.75
    torch.testing.assert_close(lru_write_weights(w_r, w_lu, t([[math.log(3.0)]])), t([[[0.525, 0.325, 0.075, 0.325]]]))


def test_usage_decays_and_adds_reads_and_writes_of_all_heads():
    usage = t([[1.0, 0.0, 2.0]])
    w_r = t([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    w_w = t([[[0.0, 1.0, 0.0], [0.25, 0.25, 0.5]]])
    torch.testing.assert_close(usage_update(usage, w_r, w_w, 0.95), t([[0.95 + 0.75, 1.75, 1.9 + 1.5]]))


def test_lru_write_zeroes_least_used_slot_then_adds_keys():
    memory = t([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    usage = t([[0.4, 0.1, 0.9]])  # slot 1 is least used
    w_w = t([[[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]])
    keys = t([[[1.0, -1.0], [2.0, 4.0]]])
    new = lru_write(memory, usage, w_w, keys)
    torch.testing.assert_close(new, t([[[2.0, 3.0], [1.0, -1.0], [4.0, 5.0]]]))
    assert torch.equal(memory, t([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]]))


def test_core_step_matches_the_equations_written_out():
    torch.manual_seed(0)
    core = LRUMemoryCore(6, 3, memory_size=5, memory_width=4, read_heads=2, controller_size=8).double()
    state = core.initial_state(2, torch.zeros((), dtype=D))
    x, y = torch.randn(2, 6, dtype=D), F.one_hot(torch.tensor([0, 2]), 3).double()
    for _ in range(3):  # a few steps so that usage, memory and reads are not trivial
        _, state = core.step(x, y, state)
    x2 = torch.randn(2, 6, dtype=D)
    logits, new = core.step(x2, y, state)
    # by hand
    h, c = core.controller(torch.cat([x2, y, state.reads.flatten(1)], -1), state.controller)
    k = torch.tanh(core.keys(h)).view(2, 2, 4)
    a = torch.sigmoid(core.alpha(h))
    for b in range(2):
        u = state.usage[b].detach()
        order = sorted(range(5), key=lambda i: (float(u[i]), i))
        wlu = torch.zeros(5, dtype=D)
        wlu[order[:2]] = 1
        ww = torch.stack([a[b, r] * state.read_weights[b, r] + (1 - a[b, r]) * wlu for r in range(2)])
        mem = state.memory[b].clone()
        mem[order[0]] = 0
        for r in range(2):
            mem = mem + torch.outer(ww[r], k[b, r])
        torch.testing.assert_close(new.memory[b], mem)
        wr = torch.stack(
            [
                torch.softmax(
                    torch.stack([torch.dot(k[b, r], mem[i]) / (k[b, r].norm() * mem[i].norm()) for i in range(5)]), 0
                )
                for r in range(2)
            ]
        )
        torch.testing.assert_close(new.read_weights[b], wr)
        torch.testing.assert_close(new.usage[b], 0.95 * u + wr.sum(0) + ww.sum(0))
        torch.testing.assert_close(new.reads[b], wr @ mem)
    torch.testing.assert_close(logits, core.out(torch.cat([h, new.reads.flatten(1)], -1)))
    torch.testing.assert_close(content_read_weights(new.memory, k), new.read_weights)
    torch.testing.assert_close(read_memory(new.memory, new.read_weights), new.reads)


def test_key_strength_sharpens_the_content_read():
    memory = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    keys = t([[[1.0, 0.0]]])
    cos = [1.0, 0.0, 1 / math.sqrt(2)]
    for beta in (1.0, 3.0):
        e = [math.exp(beta * c) for c in cos]
        torch.testing.assert_close(content_read_weights(memory, keys, t([[beta]])), t([[[v / sum(e) for v in e]]]))
    torch.testing.assert_close(content_read_weights(memory, keys), content_read_weights(memory, keys, t([[1.0]])))
    core = LRUMemoryCore(
        3, 2, memory_size=4, memory_width=2, read_heads=1, controller_size=4, key_strength=True
    ).double()
    logits, _ = core(torch.randn(5, 2, 3, dtype=D), torch.zeros(5, 2, 2, dtype=D))
    logits.sum().backward()
    assert core.beta.weight.grad is not None and core.beta.weight.grad.abs().sum() > 0


def _class_coded_batch(tasks: int, ways: int, shots: int, queries: int) -> TaskBatch:
    """Images whose every pixel is the dataset class id, so the class of each step can be read off the input."""
    classes = torch.stack([torch.randperm(100)[:ways] + 1 for _ in range(tasks)])  # [T, N] ids 1..100

    def part(k):
        y = torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)
        x = classes.gather(1, y).double()[..., None, None, None].expand(tasks, ways * k, 1, 2, 2).clone()
        return x, y

    sx, sy = part(shots)
    qx, qy = part(queries)
    return TaskBatch(sx, sy, qx, qy, classes)


def test_sequence_offsets_labels_by_one_step_and_shuffles_labels_and_order_per_episode():
    torch.manual_seed(0)
    batch = _class_coded_batch(200, 5, 5, 5)
    seq = episode_sequence(batch, torch.Generator().manual_seed(1))
    assert seq.x.shape == (200, 50, 1, 2, 2) and seq.labels.shape == (200, 50) and seq.prev_onehot.shape == (200, 50, 5)
    # the label given at step t is the answer of step t-1; nothing at step 0
    assert (seq.prev_onehot[:, 0] == 0).all()
    assert torch.equal(seq.prev_onehot[:, 1:].argmax(-1), seq.labels[:, :-1])
    assert torch.equal(seq.prev_onehot.sum(-1)[:, 1:], torch.ones(200, 49, dtype=D))
    # each episode relabels its classes by a permutation, consistently within the episode
    ids = seq.x[:, :, 0, 0, 0].long()
    first_label_of_class0 = []
    for e in range(200):
        mapping = {}
        for cid, lab in zip(ids[e].tolist(), seq.labels[e].tolist()):
            assert mapping.setdefault(cid, lab) == lab
        assert sorted(mapping.values()) == list(range(5)) and sorted(mapping) == sorted(batch.classes[e].tolist())
        first_label_of_class0.append(mapping[int(batch.classes[e, 0])])
    counts = torch.bincount(torch.tensor(first_label_of_class0), minlength=5)
    assert (counts > 0).all()  # class 0 of the sampler is not always label 0
    # 10 instances of each class per episode, in a shuffled (not class-major) order
    assert (F.one_hot(seq.labels, 5).sum(1) == 10).all()
    assert (seq.labels[:, :10] != seq.labels[:, :1]).any(dim=1).float().mean() > 0.9
    # without label shuffling the sampler's labels are kept
    plain = episode_sequence(batch, torch.Generator().manual_seed(1), shuffle_labels=False)
    cls_to_label = {int(c): i for i, c in enumerate(batch.classes[0].tolist())}
    assert [cls_to_label[c] for c in plain.x[0, :, 0, 0, 0].long().tolist()] == plain.labels[0].tolist()


def test_instance_numbers_and_accuracy_by_instance_on_a_hand_case():
    labels = torch.tensor([[0, 1, 0, 0, 2, 1]])
    inst = instance_numbers(labels, 3)
    assert inst.tolist() == [[1, 1, 2, 3, 1, 2]]
    prev = previous_onehot(labels, 3)
    assert prev[0].argmax(-1).tolist()[1:] == [0, 1, 0, 0, 2] and prev[0, 0].sum() == 0
    # predictions: wrong, right, right, wrong, wrong, right
    pred = torch.tensor([[2, 1, 0, 1, 0, 1]])
    logits = F.one_hot(pred, 3).double()
    acc = instance_accuracy(logits, labels, inst, max_instance=4)
    assert acc.shape == (1, 4)
    torch.testing.assert_close(acc[0, :3], t([1 / 3, 1.0, 0.0]))
    assert torch.isnan(acc[0, 3])


@pytest.mark.parametrize("core", ["mann", "lstm"])
def test_mann_meta_loss_trains_every_parameter_and_adapt_is_pure(core):
    torch.manual_seed(0)
    algo = MANN(
        None, ways=5, input_shape=(1, 4, 4), core=core, memory_size=16, memory_width=8, read_heads=2, controller_size=12
    ).double()
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.rand(3, 10, 1, 4, 4, generator=g, dtype=D),
        torch.arange(5).repeat_interleave(2).repeat(3, 1),
        torch.rand(3, 5, 1, 4, 4, generator=g, dtype=D),
        torch.arange(5).repeat(3, 1),
        torch.arange(15).view(3, 5),
    )
    out = algo.meta_loss(batch, torch.Generator().manual_seed(2))
    assert {"loss", "acc", "inst1", "inst2", "inst3"} <= set(out.metrics)
    assert "inst10" not in out.metrics  # only 3 instances per class here
    out.loss.backward()
    for name, p in algo.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    pred = algo.predict(batch)
    assert pred.shape == (3, 5, 5)
    logits = algo.adapt(batch.support_x[1], batch.support_y[1])(batch.query_x[1])
    torch.testing.assert_close(logits, pred[1])
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())


def test_mann_registry_and_bad_options():
    assert algorithm_class("mann") is MANN
    with pytest.raises(ConfigError):
        MANN(None, core="gru")
    with pytest.raises(ConfigError):
        MANN(None, ways=1)
    algo = MANN(None, ways=5, input_shape=(1, 4, 4), memory_size=8, memory_width=4, read_heads=1, controller_size=8)
    wrong = TaskBatch(
        torch.rand(1, 5, 1, 5, 5),
        torch.arange(5)[None],
        torch.rand(1, 5, 1, 5, 5),
        torch.arange(5)[None],
        torch.arange(5)[None],
    )
    with pytest.raises(ConfigError):
        algo.meta_loss(wrong)
