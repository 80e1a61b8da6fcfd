"""Online adaptation for the remaining algorithms (issue 15): Baseline / Baseline++ and the linear probe
(the per-task head refitted on a sliding window), the LSTM meta-learner (the learnt optimiser re-run on a
window, or continued), MANN (the memory fed on), and the one-line refusals of the NTM and maml-rl; and
every registered algorithm's predictor either updates or refuses in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import fastadapt
import helpers
from fastadapt import ConfigError, DataError
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.baseline import Baseline, HeadPredictor
from fastadapt.algorithms.linear_probe import LinearProbe
from fastadapt.algorithms.mann import MANN, MemoryPredictor
from fastadapt.algorithms.meta_lstm import MetaLSTM, MetaLSTMState
from fastadapt.core.registry import ALGORITHMS
from fastadapt.data.streams import ClassStream, SinusoidStream
from fastadapt.eval.streams import online, state_nbytes
from fastadapt.nn import MLP
from helpers import assert_updates_refused, bad_updates, feed_window, labelled

WAYS, DIM = 3, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(out: int, seed: int = 0, inp: int = DIM) -> MLP:
    return helpers.mlp(seed, (8,), inp, out)


def tiny_mann(**options) -> MANN:
    torch.manual_seed(0)
    return MANN(
        ways=WAYS, input_shape=(DIM,), memory_size=8, memory_width=5, read_heads=2, controller_size=6, **options
    ).double()


ALGORITHMS_MORE = {
    "baseline": lambda: Baseline(mlp(5), num_classes=10, embedding_dim=5, finetune_steps=6),
    "baseline++": lambda: Baseline(mlp(5), num_classes=10, head="cosine", embedding_dim=5, finetune_steps=6),
    "linear_probe": lambda: LinearProbe(mlp(5), num_classes=10, embedding_dim=5, max_iter=30),
    "meta_lstm": lambda: MetaLSTM(mlp(WAYS), inner_steps=2, hidden_size=4).double(),
    "mann": lambda: tiny_mann(),
    "mann-lstm-core": lambda: tiny_mann(core="lstm"),
    "mann-strings": lambda: tiny_mann(label_encoding="string"),
}
FIXED_WIDTH = ("meta_lstm", "mann", "mann-lstm-core", "mann-strings")


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS_MORE))
def test_an_update_after_reset_equals_adapt_and_the_module_is_never_changed(name):
    algo = ALGORITHMS_MORE[name]()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    x, y = labelled(5, 2)
    query = labelled(7, 3)[0]
    predictor = algo.adapt(*labelled(6, 1))
    predictor.update(*labelled(4, 4))  # some history, then forget it
    history = predictor(query).clone()
    predictor.reset()
    predictor.update(x, y)
    assert predictor.update(*labelled(0, 5)) is None  # an empty batch changes nothing and returns nothing
    want = algo.adapt(x, y)(query)
    torch.testing.assert_close(predictor(query), want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(history, want)  # the reset did forget something
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["baseline", "baseline++", "linear_probe", "meta_lstm"])
def test_the_window_policy_refits_on_the_last_examples(name):
    algo = ALGORITHMS_MORE[name]()
    predictor, (wx, wy) = feed_window(algo.adapt(*labelled(6, 1)))
    assert torch.equal(predictor.window_x, wx) and torch.equal(predictor.window_y, wy)
    query = labelled(7, 3)[0]
    fresh = algo.adapt(wx, wy)(query)
    got = predictor(query)
    if (
        name != "meta_lstm" and got.shape[-1] != fresh.shape[-1]
    ):  # the head keeps the widest label seen (a label left the window)
        assert int(wy.max()) + 1 < got.shape[-1]
    else:
        torch.testing.assert_close(got, fresh, rtol=1e-12, atol=1e-12)


def reference_meta_lstm(
    algo: MetaLSTM, state: MetaLSTMState, x: torch.Tensor, y: torch.Tensor, steps: int
) -> MetaLSTMState:
    """The learnt optimiser run by hand: the learner's gradient by plain autograd, then the meta-LSTM's step."""
    for _ in range(steps):
        theta = state.theta[0].detach().requires_grad_(True)
        loss = task_loss(functional_call(algo.model, algo.unflatten(theta), (x,)), y)
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            state = algo.step(state, grad.unsqueeze(0), loss.detach().unsqueeze(0))
    return state


def test_meta_lstm_continue_policy_runs_the_learnt_optimiser_on_from_its_current_state():
    algo = ALGORITHMS_MORE["meta_lstm"]()
    predictor = algo.adapt(*labelled(6, 1)).configure(policy="continue", window=4, steps=3)
    current = MetaLSTMState(**predictor.state)
    assert float(current.input_gate.abs().sum()) > 0  # the optimiser's own state is not fresh
    x, y = labelled(3, 2)
    predictor.update(x, y)
    want = reference_meta_lstm(algo, current, predictor.window_x, predictor.window_y, 3)
    for k, v in want._asdict().items():
        torch.testing.assert_close(predictor.state[k], v, rtol=1e-12, atol=1e-12)
    window = algo.adapt(*labelled(6, 1)).configure(window=4, steps=3)  # the default policy restarts from theta_0
    window.update(x, y)
    fresh = reference_meta_lstm(
        algo, algo.state_from(algo.initial_theta().detach().unsqueeze(0)), window.window_x, window.window_y, 3
    )
    torch.testing.assert_close(window.weights, fresh.theta[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(window.weights, predictor.weights)
    with pytest.raises(ConfigError, match="policy='restart' is unknown; choose one of window, continue"):
        predictor.configure(policy="restart")


def reference_mann_logits(
    algo: MANN, parts: list[tuple[torch.Tensor, torch.Tensor]], query: torch.Tensor
) -> torch.Tensor:
    """The MANN protocol by hand: each part in adapt's fixed shuffle, one core step per example with the previous
    example's one-hot label (zeros first), the queries classified from the final state with the last label."""
    core, state, prev = algo.core, None, torch.zeros(1, WAYS, dtype=torch.float64)
    with torch.no_grad():
        for x, y in parts:
            order = torch.rand(len(y), generator=torch.Generator().manual_seed(0)).argsort()
            for i in order.tolist():
                feats = x[i : i + 1]
                state = core.initial_state(1, feats) if state is None else state
                _, state = core.step(feats, prev, state)
                prev = F.one_hot(y[i : i + 1], WAYS).double()
        logits = []
        for q in query:
            out, _ = core.step(q[None], prev, state)
            logits.append(out[0])
    return torch.stack(logits)


