"""Issue 19's options of the model-based learners: the meta-LSTM on a regression loss, the MANN's
transformer controller, translation augmentation, key strength, string labels, and RMSprop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
from fastadapt import TaskBatch
from fastadapt.algorithms.mann import MANN, STRING_ALPHABET, StringLabels, episode_sequence, translate_classes
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.config import load_config
from fastadapt.config.build import build_optimizer
from fastadapt.core.errors import ConfigError
from fastadapt.data.sinusoid import SinusoidTasks
from helpers import fix_gates_to_sgd

D = torch.float64


# -- the meta-LSTM on regression ------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", [True, False])
def test_meta_lstm_with_fixed_gates_is_sgd_on_the_regression_loss(vectorize):
    torch.manual_seed(0)
    algo = MetaLSTM(
        nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)), inner_steps=4, vectorize=vectorize
    ).double()
    fix_gates_to_sgd(algo, 0.05)
    batch = SinusoidTasks(10, 7, seed=3).sample_tasks(0, 0, 3).to(dtype=D)
    theta, _ = algo.unroll(batch.support_x, batch.support_y)
    out = algo.meta_loss(batch)
    query_losses = []
    for t in range(3):  # plain gradient descent on the mean squared error, written without the module
        w1, b1, w2, b2 = (p.detach().clone().requires_grad_(True) for _, p in algo.model.named_parameters())
        for _ in range(4):
            loss = F.mse_loss(torch.tanh(batch.support_x[t] @ w1.T + b1) @ w2.T + b2, batch.support_y[t])
            grads = torch.autograd.grad(loss, (w1, b1, w2, b2))
            w1, b1, w2, b2 = ((p - 0.05 * g).detach().requires_grad_(True) for p, g in zip((w1, b1, w2, b2), grads))
        got = algo.unflatten(theta[t])
        for name, ref in zip(algo.names, (w1, b1, w2, b2)):
            torch.testing.assert_close(got[name], ref, rtol=1e-12, atol=1e-12)
        query_losses.append(F.mse_loss(torch.tanh(batch.query_x[t] @ w1.T + b1) @ w2.T + b2, batch.query_y[t]))
    torch.testing.assert_close(out.loss, torch.stack(query_losses).mean(), rtol=1e-12, atol=1e-12)
    assert out.metrics["mse"] == pytest.approx(float(out.loss.detach()))


def test_meta_lstm_sinusoid_preset_trains(tmp_path):
    res = fastadapt.train(
        "meta-lstm-sinusoid",
        [
            "optim.steps=2",
            "data.meta_batch=2",
            "eval.val_every=0",
            "eval.test_episodes=4",
            "model.layers=[8]",
            f"run.out={tmp_path}",
            "run.progress=false",
        ],
    )
    assert (
        res.steps == 2 and {r.metric for r in res.tests.values()} == {"mse"} and set(res.tests) == {"5shot", "10shot"}
    )


# -- MANN options ---------------------------------------------------------------------------------


def _episodes(tasks=2, ways=3, shots=2, queries=2, size=6, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=D),
        sy,
        torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=D),
        qy,
        torch.arange(tasks * ways).view(tasks, ways),
    )


def _mann(**kw) -> MANN:
    opts = dict(ways=3, input_shape=(1, 6, 6), memory_size=8, memory_width=4, read_heads=2, controller_size=8)
    return MANN(**{**opts, **kw}).double()


def test_transformer_controller_trains_every_parameter_and_is_state_in_state_out():
    torch.manual_seed(0)
    algo = _mann(controller="transformer", transformer_heads=2)
    batch = _episodes()
    algo.meta_loss(batch, torch.Generator().manual_seed(1)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())
    core = algo.core
    x, y = torch.randn(7, 2, 36, dtype=D), torch.randn(7, 2, 3, dtype=D)
    whole, _ = core(x, y)
    first, state = core(x[:4], y[:4])
    second, _ = core(x[4:], y[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-12, atol=1e-12)
    pred = algo.predict(batch)
    for t in range(2):
        torch.testing.assert_close(
            algo.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]), pred[t], rtol=1e-12, atol=1e-12
        )
    with pytest.raises(ConfigError, match="core='mann'"):
        _mann(core="lstm", controller="transformer")
    with pytest.raises(ConfigError, match="controller"):
        _mann(controller="gru")


def test_translate_classes_against_a_loop():
    x = torch.rand(2, 5, 1, 6, 7, dtype=D)
    labels = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 0, 1, 1]])
    shifts = torch.tensor([[[1, -2], [0, 0], [-3, 2]], [[2, 1], [-1, -1], [0, 3]]])
    out = translate_classes(x, labels, shifts)
    ref = torch.zeros_like(x)
    for t in range(2):
        for m in range(5):
            dy, dx = shifts[t, labels[t, m]].tolist()
            for r in range(6):
                for c in range(7):
                    if 0 <= r - dy < 6 and 0 <= c - dx < 7:
                        ref[t, m, :, r, c] = x[t, m, :, r - dy, c - dx]
    assert torch.equal(out, ref)
    assert translate_classes(x, labels, torch.zeros_like(shifts)) is x


def test_translate_is_per_episode_and_class_in_training_only():
    algo = _mann(translate=2)
    batch = _episodes(ways=3, shots=2, queries=2)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq = algo.make_sequence(batch, g1, train=True)
    shifts = torch.randint(-2, 3, (2, 3, 2), generator=g2)  # what make_sequence draws first
    moved = TaskBatch(
        translate_classes(batch.support_x, batch.support_y, shifts),
        batch.support_y,
        translate_classes(batch.query_x, batch.query_y, shifts),
        batch.query_y,
        batch.classes,
    )
    expected = episode_sequence(moved, g2)
    assert torch.equal(seq.x, expected.x) and torch.equal(seq.labels, expected.labels)
    assert not torch.equal(seq.x, episode_sequence(batch, torch.Generator().manual_seed(5)).x)
    plain = algo.make_sequence(batch, torch.Generator().manual_seed(5), train=False)  # evaluation: never shifted
    assert torch.equal(plain.x, episode_sequence(batch, torch.Generator().manual_seed(5)).x)


def test_default_options_keep_the_previous_training_step():
    """translate=0, one-hot labels, LSTM controller: meta_loss is the pooled sequence's cross-entropy as before."""
    torch.manual_seed(2)
    algo = _mann()
    batch = _episodes()
    out = algo.meta_loss(batch, torch.Generator().manual_seed(3))
    seq = episode_sequence(batch, torch.Generator().manual_seed(3))
    logits, _ = algo.core(algo._encode(seq.x), seq.prev_onehot.transpose(0, 1))
    ref = F.cross_entropy(logits.transpose(0, 1).flatten(0, 1), seq.labels.flatten())
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=0)


