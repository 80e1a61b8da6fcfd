"""The training engine: config validation, presets, checkpoints, resume, signals, CLI."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from fastadapt.cli import main as cli_main
from fastadapt.config import config_from_dict, load_config, preset_names, read_toml
from fastadapt.core.errors import ConfigError
from fastadapt.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastadapt.training.loop import train
from fastadapt.training.resume import TrainingDiverged
from helpers import TINY, tiny


def params(cfg):
    state = load_checkpoint(cfg.out_dir / "checkpoint.pt")
    return state["algorithm"], int(state["step"])


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.optim.steps >= 1 and cfg.algorithm
    assert set(read_toml(name)) <= {"data", "model", "optim", "eval", "run", "algorithm"}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.wayz=3", "unknown key data.wayz; allowed keys of \\[data\\]"),
        ("data.ways=abc", "data.ways='abc' has the wrong type; expected an integer"),
        ("data.ways=0", "data.ways=0 is invalid; it must be >= 1"),
        ("optim.lr=-1", "optim.lr=-1.0 is invalid"),
        ("optim.optimizer='lbfgs'", "optim.optimizer='lbfgs' is not allowed; choose one of adam, sgd, adamw"),
        ("algorithm.nope=1", "unknown key algorithm.nope for protonet"),
        ("algorithm.distance=3", "algorithm.distance=3 has the wrong type; expected str"),
        ("foo.bar=1", "unknown section \\[foo\\]"),
        ("ways=3", "must be section.key"),
        ("run.progress=1", "expected true or false"),
    ],
)
def test_bad_config_values_are_one_line_errors_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("protonet-quick", [override])
    assert "\n" not in str(e.value)


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        config_from_dict({"algorithm": {"name": "nope"}})


def test_cli_errors_exit_2_with_one_line_and_no_traceback(tmp_path, capsys):
    assert cli_main(["train", "protonet-quick", "data.ways=-3"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("fastadapt: error: data.ways=-3 is invalid") and err.count("\n") == 1 and "Traceback" not in err
    )
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "is not a run folder (no config.json)" in capsys.readouterr().err


def test_train_writes_metrics_checkpoints_and_results(tmp_path):
    cfg = tiny(tmp_path)
    result = train(cfg)
    out = cfg.out_dir
    assert result.steps == 6 and not result.interrupted
    for f in ("checkpoint.pt", "best.pt", "metrics.jsonl", "config.json", "results.json", "eval_5w1s.json"):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["split"] == "val"] == [3, 6]
    ev = json.loads((out / "eval_5w1s.json").read_text())
    assert len(ev["scores"]) == 6 and ev["settings"]["ways"] == 5 and ev["settings"]["queries"] == 3
    assert ev["settings"]["batchnorm"].startswith("transductive")
    res = json.loads((out / "results.json").read_text())
    assert res["tests"]["5w1s"]["episodes"] == 6


def test_mann_trains_through_the_common_engine_with_instance_metrics(tmp_path):
    cfg = load_config(
        "mann-omniglot",
        [
            "data.meta_batch=2",
            "data.train_part='test'",
            "optim.steps=2",
            "eval.test_episodes=4",
            "eval.batch=2",
            "algorithm.memory_size=16",
            "algorithm.controller_size=16",
            "run.progress=false",
            "run.threads=1",
            f"run.out={tmp_path / 'mann'}",
        ],
    )
    result = train(cfg)
    assert result.steps == 2
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"inst1", "inst2", "inst10"} <= set(rows[-1])
    ev = json.loads((cfg.out_dir / "eval_5w5s.json").read_text())
    assert len(ev["scores"]) == 4 and ev["settings"]["queries"] == 5


def test_a_run_stopped_by_its_time_budget_validates_its_last_weights(tmp_path):
    cfg = tiny(tmp_path, "optim.max_minutes=1e-9", "eval.val_every=5")  # the budget is spent after the first step
    result = train(cfg)
    assert result.steps == 1 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [1]
    assert torch.load(cfg.out_dir / "best.pt", weights_only=True)["step"] == 1


def test_a_resumed_run_whose_budget_is_spent_only_tests(tmp_path):
    cfg = tiny(tmp_path, "optim.max_minutes=1e-9", "eval.val_every=5")
    assert train(cfg).steps == 1
    before, _ = params(cfg)
    again = train(cfg)  # the same command again resumes: the budget is spent, so it tests and trains no further step
    assert again.steps == 1 and set(again.tests) == {"5w1s"}
    after, step = params(cfg)
    assert step == 1 and all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1]
    assert [r["step"] for r in rows if r["split"] == "val"] == [1]


def test_a_validation_that_spends_the_budget_is_not_repeated(tmp_path, monkeypatch):
    import fastadapt.training.loop as loop

    def slow_evaluate(*args, **kwargs):
        time.sleep(2.5)
        return real_evaluate(*args, **kwargs)

    real_evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    cfg = tiny(
        tmp_path, "optim.max_minutes=0.03", "eval.val_every=2", "eval.test_episodes=0"
    )  # 1.8 s: spent by the validation at step 2
    assert train(cfg).steps == 2
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2]


def test_zero_test_episodes_trains_without_testing(tmp_path):
    cfg = tiny(tmp_path, "eval.test_episodes=0")
    result = train(cfg)
    assert result.steps == 6 and result.tests == {}
    assert json.loads((cfg.out_dir / "results.json").read_text())["tests"] == {}
    assert not list(cfg.out_dir.glob("eval_*.json"))


def test_flatten_model_needs_an_algorithm_without_a_head_and_with_weights(tmp_path):
    with pytest.raises(
        ConfigError, match="model.name=flatten has no output layer; the algorithm needs a model with a 5-output head"
    ):
        train(load_config("maml-omniglot-5w1s", ["model.name=flatten", f"run.out={tmp_path / 'a'}"]))
    with pytest.raises(ConfigError, match="protonet with model flatten has no trainable parameters"):
        train(tiny(tmp_path, "model.name=flatten", name="b"))


def test_resume_after_interrupt_is_bit_identical_to_a_straight_run(tmp_path):
    straight = tiny(tmp_path, name="straight")
    train(straight)
    split = tiny(tmp_path, name="split")

    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(split, step_hook=interrupt)
    assert first.interrupted and first.steps == 3
    assert params(split)[1] == 3
    second = train(split)
    assert second.steps == 6 and not second.interrupted
    a, sa = params(straight)
    b, sb = params(split)
    assert sa == sb == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # validation history after resume equals the straight run's
    def val(c):
        return [json.loads(x)["acc"] for x in (c.out_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in x]

    assert val(straight) == val(split)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny(tmp_path)
    train(cfg)
    other = replace(cfg, data=replace(cfg.data, ways=3))
    with pytest.raises(Exception, match="another config"):
        train(other)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path)
    algo_holder = {}

    def poison(step):
        if step == 4:
            ckpt = load_checkpoint(cfg.out_dir / "checkpoint.pt")
            algo_holder["good"] = ckpt
            raise_nan.append(True)

    raise_nan: list[bool] = []
    import fastadapt.algorithms.protonet as pn

    original = pn.ProtoNet.meta_loss

    def meta_loss(self, batch):
        out = original(self, batch)
        if raise_nan:
            return type(out)(out.loss * float("nan"), out.metrics)
        return out

    pn.ProtoNet.meta_loss = meta_loss
    try:
        with pytest.raises(TrainingDiverged, match="loss is nan at step 4; lower optim.lr"):
            train(cfg, step_hook=poison)
    finally:
        pn.ProtoNet.meta_loss = original
    state = load_checkpoint(cfg.out_dir / "checkpoint.pt")
    assert int(state["step"]) == 4
    assert all(torch.isfinite(v).all() for v in state["algorithm"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_truncated_foreign_and_malicious_checkpoints_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 1, "w": torch.ones(100)})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    (tmp_path / "text.pt").write_text("hello")
    for name, match in (
        ("trunc.pt", "not a readable fastadapt checkpoint"),
        ("foreign.pt", "format tag missing"),
        ("evil.pt", "not a readable fastadapt checkpoint"),
        ("text.pt", "not a readable"),
        ("missing.pt", "not found"),
    ):
        with pytest.raises(CheckpointError, match=match) as e:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)


def _run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "fastadapt.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _wait_for_checkpoint(path, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.1)
    raise AssertionError("no checkpoint appeared")


def test_sigterm_saves_and_exits_cleanly_and_kill_9_resumes(tmp_path):
    args = ["train", "protonet-quick", *TINY, "optim.steps=400", "eval.val_every=0", f"run.out={tmp_path / 'r'}"]
    proc = _run_cli(args)
    _wait_for_checkpoint(tmp_path / "r" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "interrupted at step" in out
    step_after_term = int(load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"])
    assert 0 < step_after_term < 400
    proc = _run_cli(args)
    time.sleep(0.5)
    t0 = time.time()
    while int(load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"]) <= step_after_term and time.time() - t0 < 120:
        time.sleep(0.2)
    proc.kill()
    proc.communicate()
    resumed_from = int(load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"])
    assert resumed_from > step_after_term  # the second run resumed and moved on, then died with kill -9
    proc = _run_cli([a if not a.startswith("optim.steps=") else f"optim.steps={resumed_from + 2}" for a in args])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "test 5w1s:" in out


@pytest.mark.parametrize(
    ("schedule", "factors"),
    [
        ("linear", [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),  # Reptile's annealed meta step: to 0 at optim.steps
        ("cosine", [1.0, 0.853553, 0.5, 0.146447, 0.0, 0.0]),
        ("constant", [1.0] * 6),
    ],
)
def test_learning_rate_schedules_over_optim_steps(tmp_path, schedule, factors):
    from fastadapt.config.build import build_optimizer

    cfg = tiny(tmp_path, f"optim.schedule='{schedule}'", "optim.steps=4", "optim.lr=0.2")
    w = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer(cfg, [w])
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"] / 0.2)
        opt.step()
        sched.step()
    assert seen == pytest.approx(factors, abs=1e-6)