@pytest.mark.parametrize("name", ["mann", "mann-lstm-core"])
def test_mann_update_feeds_the_memory_with_the_one_step_label_offset_as_adapt_does(name):
    algo = ALGORITHMS_MORE[name]()
    parts = [labelled(6, 1), labelled(3, 2), labelled(4, 3)]
    predictor = algo.adapt(*parts[0])
    for x, y in parts[1:]:
        predictor.update(x, y)
    query = labelled(5, 9)[0]
    torch.testing.assert_close(predictor(query), reference_mann_logits(algo, parts, query), rtol=1e-12, atol=1e-12)
    last_y = parts[-1][1][torch.rand(4, generator=torch.Generator().manual_seed(0)).argsort()[-1]]
    assert isinstance(predictor, MemoryPredictor) and torch.equal(predictor.last[0], F.one_hot(last_y, WAYS).double())


def test_mann_with_a_transformer_controller_refuses_online_updates_in_one_line():
    predictor = tiny_mann(controller="transformer", transformer_heads=2).adapt(*labelled(6, 1))
    with pytest.raises(
        ConfigError, match="grows with each example, so online updates would not keep bounded memory"
    ) as e:
        predictor.update(*labelled(2, 2))
    assert "\n" not in str(e.value)


def test_baseline_adds_a_new_label_by_widening_its_per_task_head_and_fixed_heads_refuse_it():
    x, y = labelled(6, 1)
    for name in ("baseline", "linear_probe"):
        predictor = ALGORITHMS_MORE[name]().adapt(x, y)
        assert predictor(x).shape == (6, 3)
        predictor.update(x[:2], torch.tensor([0, 4]))  # a new class: the head is fitted per task, so it widens
        assert predictor(x).shape == (6, 5) and predictor.classes == 5
        predictor.reset()
        predictor.update(x, y)
        assert predictor(x).shape == (6, 3)
    for name in FIXED_WIDTH:
        predictor = ALGORITHMS_MORE[name]().adapt(x, y)
        before = predictor(x).clone()
        with pytest.raises(DataError, match="label 3 is outside the 3 classes") as e:
            predictor.update(x[:2], torch.tensor([0, 3]))
        assert "\n" not in str(e.value)
        torch.testing.assert_close(predictor(x), before, rtol=0, atol=0)


def test_a_head_predictor_says_it_has_no_head_after_reset():
    predictor = ALGORITHMS_MORE["baseline"]().adapt(*labelled(6, 1))
    predictor.reset()
    with pytest.raises(DataError, match="has seen no labelled example yet \\(after reset\\(\\)\\); update it first"):
        predictor(labelled(2, 2)[0])


@pytest.mark.parametrize("name", list(ALGORITHMS_MORE))
def test_bad_updates_are_one_line_errors_that_leave_the_state_as_it_was(name):
    predictor = ALGORITHMS_MORE[name]().adapt(*labelled(6, 1))
    x = labelled(6, 1)[0]
    nbytes = state_nbytes(predictor)
    bad = bad_updates(x, non_finite=math.nan) + [
        (x[:2], torch.tensor([0, -1]), "label -1 is negative"),
        (x[:2], torch.tensor([0, 1, 2]), "2 inputs with targets of shape \\[3\\]"),
    ]
    assert_updates_refused(predictor, x, bad)
    assert state_nbytes(predictor) == nbytes