def test_mann_preset_sharpens_its_reads_and_the_override_restores_the_papers_read():
    """Issue 19's ablation: the learnt key strength lifts the 2nd / 10th instance by ~20 points; the presets use it."""
    from fastadapt.config.build import build_algorithm

    assert isinstance(build_algorithm(load_config("mann-omniglot")).core.beta, nn.Linear)
    assert build_algorithm(load_config("mann-omniglot", ["algorithm.key_strength=false"])).core.beta is None
    assert isinstance(
        build_algorithm(load_config("mann-transformer-omniglot")).core.beta, nn.Linear
    )  # 78.3 / 89.8 % with it
    assert build_algorithm(load_config("mann-transformer-omniglot", ["algorithm.key_strength=false"])).core.beta is None


def test_key_strength_option_reaches_the_read():
    torch.manual_seed(4)
    plain, sharp = _mann(), _mann(key_strength=True)
    assert plain.core.beta is None and isinstance(sharp.core.beta, nn.Linear)
    core = sharp.core
    state = core.initial_state(2, torch.zeros((), dtype=D))
    x, y = torch.randn(2, 36, dtype=D), torch.zeros(2, 3, dtype=D)
    _, new = core.step(x, y, state)
    h = new.controller[0]
    keys = torch.tanh(core.keys(h)).view(2, 2, 4)
    beta = 1 + F.softplus(core.beta(h))
    m = new.memory
    cos = torch.stack(
        [
            torch.stack(
                [
                    torch.stack(
                        [  # K(k, M(i)) with eps = 1e-8 under both square roots, as documented
                            (keys[b_, r] @ m[b_, i])
                            / ((keys[b_, r] @ keys[b_, r] + 1e-8).sqrt() * (m[b_, i] @ m[b_, i] + 1e-8).sqrt())
                            for i in range(8)
                        ]
                    )
                    for r in range(2)
                ]
            )
            for b_ in range(2)
        ]
    )
    torch.testing.assert_close(new.read_weights, torch.softmax(beta.unsqueeze(-1) * cos, -1), rtol=1e-12, atol=1e-12)


def test_string_labels_codes_encoding_and_likelihood():
    codes = StringLabels.codes(50, 5, torch.Generator().manual_seed(0))
    assert codes.shape == (50, 5, 5) and int(codes.min()) >= 0 and int(codes.max()) < STRING_ALPHABET
    assert all(len({tuple(c) for c in task.tolist()}) == 5 for task in codes)  # distinct strings within an episode
    labels = torch.tensor([[0, 4, 2], [1, 1, 3]])
    enc = StringLabels.encode(labels, codes[:2], D)
    assert enc.shape == (2, 3, 25)
    for t in range(2):
        for i in range(3):
            for j in range(5):
                one = torch.zeros(5, dtype=D)
                one[codes[t, labels[t, i], j]] = 1
                assert torch.equal(enc[t, i, 5 * j : 5 * j + 5], one)
    out = torch.randn(2, 3, 25, dtype=D)
    ll = StringLabels.log_likelihood(out, codes[:2])
    for t in range(2):
        for i in range(3):
            for c in range(5):
                ref = sum(torch.log_softmax(out[t, i, 5 * j : 5 * j + 5], 0)[codes[t, c, j]] for j in range(5))
                torch.testing.assert_close(ll[t, i, c], ref, rtol=1e-12, atol=1e-12)


