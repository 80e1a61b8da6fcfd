"""Online adaptation: predictor.update per algorithm (state in, state out; bounded memory), the online
runner's test-then-train order, change detection, the stream metrics, and GrBAL (Nagabandi et al. 2019)
against a plain float64 loop and through the common training loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import fastadapt
import helpers
from fastadapt import DataError, TaskBatch
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.grbal import GrBAL
from fastadapt.algorithms.maml import MAML, FastWeightsPredictor
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet, prototypes
from fastadapt.algorithms.reptile import Reptile
from fastadapt.data.streams import ClassStream, SinusoidStream, StreamTasks
from fastadapt.eval.stream_metrics import (
    aligned,
    examples_to_fraction,
    new_class_curves,
    paired,
    recovery_steps,
    regret,
    summarize,
)
from fastadapt.eval.streams import LossJump, OnlineRun, online, state_nbytes
from fastadapt.nn import MLP, Conv4
from helpers import assert_updates_refused, bad_updates, feed_window, labelled, stream_run_config

WAYS, DIM = 3, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(out: int, seed: int = 0, inp: int = DIM) -> MLP:
    return helpers.mlp(seed, (8,), inp, out)


ALGORITHMS = {
    "protonet": lambda: ProtoNet(mlp(5)),
    "matching": lambda: MatchingNet(mlp(5), fce=True, embedding_dim=5).double(),
    "maml": lambda: MAML(mlp(WAYS), inner_lr=0.3, inner_steps=2),
    "metasgd": lambda: MetaSGD(mlp(WAYS), init_lr=0.2, inner_steps=2).double(),
    "anil": lambda: ANIL(mlp(WAYS), inner_lr=0.3, inner_steps=2, head="net.2"),
    "reptile-adam": lambda: Reptile(mlp(WAYS), inner_lr=0.05, inner_steps=2).double(),
    "reptile-sgd": lambda: Reptile(mlp(WAYS), inner_lr=0.1, inner_steps=2, inner_optimizer="sgd"),
    "grbal": lambda: GrBAL(mlp(WAYS), inner_lr=0.2, inner_steps=2).double(),
}


# --- update: the contract -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_an_update_on_an_empty_window_equals_adapt_and_the_module_is_never_changed(name):
    algo = ALGORITHMS[name]()
    if name == "reptile-adam":  # a persistent Adam state that is not zero
        algo.train()
        algo.meta_loss(TaskBatch(*(t.unsqueeze(0) for t in (*labelled(6, 8), *labelled(6, 9)))))
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    sx, sy = labelled(6, 1)
    x, y = labelled(5, 2)
    query = labelled(7, 3)[0]
    predictor = algo.adapt(sx, sy)
    predictor.update(*labelled(4, 4))  # some history, then forget it
    predictor.reset()
    predictor.update(x, y)
    assert predictor.update(*labelled(0, 5)) is None  # an empty batch changes nothing and returns nothing
    torch.testing.assert_close(predictor(query), algo.adapt(x, y)(query), rtol=1e-12, atol=1e-12)
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil", "reptile-sgd", "grbal"])
def test_the_window_policy_readapts_from_the_meta_learnt_weights_on_the_last_examples(name):
    algo = ALGORITHMS[name]()
    predictor, (wx, wy) = feed_window(algo.adapt(*labelled(6, 1)))
    assert torch.equal(predictor.window_x, wx) and predictor.window_x.shape == (5, DIM)
    query = labelled(7, 3)[0]
    torch.testing.assert_close(predictor(query), algo.adapt(wx, wy)(query), rtol=1e-12, atol=1e-12)


def test_the_continue_policy_fine_tunes_the_current_weights():
    algo = ALGORITHMS["maml"]()
    predictor = algo.adapt(*labelled(6, 1)).configure(policy="continue", window=4, steps=1)
    current = dict(predictor.params)
    x, y = labelled(3, 2)
    predictor.update(x, y)
    want = algo._adapt_from(current, predictor.window_x, predictor.window_y, 1)
    for k in want:
        torch.testing.assert_close(predictor.params[k], want[k], rtol=0, atol=0)
    fresh = algo.adapt(predictor.window_x, predictor.window_y)
    assert any(not torch.allclose(predictor.params[k], fresh.params[k]) for k in want)  # not a restart from theta
    with pytest.raises(fastadapt.ConfigError, match="policy='restart' is unknown; choose one of window, continue"):
        predictor.configure(policy="restart")


def test_protonet_running_prototypes_equal_the_prototypes_of_all_data_seen_with_new_classes_added():
    algo = ProtoNet(mlp(5))
    xs, ys = [labelled(4, 0, ways=2)[0]], [labelled(4, 0, ways=2)[1]]
    predictor = algo.adapt(xs[0], ys[0])
    for i in range(30):
        x, y = labelled(3, 100 + i, ways=2 if i < 10 else 4)  # labels 2 and 3 appear at update 10: new classes
        predictor.update(x, y)
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    want = prototypes(algo.model(x).detach().unsqueeze(0), y.unsqueeze(0), 4)[0]
    assert predictor.state.prototypes.dtype == torch.float64
    torch.testing.assert_close(predictor.state.prototypes, want, rtol=1e-13, atol=1e-13)
    assert predictor(x[:5]).shape == (5, 4)


def test_a_new_label_is_added_by_metric_learners_and_refused_by_a_fixed_head():
    x, y = labelled(6, 1)
    proto = ProtoNet(mlp(5)).adapt(x, y)
    logits = proto(x)
    assert logits.shape == (6, 3)
    proto.update(x[:1], torch.tensor([5]))  # labels 3, 4 never seen: masked, never predicted
    logits = proto(x)
    assert logits.shape == (6, 6) and torch.isinf(logits[:, 3:5]).all() and torch.isfinite(logits[:, 5]).all()
    matching = ALGORITHMS["matching"]().adapt(x, y)
    matching.update(x[:1], torch.tensor([4]))
    assert matching(x).shape == (6, 5)
    head = ALGORITHMS["maml"]().adapt(x, y)
    before = head(x)
    with pytest.raises(DataError, match="label 3 is outside the 3 classes of this model's head") as e:
        head.update(x[:2], torch.tensor([0, 3]))
    assert "\n" not in str(e.value)
    torch.testing.assert_close(head(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["protonet", "matching", "maml", "grbal"])
def test_bad_updates_are_one_line_errors_that_leave_the_state_as_it_was(name):
    algo = ALGORITHMS[name]()
    x, y = labelled(6, 1)
    predictor = algo.adapt(x, y)
    assert_updates_refused(predictor, x, bad_updates(x))


def test_a_non_finite_target_is_refused_by_a_regressor():
    algo = GrBAL(mlp(1, inp=1))
    stream = SinusoidStream(0, length=20, phase_length=10)
    predictor = algo.adapt(*(v.double() for v in stream.step(0)))
    x = stream.step(1)[0].double()
    before = predictor(x).clone()
    with pytest.raises(
        DataError, match="target 0 is nan; targets must be finite \\(the predictor's state is unchanged\\)"
    ):
        predictor.update(x, torch.full((1, 1), math.nan, dtype=torch.float64))
    assert torch.equal(predictor(x), before)


@pytest.mark.parametrize("name", ["protonet", "maml", "matching"])
def test_memory_stays_bounded_over_ten_thousand_updates(name):
    if name == "protonet":
        algo = ProtoNet(mlp(5))
    elif name == "matching":
        algo = MatchingNet(mlp(5), fce=False)
    else:
        algo = MAML(mlp(WAYS), inner_lr=0.1, inner_steps=1)
    x, y = labelled(6, 1)
    predictor = algo.adapt(x, y)
    if name == "matching":
        predictor.configure(window=8)
    stream_x, stream_y = labelled(10_000, 2)
    measured = {}
    for i in range(10_000):
        predictor.update(stream_x[i : i + 1], stream_y[i : i + 1])
        if i + 1 in (100, 10_000):
            measured[i + 1] = state_nbytes(predictor)
    assert measured[100] == measured[10_000] > 0
    tensors = [v for v in vars(predictor).values() if isinstance(v, torch.Tensor)]
    tensors += [v for d in vars(predictor).values() if isinstance(d, dict) for v in d.values()]
    assert tensors and not any(t.requires_grad or t.grad_fn is not None for t in tensors)  # no autograd graph kept
    assert torch.isfinite(predictor(stream_x[:3])).all()


def test_state_nbytes_sees_a_window_kept_as_a_view_of_a_growing_tensor():
    predictor = MAML(mlp(WAYS)).adapt(*labelled(6, 1))
    small = state_nbytes(predictor)
    big = torch.zeros(1000, DIM, dtype=torch.float64)
    predictor.window_x = big[-6:]  # what a leaking implementation would keep
    assert state_nbytes(predictor) >= small + 994 * DIM * 8


# --- the online runner ----------------------------------------------------------------------------


class LoggingPredictor:
    def __init__(self, log):
        self.log = log

    def __call__(self, x):
        self.log.append(("predict", x.clone()))
        return torch.zeros(x.shape[0], 1, dtype=x.dtype)

    def update(self, x, y):
        self.log.append(("update", x.clone()))

    def reset(self):
        self.log.append(("reset", None))


class Logging(nn.Module):
    needs_head = True

    def __init__(self):
        super().__init__()
        self.model = nn.Linear(1, 1)
        self.log: list = []

    def adapt(self, x, y):
        self.log.append(("adapt", x.clone()))
        return LoggingPredictor(self.log)


def test_online_predicts_each_step_before_it_learns_from_it():
    algo, stream = Logging(), SinusoidStream(0, length=6, phase_length=3, points=2)
    run = online(algo, stream, probe=False)
    events = [(kind, x) for kind, x in algo.log if kind != "predict" or x.shape[0] == 2]
    assert [k for k, _ in events] == ["adapt"] + ["predict", "update"] * 5
    for t in range(1, 6):
        (_, xp), (_, xu) = events[2 * t - 1], events[2 * t]
        assert torch.equal(xp, xu) and torch.equal(xu, stream.step(t)[0])  # the step's data: predicted, then learnt
    assert run.change_points == (3,) and np.isfinite(run.error).all() and np.isnan(run.probe_error).all()


def test_online_reports_each_new_class_as_an_error_before_its_first_label():
    data = fastadapt.ClassDataset.from_arrays(
        torch.randn(40, DIM, dtype=torch.float64) + torch.arange(8).repeat_interleave(5)[:, None] * 3,
        torch.arange(8).repeat_interleave(5),
    )
    stream = ClassStream(data, [[0, 1], [0, 2], [3, 2]], [4, 4, 4], seed=0, holdout=1)
    run = online(ProtoNet(mlp(5)), stream)
    assert run.error[0] == 1.0  # nothing known yet
    assert run.error[4] >= 0.5 and run.error[8] >= 0.5  # the new class's example comes before its label
    assert (
        run.probe_label_acc.shape == (12, 4)
        and math.isnan(run.probe_label_acc[0, 2])
        and run.probe_label_acc[4, 2] == 0.0
    )
    curves = new_class_curves(run, stream.new_labels(), 4)
    assert curves.shape == (2, 4) and (curves[:, 0] == 0).all()


def test_change_detection_resets_the_predictor_when_the_loss_jumps():
    def stream(seed):
        return SinusoidStream(seed, length=60, change_points=(30,), amplitude_drift=0.0, phase_drift=0.0, points=20)

    # the logging predictor always says 0, so its loss is the targets' energy: it jumps with the amplitude
    seed = next(s for s in range(100) if stream(s).params(30)[0] > 3 * stream(s).params(29)[0])
    algo = Logging()
    run = online(algo, stream(seed), detector=LossJump(threshold=4.0, ratio=2.0, window=10, warmup=5), probe=False)
    assert run.resets == (30,) and [k for k, _ in algo.log].count("reset") == 1
    quiet = online(Logging(), stream(seed), probe=False)  # off by default
    assert quiet.resets == () and np.array_equal(quiet.error[1:], run.error[1:])  # step 0: each model's own prior


def test_loss_jump_fires_at_the_jump_and_not_on_a_steady_loss():
    detector = LossJump(threshold=4.0, ratio=2.0, window=10, warmup=5)
    rng = np.random.default_rng(0)
    losses = list(1.0 + 0.05 * rng.standard_normal(40)) + [5.0] + list(1.0 + 0.05 * rng.standard_normal(20))
    fired = [t for t, v in enumerate(losses) if detector.update(v)]
    assert fired == [40]
    patient = LossJump(threshold=4.0, ratio=2.0, window=10, warmup=5, recent=3)
    spike = (
        losses[:20] + [9.0] + losses[20:40] + [5.0] * 5
    )  # one outlier at step 20, then a sustained jump from step 41
    assert [t for t, v in enumerate(spike) if patient.update(v)] == [
        42
    ]  # the median of steps 40..42: not the lone spike
    with pytest.raises(fastadapt.ConfigError, match="warmup=30 exceeds window=20"):
        LossJump(warmup=30)


def test_an_algorithm_whose_predictor_cannot_update_is_named_in_one_line():
    class Frozen(Logging):
        def adapt(self, x, y):
            return lambda q: torch.zeros(q.shape[0], 1)

    with pytest.raises(
        fastadapt.ConfigError,
        match="Frozen.adapt returns a predictor without update and reset; online adaptation needs",
    ):
        online(Frozen(), SinusoidStream(0, length=5, phase_length=2))


def test_a_stream_of_another_input_shape_is_a_one_line_error():
    algo = GrBAL(mlp(1, inp=3))
    with pytest.raises(DataError, match="the stream's inputs of shape \\[1\\] do not fit the model") as e:
        online(algo, SinusoidStream(0, length=5, phase_length=2))
    assert "\n" not in str(e.value)


# --- metrics --------------------------------------------------------------------------------------


def test_recovery_steps_regret_and_alignment_on_a_hand_made_stream():
    #            pre-change level 1.0          change at 5: 9, 4, 1.05, 1.0, 1.1 -> back within 10% from s = 2 (hold 3)
    values = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 9.0, 4.0, 1.05, 1.0, 1.1, 8.0, 7.0, 6.0])
    steps, censored = recovery_steps(values, (5, 10), pre=5, tolerance=0.1, hold=3)
    assert steps.tolist() == [2.0, 3.0] and censored.tolist() == [
        False,
        True,
    ]  # the second never recovers: censored at its length
    assert regret(values) == pytest.approx(values.sum())
    a = aligned(values, (5, 10), 6)
    assert np.array_equal(a[0, :5], [9.0, 4.0, 1.05, 1.0, 1.1]) and np.isnan(a[0, 5])
    # smoothed over 2 steps (never before the change): 9, 6.5, 2.525, 1.025, 1.05 -> within 10 % from s = 3 (hold 2)
    assert (
        recovery_steps(values, (5,), pre=5, tolerance=0.1, hold=2, smooth=2)[0].tolist() == [3.0]
        and np.allclose(a[1, :3], [8.0, 7.0, 6.0])
        and np.isnan(a[1, 3:]).all()
    )


def test_summaries_and_paired_differences_say_which_recovers_faster():
    def run(shift: int, seed: int) -> OnlineRun:
        rng = np.random.default_rng(seed)
        v = np.ones(60) + 0.01 * rng.random(60)
        for c in (20, 40):
            v[c : c + shift] = 10.0
        return OnlineRun(v.copy(), v.copy(), v.copy(), (20, 40))

    fast = [run(2 + s % 2, s) for s in range(10)]
    slow = [run(6 + s % 3, 100 + s) for s in range(10)]
    summary = summarize(fast, horizon=8)
    assert summary["recovery"][0] == pytest.approx(np.mean([2 + s % 2 for s in range(10)])) and summary["censored"] == 0
    assert len(summary["curve"]) == 8 and summary["curve"][0] == pytest.approx(10.0)
    diff = paired(fast, slow)
    mean, half = diff["recovery"]
    assert mean + half < 0 and diff["regret"][0] < 0
    back = OnlineRun.from_dict(fast[0].to_dict())
    assert np.array_equal(back.error, fast[0].error) and back.change_points == (20, 40)


def test_examples_to_reach_a_fraction_of_the_final_accuracy():
    curve = np.array([0.0, 0.5, 0.8, 0.92, 0.95, 0.96, 0.97, 0.96, 0.97, 0.96])
    assert examples_to_fraction(curve, 0.9, final=5) == 3.0  # 0.92 >= 0.9 * 0.964
    assert examples_to_fraction(np.stack([curve, curve]), 0.9, final=5, per_class=2) == 6.0


# --- GrBAL ----------------------------------------------------------------------------------------


def windows(tasks: int = 3) -> TaskBatch:
    source = StreamTasks(lambda s: SinusoidStream(s, length=50, phase_length=20), 1, 6, 4, seed=2)
    return source.sample_tasks(0, 0, tasks).to(dtype=torch.float64)


def reference_grbal_loss(
    model: nn.Module, psi: dict[str, torch.Tensor], batch: TaskBatch, steps: int, first_order: bool
) -> torch.Tensor:
    """Mean loss on the next points after ``steps`` steps with step sizes psi on the recent window: a plain loop."""
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = task_loss(functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - psi[n] * g for (n, p), g in zip(fast.items(), grads)}
        total = total + task_loss(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
    return total / batch.num_tasks


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_grbal_meta_gradient_matches_a_plain_loop_in_float64(first_order, execution):
    model = mlp(1, inp=1)
    algo = GrBAL(model, inner_lr=0.05, inner_steps=2, first_order=first_order, execution=execution).double()
    with torch.no_grad():  # distinct step sizes, so that a mix-up would show
        for i, p in enumerate(algo.step_sizes.values()):
            p.fill_(0.02 + 0.01 * i)
    batch = windows()
    psi = {n: algo.step_sizes[n.replace(".", "-")] for n, _ in model.named_parameters()}
    params = list(model.parameters()) + list(algo.step_sizes.values())
    got = torch.autograd.grad(algo.meta_loss(batch).loss, params)
    want = torch.autograd.grad(reference_grbal_loss(model, psi, batch, 2, first_order), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert all(float(g.abs().sum()) > 0 for g in got[-len(psi) :])  # psi learns
    assert int(algo.trained_window) == 6 and algo.adapt_window() == 6


def test_grbal_predictor_keeps_the_trained_window():
    algo = GrBAL(mlp(1, inp=1)).double()
    algo.meta_loss(windows())
    predictor = algo.adapt(*(v.double() for v in SinusoidStream(0).step(0)))
    assert isinstance(predictor, FastWeightsPredictor) and predictor.window == 6 and predictor.policy == "window"
    assert (
        GrBAL(mlp(1, inp=1), window=4)
        .adapt(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
        .window
        == 4
    )


def test_grbal_trains_on_a_stream_source_through_the_common_loop_and_runs_online(tmp_path):
    cfg = stream_run_config(tmp_path / "grbal", {"target": "fastadapt.algorithms.grbal:GrBAL", "inner_lr": 0.02})
    result = fastadapt.train(cfg)
    assert result.steps == 3 and math.isfinite(result.tests["5shot"].mean)
    run = fastadapt.load_run(tmp_path / "grbal")
    assert int(run.algorithm.trained_window) == 5
    stream = SinusoidStream(4, length=30, phase_length=10)
    record = online(run.algorithm, stream)
    assert record.length == 30 and np.isfinite(record.error).all() and np.isfinite(record.probe_error).all()


def test_protonet_runs_online_on_an_omniglot_stream():
    from fastadapt.config.build import SourceRequest
    from fastadapt.data.streams import omniglot_stream

    source = omniglot_stream(
        SourceRequest("test", 3, 1, 1, 0, options={"length": 12, "phase_length": 4, "replace": 1, "holdout": 2})
    )
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8))
    stream = source.stream(0)
    run = online(algo, stream)
    assert run.classification and run.error[0] == 1.0 and np.isfinite(run.probe_error).all()
    assert new_class_curves(run, stream.new_labels(), 4).shape == (2, 4)


def test_fastadapt_plot_draws_a_saved_record_of_online_runs(tmp_path, capsys):
    from fastadapt.cli import main as cli_main
    from fastadapt.report.streams import plot_stream_record, save_runs

    torch.manual_seed(0)
    stream = SinusoidStream(3, length=30, phase_length=10)
    algo = MAML(MLP(1, 1, (8,)), inner_lr=0.01)
    runs = {"window": online(algo, stream), "frozen": online(algo, stream, update=False)}
    single = save_runs(runs, tmp_path / "one.json")
    assert cli_main(["plot", str(single)]) == 0
    assert (tmp_path / "stream.png").stat().st_size > 0 and "stream.png" in capsys.readouterr().out
    folder = tmp_path / "study"
    folder.mkdir()
    save_runs({"sinusoid": runs}, folder)  # several streams: one picture each
    assert [p.name for p in plot_stream_record(folder)] == ["stream_sinusoid.png"]
    back = json.loads((folder / "streams.json").read_text())["sinusoid"]["window"]
    assert back["change_points"] == list(runs["window"].change_points) and back["error"][0] == pytest.approx(
        float(runs["window"].error[0])
    )
    (tmp_path / "bad.json").write_text('{"a": {"b": 1}}')
    assert cli_main(["plot", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no online runs" in err
