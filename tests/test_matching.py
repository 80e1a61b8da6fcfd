"""Matching Networks: the attention classifier against the paper's formula, FCE against its recurrences, the
contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastadapt import ConfigError, EpisodeSampler, TaskBatch, load_omniglot
from fastadapt.algorithms import algorithm_class
from fastadapt.algorithms.matching import (
    MatchingNet,
    attention_lstm_queries,
    cosine_attention,
    full_context_support,
    similarity,
)
from fastadapt.nn import Conv4

D = 6


class TinyEncoder(nn.Module):
    """BatchNorm-free: an image's embedding does not depend on what it is batched with."""

    def __init__(self, in_features: int = 12, embedding_dim: int = D) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 10), nn.Tanh(), nn.Linear(10, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_batch(
    tasks: int, ways: int, shots: int, queries: int, x_shape=(3, 4), seed: int = 0, dtype=torch.float64
) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, *x_shape, generator=g, dtype=dtype)
    qx = torch.randn(tasks, ways * queries, *x_shape, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    classes = torch.arange(ways).repeat(tasks, 1)
    return TaskBatch(sx, sy, qx, qy, classes)


def conv_batch(tasks: int, ways: int, shots: int, queries: int, seed: int = 0) -> TaskBatch:
    """Random 16x16 images: Conv4(image_size=16) embeds them in ``hidden`` features, 3x cheaper than 28x28."""
    return random_batch(tasks, ways, shots, queries, x_shape=(1, 16, 16), seed=seed)


def make(model: nn.Module | None = None, seed: int = 0, **kw) -> MatchingNet:
    torch.manual_seed(seed)
    return MatchingNet(model if model is not None else TinyEncoder(), **kw).double()


# ---------------------------------------------------------------------------- the paper's formula


def naive_log_probs(model: nn.Module, support_x, support_y, query_x, ways: int, scale: float) -> torch.Tensor:
    """Eq. 1-2 of the paper with explicit loops: cosine, softmax, weighted sum of one-hot labels, log."""
    g = [model(support_x[i : i + 1])[0] for i in range(len(support_x))]
    out = torch.zeros(len(query_x), ways, dtype=torch.float64)
    for j in range(len(query_x)):
        f = model(query_x[j : j + 1])[0]
        cos = [float(f @ gi) / (math.sqrt(float(f @ f)) * math.sqrt(float(gi @ gi))) for gi in g]
        e = [math.exp(scale * c) for c in cos]
        a = [v / sum(e) for v in e]
        for n in range(ways):
            p = sum(a[i] for i in range(len(g)) if int(support_y[i]) == n)
            out[j, n] = math.log(p)
    return out


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_without_fce_predictions_equal_the_papers_formula(scale):
    algo = make(fce=False, scale=scale)
    batch = random_batch(tasks=3, ways=4, shots=2, queries=3)
    with torch.no_grad():
        naive = torch.stack(
            [
                naive_log_probs(algo.model, batch.support_x[t], batch.support_y[t], batch.query_x[t], 4, scale)
                for t in range(3)
            ]
        )
        pred = algo.predict(batch)
        out = algo.meta_loss(batch)
    torch.testing.assert_close(pred, naive, rtol=1e-10, atol=1e-12)
    nll = -naive.gather(-1, batch.query_y.unsqueeze(-1)).mean()
    assert float(out.loss) == pytest.approx(float(nll), rel=1e-10)
    assert out.metrics["acc"] == pytest.approx(float((naive.argmax(-1) == batch.query_y).double().mean()))


def test_similarities_match_their_definitions():
    q, s = torch.randn(2, 3, D, dtype=torch.float64), torch.randn(2, 4, D, dtype=torch.float64)
    for t in range(2):
        for j in range(3):
            for i in range(4):
                a, b = q[t, j], s[t, i]
                assert float(similarity(q, s, "cosine")[t, j, i]) == pytest.approx(
                    float(a @ b / (a.norm() * b.norm())), rel=1e-12
                )
                assert float(similarity(q, s, "dot")[t, j, i]) == pytest.approx(float(a @ b), rel=1e-12)
                assert float(similarity(q, s, "euclidean")[t, j, i]) == pytest.approx(
                    -float(((a - b) ** 2).sum()), rel=1e-10
                )


@pytest.mark.parametrize("fce", [False, True])
def test_attention_weights_of_each_query_sum_to_one(fce):
    algo = make(fce=fce, scale=3.0)
    batch = random_batch(tasks=2, ways=5, shots=2, queries=3)
    with torch.no_grad():
        state = algo.support_state(algo.encode(batch.support_x), batch.support_y, 5)
        a = algo.attention(state, algo.encode(batch.query_x))
    assert a.shape == (2, 15, 10)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 15, dtype=torch.float64), rtol=0, atol=1e-12)
    w = cosine_attention(torch.randn(7, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64), scale=2.5)
    torch.testing.assert_close(w.sum(-1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-12)


def test_without_fce_permuting_the_support_set_leaves_predictions_unchanged():
    algo = make(Conv4(out_features=None, hidden=8, image_size=16), fce=False)
    batch = conv_batch(tasks=2, ways=5, shots=2, queries=2)
    perm = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(t)) for t in range(2)])
    rows = torch.arange(2).unsqueeze(1)
    shuffled = TaskBatch(
        batch.support_x[rows, perm], batch.support_y[rows, perm], batch.query_x, batch.query_y, batch.classes
    )
    assert not torch.equal(shuffled.support_y, batch.support_y)
    torch.testing.assert_close(algo.predict(shuffled), algo.predict(batch), rtol=1e-10, atol=1e-12)
    # With FCE the bidirectional LSTM reads the support set as a sequence: order matters.
    fce = make(Conv4(out_features=None, hidden=8, image_size=16), fce=True)
    assert (fce.predict(shuffled) - fce.predict(batch)).abs().max() > 1e-6


