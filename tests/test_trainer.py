"""The Trainer's callbacks: a per-step hook and an end-of-validation hook, from the user or the algorithm, and
a callback's request to stop, which ends the run with a checkpoint that resumes bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.eval import EvalResult
from fastadapt.runs.checkpoint import load_checkpoint
from fastadapt.training.callbacks import Callback
from fastadapt.training.loop import Trainer, train
from helpers import tiny


def rows(cfg, split):
    lines = (cfg.out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def weights(cfg):
    state = load_checkpoint(cfg.out_dir / "checkpoint.pt")
    return state["algorithm"], int(state["step"])


def assert_same_weights(a, b):
    (wa, sa), (wb, sb) = weights(a), weights(b)
    assert sa == sb and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Six steps without a callback: the numbers every other run must reproduce."""
    cfg = tiny(tmp_path_factory.mktemp("straight"))
    result = train(cfg)
    assert result.steps == 6 and result.stopped_by is None
    return cfg


def test_a_step_callback_sees_every_step_in_order_with_its_metrics_and_changes_no_number(tmp_path, straight):
    seen = []

    def on_step(trainer, step, metrics):
        assert isinstance(trainer, Trainer) and trainer.global_step == step
        assert isinstance(trainer.batch, TaskBatch) and trainer.batch.num_tasks == 2
        seen.append((step, dict(metrics)))

    cfg = tiny(tmp_path)
    result = train(cfg, callbacks=[Callback(on_step=on_step)])
    assert result.steps == 6 and result.stopped_by is None
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    logged = rows(cfg, "train")  # run.log_every=1: each row is one step's metrics
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    for (step, metrics), row in zip(seen, logged):
        assert metrics["tasks_per_s"] > 0
        assert metrics["loss"] == row["loss"] and metrics["acc"] == row["acc"], step
    assert_same_weights(cfg, straight)  # a callback that only looks changes nothing
    assert [r["acc"] for r in rows(cfg, "val")] == [r["acc"] for r in rows(straight, "val")]


def test_a_validation_callback_sees_each_validation(tmp_path):
    seen = []
    cfg = tiny(tmp_path)
    train(cfg, callbacks=[Callback(on_validation=lambda trainer, step, res: seen.append((step, res)))])
    assert [s for s, _ in seen] == [3, 6]
    assert all(isinstance(res, EvalResult) and res.metric == "acc" for _, res in seen)
    assert [res.mean for _, res in seen] == [r["acc"] for r in rows(cfg, "val")]


def test_the_algorithms_own_callbacks_run_before_the_users(tmp_path, monkeypatch):
    order = []

    def training_callbacks(self):
        assert isinstance(self, ProtoNet)
        return [Callback(on_step=lambda trainer, step, metrics: order.append(("algorithm", step)))]

    monkeypatch.setattr(ProtoNet, "training_callbacks", training_callbacks, raising=False)
    user = Callback(on_step=lambda trainer, step, metrics: order.append(("user", step)))
    train(tiny(tmp_path, "optim.steps=2"), callbacks=[user])
    assert order == [("algorithm", 1), ("user", 1), ("algorithm", 2), ("user", 2)]


def test_a_callback_that_returns_true_stops_the_run_with_a_checkpoint_that_resumes(tmp_path, straight):
    seen = []

    def stop_at_4(trainer, step, metrics):
        seen.append(step)
        return step == 4

    cfg = tiny(tmp_path)
    stopped = train(cfg, callbacks=[Callback(on_step=stop_at_4), Callback(on_step=lambda t, s, m: seen.append(-s))])
    assert stopped.steps == 4 and not stopped.interrupted
    assert stopped.stopped_by is not None and "stop_at_4 (on_step)" in stopped.stopped_by
    assert seen == [1, -1, 2, -2, 3, -3, 4, -4]  # the step that stops is seen by every callback
    assert weights(cfg)[1] == 4
    assert [r["step"] for r in rows(cfg, "val")] == [3, 4]  # stopped early: the last weights are validated
    assert set(stopped.tests) == {"5w1s"}  # and tested, as a spent budget is
    assert json.loads((cfg.out_dir / "results.json").read_text())["steps"] == 4
    resumed = train(cfg)
    assert resumed.steps == 6 and resumed.stopped_by is None
    assert_same_weights(cfg, straight)  # 4 steps + resume + 2 steps == 6 steps


def test_a_validation_callback_can_stop_the_run(tmp_path):
    cfg = tiny(tmp_path)

    def stop(trainer, step, res):
        return True

    result = train(cfg, callbacks=[Callback(on_validation=stop)])
    assert result.steps == 3 and "stop (on_validation)" in result.stopped_by
    assert [r["step"] for r in rows(cfg, "val")] == [3]  # validated at the step that stopped: not again
    assert weights(cfg)[1] == 3


def test_a_step_hooks_return_value_does_not_stop_the_run(tmp_path):
    assert train(tiny(tmp_path, "optim.steps=3"), step_hook=lambda step: True).steps == 3


@pytest.mark.parametrize("bad", [print, Callback(), Callback(on_step=3)])
def test_what_is_not_a_callback_is_refused_in_one_line(tmp_path, bad):
    with pytest.raises(FastAdaptError, match="is not a callback; pass fastadapt.training.Callback") as e:
        train(tiny(tmp_path), callbacks=[bad])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