def test_a_non_finite_target_is_refused_by_the_meta_lstm_as_a_regressor():
    algo = MetaLSTM(mlp(1, inp=1), inner_steps=2, hidden_size=4).double()
    stream = SinusoidStream(0, length=20, phase_length=10, points=3)
    predictor = algo.adapt(*(v.double() for v in stream.step(0)))
    x = stream.step(1)[0].double()
    before = predictor(x).clone()
    with pytest.raises(
        DataError, match="target 0 is nan; targets must be finite \\(the predictor's state is unchanged\\)"
    ):
        predictor.update(x, torch.full((3, 1), math.nan, dtype=torch.float64))
    assert torch.equal(predictor(x), before)


BOUNDED = {
    "baseline": lambda: Baseline(mlp(5), num_classes=10, embedding_dim=5, finetune_steps=1),
    "linear_probe": lambda: LinearProbe(mlp(5), num_classes=10, embedding_dim=5, max_iter=2),
    "meta_lstm": lambda: MetaLSTM(mlp(WAYS), inner_steps=1, hidden_size=4).double(),
    "mann": lambda: tiny_mann(),
}


@pytest.mark.parametrize("name", list(BOUNDED))
def test_memory_stays_bounded_over_a_thousand_updates(name):
    predictor = BOUNDED[name]().adapt(*labelled(6, 1))
    if name == "meta_lstm":
        predictor.configure(policy="continue", window=4)
    stream_x, stream_y = labelled(1000, 2)
    measured = {}
    for i in range(1000):
        predictor.update(stream_x[i : i + 1], stream_y[i : i + 1])
        if i + 1 in (100, 1000):
            measured[i + 1] = state_nbytes(predictor)
    assert measured[100] == measured[1000] > 0
    fields = vars(predictor).values()
    tensors = [v for v in fields if isinstance(v, torch.Tensor)] + [
        v for d in fields if isinstance(d, dict) for v in d.values()
    ]
    tensors += [
        v
        for h in fields
        if isinstance(h, fastadapt.algorithms.baseline.Head)
        for v in (h.weight, h.bias)
        if v is not None
    ]
    assert tensors and not any(t.requires_grad or t.grad_fn is not None for t in tensors)  # no autograd graph kept
    assert torch.isfinite(predictor(stream_x[:3])).all()


# --- the online runner ----------------------------------------------------------------------------


def class_stream(labels: str) -> ClassStream:
    data = fastadapt.ClassDataset.from_arrays(
        torch.randn(40, DIM, dtype=torch.float64) + torch.arange(8).repeat_interleave(5)[:, None] * 3,
        torch.arange(8).repeat_interleave(5),
    )
    return ClassStream(data, [[0, 1, 2], [0, 1, 3], [4, 1, 3]], [4, 4, 4], seed=0, holdout=1, labels=labels)


@pytest.mark.parametrize("name", ["baseline", "linear_probe", "meta_lstm", "mann"])
def test_online_runs_each_classifier_on_a_class_stream(name):
    labels = "slot" if name in FIXED_WIDTH else "class"  # a fixed-width head needs slot labels; a per-task head widens
    stream = class_stream(labels)
    run = online(ALGORITHMS_MORE[name](), stream)
    assert run.classification and run.length == 12 and run.change_points == (4, 8)
    assert np.isfinite(run.error).all() and np.isfinite(run.probe_error).all()
    assert run.probe_label_acc.shape[1] == (3 if labels == "slot" else 5)
    assert run.error[1:].mean() < 0.9  # it learns from the stream


def test_online_runs_the_meta_lstm_on_a_sinusoid_stream():
    stream = SinusoidStream(4, length=12, phase_length=6, points=5)
    algo = MetaLSTM(mlp(1, inp=1), inner_steps=2, hidden_size=4).double()
    run = online(algo, stream, options={"window": 8, "policy": "continue"})
    assert not run.classification and np.isfinite(run.error).all() and np.isfinite(run.probe_error).all()


# --- every registered algorithm ---------------------------------------------------------------------


def _sequence_algo():
    from fastadapt.algorithms.ntm import NTMLearner
    from fastadapt.nn.sequence import lstm_seq

    torch.manual_seed(0)
    return NTMLearner(lstm_seq((4, 5), 3, hidden_size=8))