# ---------------------------------------------------------------------------- FCE against the appendix


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step written out (gate order i, f, g, o)."""
    i, f, g, o = (w_ih @ x + b_ih + w_hh @ h + b_hh).chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_full_context_support_is_forward_plus_backward_state_plus_skip():
    torch.manual_seed(1)
    lstm = nn.LSTM(D, D, batch_first=True, bidirectional=True).double()
    support = torch.randn(2, 5, D, dtype=torch.float64)
    got = full_context_support(support, lstm)
    p = dict(lstm.named_parameters())
    for t in range(2):
        fw, bw = [], [None] * 5
        h = c = torch.zeros(D, dtype=torch.float64)
        for i in range(5):
            h, c = lstm_step(
                support[t, i], h, c, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
            )
            fw.append(h)
        h = c = torch.zeros(D, dtype=torch.float64)
        for i in reversed(range(5)):
            h, c = lstm_step(
                support[t, i],
                h,
                c,
                p["weight_ih_l0_reverse"],
                p["weight_hh_l0_reverse"],
                p["bias_ih_l0_reverse"],
                p["bias_hh_l0_reverse"],
            )
            bw[i] = h
        for i in range(5):
            torch.testing.assert_close(got[t, i], fw[i] + bw[i] + support[t, i], rtol=1e-10, atol=1e-12)


def test_attention_lstm_follows_the_appendix_recurrence():
    """LSTM(f', [h, r], c) with h_k = hat h_k + f' and r_k a softmax(dot) read, one query at a time."""
    torch.manual_seed(2)
    cell = nn.LSTMCell(2 * D, D).double()
    queries, support, steps = torch.randn(2, 3, D, dtype=torch.float64), torch.randn(2, 4, D, dtype=torch.float64), 3
    got = attention_lstm_queries(queries, support, cell, steps)
    w_x, w_r = cell.weight_ih[:, :D], cell.weight_ih[:, D:]
    w_state = torch.cat([cell.weight_hh, w_r], dim=1)  # the hidden state is [h, r]
    for t in range(2):
        g = support[t]
        for j in range(3):
            f = queries[t, j]
            h, c = f, torch.zeros(D, dtype=torch.float64)
            r = sum(a * gi for a, gi in zip(torch.softmax(torch.stack([h @ gi for gi in g]), 0), g))
            for _ in range(steps):
                h_hat, c = lstm_step(f, torch.cat([h, r]), c, w_x, w_state, cell.bias_ih, cell.bias_hh)
                h = h_hat + f
                r = sum(a * gi for a, gi in zip(torch.softmax(torch.stack([h @ gi for gi in g]), 0), g))
            torch.testing.assert_close(got[t, j], h, rtol=1e-10, atol=1e-12)


def test_default_process_steps_is_the_support_size():
    batch = random_batch(tasks=2, ways=3, shots=2, queries=2)
    default, fixed, other = make(fce=True), make(fce=True, process_steps=6), make(fce=True, process_steps=2)
    torch.testing.assert_close(default.predict(batch), fixed.predict(batch), rtol=0, atol=0)
    assert (other.predict(batch) - default.predict(batch)).abs().max() > 1e-8


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("fce", [False, True])
def test_shapes_for_five_way_three_shot_four_queries(fce):
    algo = make(Conv4(out_features=None, hidden=8, image_size=16), fce=fce)
    batch = conv_batch(tasks=2, ways=5, shots=3, queries=4)
    out = algo.meta_loss(batch)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert set(out.metrics) == {"loss", "acc"}
    assert algo.predict(batch).shape == (2, 20, 5)
    predictor = algo.adapt(batch.support_x[0], batch.support_y[0])
    assert predictor.state.embeddings.shape == (15, 8)
    assert predictor.state.onehot.shape == (15, 5)
    logp = predictor(batch.query_x[0])
    assert logp.shape == (20, 5)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("encode", ["meta_batch", "per_task"])
def test_gradients_reach_the_encoder_both_lstms_and_the_scale(encode):
    algo = make(
        Conv4(out_features=None, hidden=8, image_size=16), fce=True, lstm_layers=2, learn_scale=True, encode=encode
    )
    algo.meta_loss(conv_batch(tasks=2, ways=3, shots=2, queries=2)).loss.backward()
    names = [n for n, _ in algo.named_parameters()]
    assert any(n.startswith("support_lstm.") and n.endswith("_l1_reverse") for n in names)
    assert {n.split(".")[0] for n in names} == {"model", "support_lstm", "query_cell", "log_scale"}
    for n, p in algo.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("fce", [False, True])
def test_adapt_and_predict_leave_the_module_bit_identical(fce):
    # running statistics in train mode: the one case where a plain forward would change buffers
    algo = make(Conv4(out_features=None, hidden=8, image_size=16, track_running_stats=True), fce=fce)
    batch = conv_batch(tasks=2, ways=3, shots=2, queries=2)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    predictor = algo.adapt(batch.support_x[0], batch.support_y[0])
    predictor(batch.query_x[0])
    algo.predict(batch)
    after = algo.state_dict()
    assert before.keys() == after.keys()
    assert any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("fce", [False, True])
def test_predict_equals_adapt_then_predictor_task_by_task(fce):
    algo = make(Conv4(out_features=None, hidden=8, image_size=16), fce=fce)
    batch = conv_batch(tasks=3, ways=4, shots=2, queries=3)
    pred = algo.predict(batch)
    with torch.no_grad():
        one_by_one = torch.stack(
            [algo.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]) for t in range(3)]
        )
    torch.testing.assert_close(pred, one_by_one, rtol=1e-10, atol=1e-10)


def test_per_task_encoding_draws_independent_dropout_masks():
    torch.manual_seed(3)
    algo = make(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(12, D)), fce=False)
    x = torch.ones(2, 4, 3, 4, dtype=torch.float64)  # two identical tasks
    z = algo.encode(x)
    assert z.shape == (2, 4, D)
    assert not torch.equal(z[0], z[1])


def test_per_task_encoding_is_the_same_in_a_loop_and_under_vmap_and_changes_no_buffer():
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, D)
    ).double()
    algo = make(encoder, fce=False)  # a BatchNorm that tracks running statistics (Conv4's does not)
    algo.model.train()
    x = conv_batch(tasks=3, ways=3, shots=2, queries=2).support_x
    before = {k: b.clone() for k, b in algo.model.named_buffers()}
    looped, mapped = algo.encode(x, "loop"), algo.encode(x, "vmap")
    assert torch.equal(algo.encode(x), looped)  # "auto" loops for images on the CPU
    assert all(torch.equal(b, before[k]) for k, b in algo.model.named_buffers())  # running statistics untouched
    torch.testing.assert_close(looped, mapped, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        looped[1], algo.model(x[1]).flatten(1), rtol=1e-10, atol=1e-12
    )  # batch statistics of task 1 alone
    assert not all(torch.equal(b, before[k]) for k, b in algo.model.named_buffers())  # (a direct call does move them)


def test_per_task_meta_loss_is_the_mean_of_adapted_task_losses():
    algo = make(Conv4(out_features=None, hidden=8, image_size=16), fce=True, encode="per_task")
    batch = conv_batch(tasks=3, ways=3, shots=1, queries=2)
    losses = [
        -algo.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t])
        .gather(1, batch.query_y[t, :, None])
        .mean()
        for t in range(3)
    ]
    assert algo.meta_loss(batch).loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-10)


def test_meta_batch_encoding_uses_batch_statistics_of_the_whole_meta_batch():
    """With BatchNorm, one forward over the meta-batch is a different (documented) normalisation than per task."""
    batch = conv_batch(tasks=3, ways=3, shots=1, queries=2)
    together = (
        make(Conv4(out_features=None, hidden=8, image_size=16), fce=False, encode="meta_batch").meta_loss(batch).loss
    )
    per_task = (
        make(Conv4(out_features=None, hidden=8, image_size=16), fce=False, encode="per_task").meta_loss(batch).loss
    )
    assert abs(together.item() - per_task.item()) > 1e-6
    no_bn = [
        make(Conv4(out_features=None, hidden=8, image_size=16, batch_norm=False), fce=False, encode=e)
        .meta_loss(batch)
        .loss
        for e in ("meta_batch", "per_task")
    ]
    assert no_bn[0].item() == pytest.approx(no_bn[1].item(), rel=1e-10)


def test_registered_as_matching_without_a_head():
    assert algorithm_class("matching") is MatchingNet
    assert MatchingNet.needs_head is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distance": "manhattan"}, "distance='manhattan'.*cosine, dot, euclidean"),
        ({"encode": "global"}, "encode='global'.*meta_batch, per_task"),
        ({"process_steps": 0}, "process_steps=0"),
        ({"lstm_layers": 0}, "lstm_layers=0"),
        ({"scale": -1.0}, "scale=-1.0"),
        ({"embedding_dim": 0}, "embedding_dim=0"),
    ],
)
def test_bad_options_raise_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        MatchingNet(TinyEncoder(), **kwargs)
    assert "\n" not in str(e.value)


def test_fce_needs_an_embedding_size():
    bare = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
    with pytest.raises(ConfigError, match="embedding_dim"):
        MatchingNet(bare, fce=True)
    assert MatchingNet(bare, fce=True, embedding_dim=D).query_cell.hidden_size == D
    MatchingNet(bare, fce=False)  # no LSTMs, no size needed
    wrong = make(TinyEncoder(), fce=True, embedding_dim=D + 1)
    with pytest.raises(ConfigError, match=f"outputs {D} features but embedding_dim={D + 1}"):
        wrong.predict(random_batch(1, 2, 1, 1))


def test_float_labels_are_rejected():
    batch = random_batch(1, 2, 1, 1)
    with pytest.raises(ConfigError, match="integer class labels"):
        make(fce=False).adapt(batch.support_x[0], batch.support_y[0].double())


# ---------------------------------------------------------------------------- learning on Omniglot


def test_a_few_adam_steps_on_omniglot_lower_the_loss_on_fixed_episodes():
    torch.manual_seed(0)
    algo = MatchingNet(Conv4(out_features=None, hidden=16), fce=True)
    train = EpisodeSampler(load_omniglot("vinyals", "train"), ways=5, shots=1, queries=2, seed=0)
    fixed = next(EpisodeSampler(load_omniglot("vinyals", "val"), ways=5, shots=1, queries=3, seed=1).fixed(8))
    opt = torch.optim.Adam(algo.parameters(), lr=5e-3)
    with torch.no_grad():
        before = algo.meta_loss(fixed)
    for _ in range(12):
        opt.zero_grad()
        algo.meta_loss(train.sample(4)).loss.backward()
        opt.step()
    with torch.no_grad():
        after = algo.meta_loss(fixed)
    assert after.metrics["loss"] < before.metrics["loss"] - 0.1
    assert after.metrics["acc"] > before.metrics["acc"]


@pytest.mark.parametrize(
    "preset", [f"matching{f}-omniglot-{s}" for f in ("", "-fce") for s in ("5w1s", "5w5s", "20w1s", "20w5s")]
)
def test_presets_learn_the_attention_scale_from_10(preset):
    """Issue 19's ablation: at s = 1 the softmax over cosines is nearly flat: 6-14 points lower at equal minutes."""
    from fastadapt.config import load_config
    from fastadapt.config.build import build_algorithm

    cfg = load_config(preset)
    assert cfg.algorithm_options["scale"] == 10.0 and cfg.algorithm_options["learn_scale"] is True
    algo = build_algorithm(cfg)
    assert algo.log_scale is not None and math.isclose(algo.scale.item(), 10.0, rel_tol=1e-6)