def test_mann_string_labels_feed_the_previous_string_and_score_the_whole_string():
    torch.manual_seed(6)
    algo = _mann(label_encoding="string")
    assert algo.core.out.out_features == 25 and algo.core.controller.input_size == 36 + 25 + 2 * 4
    batch = _episodes()
    seq = algo.make_sequence(batch, torch.Generator().manual_seed(7), train=True)
    enc = StringLabels.encode(seq.labels, seq.codes, D)
    assert torch.equal(seq.prev_onehot[:, 0], torch.zeros_like(enc[:, 0])) and torch.equal(
        seq.prev_onehot[:, 1:], enc[:, :-1]
    )
    out = algo.meta_loss(batch, torch.Generator().manual_seed(7))
    ll = StringLabels.log_likelihood(algo.sequence_outputs(seq), seq.codes)
    torch.testing.assert_close(out.loss, -ll.gather(-1, seq.labels.unsqueeze(-1)).mean(), rtol=1e-12, atol=1e-12)
    pred = algo.predict(batch)
    assert pred.shape == (2, 6, 3) and bool((pred <= 0).all())  # log-likelihoods of the episode's 3 strings
    torch.testing.assert_close(
        algo.adapt(batch.support_x[1], batch.support_y[1])(batch.query_x[1]), pred[1], rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ConfigError, match="label_encoding"):
        _mann(label_encoding="binary")


def test_rmsprop_optimizer_is_torch_rmsprop_with_the_configured_rate():
    cfg = load_config("mann-omniglot", ['optim.optimizer="rmsprop"', "optim.lr=1e-4", "optim.momentum=0.9"])
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=D))
    opt, _ = build_optimizer(cfg, [p])
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["lr"] == 1e-4 and opt.defaults["momentum"] == 0.9
    p.grad = torch.tensor([0.5, -3.0], dtype=D)
    opt.step()
    v = 0.01 * torch.tensor([0.5, -3.0], dtype=D) ** 2  # alpha 0.99, from zero
    torch.testing.assert_close(
        p.detach(), torch.tensor([1.0, -2.0], dtype=D) - 1e-4 * torch.tensor([0.5, -3.0], dtype=D) / (v.sqrt() + 1e-8)
    )
    with pytest.raises(ConfigError, match="rmsprop"):
        load_config("mann-omniglot", ['optim.optimizer="lbfgs"'])


def test_mann_transformer_preset_builds():
    cfg = load_config("mann-transformer-omniglot")
    assert cfg.algorithm_options["controller"] == "transformer"


# -- Matching Networks options ----------------------------------------------------------------------


def _matching_inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 6, 4, generator=g, dtype=D),
        torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        torch.randn(2, 5, 4, generator=g, dtype=D),
    )


@pytest.mark.parametrize("fce", [False, True])
def test_matching_normalize_equals_attention_on_unit_embeddings(fce):
    from fastadapt.algorithms.matching import MatchingNet

    torch.manual_seed(0)
    net = MatchingNet(nn.Identity(), fce=fce, embedding_dim=4, normalize=True).double()
    torch.manual_seed(0)
    ref = MatchingNet(nn.Identity(), fce=fce, embedding_dim=4).double()  # the same weights, no normalisation
    zs, ys, zq = _matching_inputs()
    unit = lambda z: z / z.norm(dim=-1, keepdim=True)  # noqa: E731
    got = net.query_log_probs(net.support_state(zs, ys, 3), zq)
    want = ref.query_log_probs(ref.support_state(unit(zs), ys, 3), unit(zq))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (
        not torch.allclose(got, ref.query_log_probs(ref.support_state(zs, ys, 3), zq)) or not fce
    )  # without FCE cosine is scale-free


def test_matching_orthogonal_fce_init():
    from fastadapt.algorithms.matching import MatchingNet

    net = MatchingNet(nn.Identity(), fce=True, embedding_dim=6, fce_init="orthogonal").double()
    for name, p in [*net.support_lstm.named_parameters(), *net.query_cell.named_parameters()]:
        if "weight_hh" in name:
            for gate in p.chunk(4, dim=0):
                torch.testing.assert_close(gate @ gate.T, torch.eye(6, dtype=D), rtol=0, atol=1e-6)  # built in float32
        elif "bias_ih" in name:
            assert torch.equal(p, torch.cat([torch.zeros(6), torch.ones(6), torch.zeros(12)]).to(D))
        elif "bias_hh" in name:
            assert torch.equal(p, torch.zeros_like(p))
    torch.manual_seed(3)
    a = MatchingNet(nn.Identity(), fce=True, embedding_dim=6)
    torch.manual_seed(3)
    b = MatchingNet(nn.Identity(), fce=True, embedding_dim=6, fce_init="pytorch", normalize=False)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )  # defaults unchanged
    with pytest.raises(ConfigError, match="fce_init"):
        MatchingNet(nn.Identity(), fce=True, embedding_dim=6, fce_init="zeros")