# every registered algorithm: a tiny instance (or None: checked on its predictor below), and whether it updates
EVERY = {
    "protonet": (lambda: ALGORITHMS.get("protonet")(mlp(5)), True),
    "maml": (lambda: ALGORITHMS.get("maml")(mlp(WAYS), inner_lr=0.3), True),
    "fomaml": (lambda: ALGORITHMS.get("fomaml")(mlp(WAYS), inner_lr=0.3), True),
    "metasgd": (lambda: ALGORITHMS.get("metasgd")(mlp(WAYS), init_lr=0.2).double(), True),
    "anil": (lambda: ALGORITHMS.get("anil")(mlp(WAYS), inner_lr=0.3, head="net.2"), True),
    "reptile": (lambda: ALGORITHMS.get("reptile")(mlp(WAYS), inner_lr=0.1, inner_steps=1, inner_optimizer="sgd"), True),
    "imaml": (lambda: ALGORITHMS.get("imaml")(mlp(WAYS), inner_lr=0.3, inner_steps=2), True),
    "matching": (lambda: ALGORITHMS.get("matching")(mlp(5), fce=False), True),
    "meta_lstm": (ALGORITHMS_MORE["meta_lstm"], True),
    "mann": (ALGORITHMS_MORE["mann"], True),
    "ntm": (_sequence_algo, False),
    "baseline": (ALGORITHMS_MORE["baseline"], True),
    "grbal": (lambda: ALGORITHMS.get("grbal")(mlp(WAYS), inner_lr=0.2).double(), True),
    "rebal": (lambda: ALGORITHMS.get("rebal")(mlp(WAYS), hidden_size=4).double(), True),
    "alfa": (lambda: ALGORITHMS.get("alfa")(mlp(WAYS), inner_steps=1).double(), True),
    "linear_probe": (ALGORITHMS_MORE["linear_probe"], True),
    "protomaml": (lambda: ALGORITHMS.get("protomaml")(mlp(5), inner_lr=0.3), True),
    "multidomain": (
        lambda: ALGORITHMS.get("multidomain")(
            mlp(5), num_classes=10, domain_sizes=[4, 6], embedding_dim=5, finetune_steps=6
        ),
        True,
    ),
    "url": (  # a trained URL as load_run rebuilds it (pretrained=False): no teacher needed to adapt
        lambda: ALGORITHMS.get("url")(
            mlp(5), 10, [4, 6], ["a", "b"], {"a": "runs/a", "b": "runs/b"}, embedding_dim=5, pretrained=False
        ),
        True,
    ),
    "relation": (lambda: ALGORITHMS.get("relation")(mlp(5), hidden=4, fc=3).double(), True),
    "attentive": (lambda: ALGORITHMS.get("attentive")(mlp(5), dim=4, hidden=3).double(), True),
    "siamese": (lambda: ALGORITHMS.get("siamese")(mlp(5)).double(), True),
    "maml-rl": (None, False),
}


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_registered_algorithms_predictor_updates_or_refuses_in_one_line(name):
    assert name in EVERY, (
        f"algorithm {name} is registered but its online adaptation is not classified here (and in docs/CHANGE.md)"
    )
    build, updates = EVERY[name]
    if name == "maml-rl":  # a policy: its predictor is built from weights (adapting needs an environment)
        from fastadapt.algorithms.maml_rl import PolicyPredictor

        predictor = PolicyPredictor(mlp(2), {})
        x, y = labelled(3, 1)
    elif name == "ntm":
        algo = build()
        predictor = algo.adapt(torch.zeros(1, 4, 5, dtype=torch.float32), torch.zeros(1, 4, 3))
        assert predictor(torch.zeros(1, 2, 5)).shape == (1, 2, 3)
        x, y = torch.zeros(1, 2, 5), torch.zeros(1, 2, 3)
    else:
        algo = build()
        predictor = algo.adapt(*labelled(6, 1))
        x, y = labelled(3, 2)
    assert callable(getattr(predictor, "update", None)) and callable(getattr(predictor, "reset", None)), name
    if updates:
        before = predictor(x).clone()
        predictor.update(x, y)
        assert not torch.equal(predictor(x), before), f"{name}: update changed nothing"
        return
    for call in (lambda: predictor.update(x, y), predictor.reset):
        with pytest.raises(ConfigError, match=f"^{name}: .* does not apply") as e:
            call()
        assert "\n" not in str(e.value)


def test_online_names_the_refusal_of_a_learner_that_cannot_learn_from_labels():
    algo = _sequence_algo()
    predictor = algo.adapt(torch.zeros(1, 4, 5), torch.zeros(1, 4, 3))
    with pytest.raises(
        ConfigError,
        match="the targets are never fed back to it, so there are no labelled examples to learn from online",
    ):
        predictor.update(torch.zeros(1, 2, 5), torch.zeros(1, 2, 3))
    assert isinstance(ALGORITHMS_MORE["baseline"]().adapt(*labelled(6, 1)), HeadPredictor)
