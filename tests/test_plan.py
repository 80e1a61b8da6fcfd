"""Plans costed up front: ``fastadapt train`` estimates the whole run from a short probe, shows it in one line and
refuses a plan far beyond its training unless ``--force`` (``fastadapt/config/plan.py``,
``fastadapt/training/commands.py``: ``probe_timings``, ``plan_check``).

The probe is replaced by fixed timings wherever the decision is tested, so the tests are fast and deterministic; one
test runs the real probe and checks that it changes nothing in the run.
"""

from __future__ import annotations

import json

import pytest
import torch

import fastadapt
from fastadapt import cli
from fastadapt.config import load_config
from fastadapt.config.plan import EVAL_FLOOR_S, TOTAL_BOUND_S, Timings, check_plan, estimate_plan, plan_refusal
from fastadapt.config.toml import preset_names
from fastadapt.core.errors import ConfigError
from fastadapt.runs.checkpoint import load_checkpoint, rng_state
from fastadapt.runs.folder import RunFolder
from fastadapt.training import commands
from fastadapt.training.loop import Trainer
from helpers import TINY, tiny

CPU = (
    1.0,
    0.05,
)  # seconds a step and an evaluation episode: protonet-quick on one loaded CPU core (measured ~1.1, ~0.05)
GPU = (0.02, 0.001)  # a fast accelerator
REPORTED = [
    ["eval.val_episodes=20000", "eval.val_every=5"],
    ["eval.val_episodes=3000000", "eval.val_every=1"],
]


def fixed(step_s: float, episode_s: float, settings: int) -> Timings:
    return Timings(step_s, episode_s, (episode_s,) * settings, 1.0)


@pytest.fixture
def fake_probe(monkeypatch):
    """Replace the probe by fixed timings; ``fake_probe(step_s, episode_s)`` sets them."""
    chosen = list(CPU)

    def probe(trainer) -> Timings:
        return fixed(chosen[0], chosen[1], len(trainer.sources.tests))

    monkeypatch.setattr(commands, "probe_timings", probe)

    def choose(step_s: float, episode_s: float) -> None:
        chosen[:] = [step_s, episode_s]

    return choose


@pytest.mark.parametrize("timings", [CPU, GPU], ids=["cpu", "gpu"])
@pytest.mark.parametrize("overrides", REPORTED, ids=["20000x5", "3000000x1"])
def test_the_reported_plans_are_refused_in_one_line_with_exit_2_and_nothing_written(
    overrides, timings, fake_probe, tmp_path, capsys
):
    fake_probe(*timings)
    out = tmp_path / "run"
    rc = cli.main(["train", "protonet-quick", *overrides, f"run.out={out}", "run.progress=false"])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fastadapt: error: {overrides[0]} x ")
    assert "lower eval.val_episodes or raise eval.val_every, or pass --force" in err
    assert "plan: ~" in captured.out  # the estimate is shown before the refusal
    assert not out.exists()


def test_force_trains_a_refused_plan_and_the_plan_line_comes_first(fake_probe, tmp_path, capsys):
    fake_probe(0.01, 100.0)  # evaluation episodes of 100 s: far beyond 2 steps of training
    out = tmp_path / "run"
    args = [
        "train",
        "protonet-quick",
        *TINY,
        "optim.steps=2",
        "optim.max_minutes=0",
        "eval.val_every=1",
        f"run.out={out}",
    ]
    assert cli.main(args) == 2
    assert "eval.val_episodes=6 x 2 validations = 12 episodes" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([*args, "--force"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run folder: ")
    assert lines[1] == (
        "plan: ~0 s training (2 steps), ~20 min validation (2 x 6 episodes), ~10 min test (1 x 6 episodes); "
        "estimate from a 1.0 s probe"
    )
    assert json.loads((out / "results.json").read_text())["steps"] == 2


@pytest.mark.parametrize("timings", [CPU, GPU], ids=["cpu", "gpu"])
def test_every_shipped_preset_passes_the_plan_with_fixed_timings(timings):
    for name in preset_names():
        cfg = load_config(name)
        plan = estimate_plan(cfg, fixed(*timings, 1 + len(cfg.eval.test_settings)), validating=True)
        assert plan_refusal(cfg, plan) is None, (name, plan.summary())


def test_a_too_long_test_or_training_names_its_own_keys():
    test = load_config("protonet-quick", ["eval.test_episodes=100000", "eval.test_settings=[[5, 5], [20, 1]]"])
    why = plan_refusal(test, estimate_plan(test, fixed(*CPU, 3), validating=True))
    assert why is not None and why.startswith("eval.test_episodes=100000 x 3 test settings = 300000 episodes, ~4.2 h")
    assert "lower eval.test_episodes (or eval.test_settings), or pass --force" in why
    long = load_config("protonet-quick", ["optim.steps=1000000", "optim.max_minutes=0"])
    why = plan_refusal(long, estimate_plan(long, fixed(*CPU, 1), validating=True))
    assert why is not None and why.startswith("optim.steps=1000000 x ~1 s a step: the run would take ~12 days")
    assert "lower optim.steps or set optim.max_minutes, or pass --force" in why
    with pytest.raises(ConfigError):
        check_plan(long, estimate_plan(long, fixed(*CPU, 1), validating=True))
    assert check_plan(long, estimate_plan(long, fixed(*CPU, 1), validating=True), force=True).steps == 1000000


def test_the_estimate_counts_validations_tests_and_the_minutes_budget():
    cfg = load_config("protonet-quick", ["optim.max_minutes=0", "eval.val_every=5", "eval.val_episodes=20000"])
    plan = estimate_plan(cfg, Timings(0.5, 0.01, (0.02,), 1.0), validating=True)
    assert (plan.steps, plan.validations) == (600, 120)
    assert plan.train_s == pytest.approx(300)
    assert plan.val_s == pytest.approx(120 * 20000 * 0.01)
    assert plan.test_s == pytest.approx(600 * 0.02)
    assert estimate_plan(cfg, Timings(0.5, 0.01, (0.02,), 1.0), validating=False).val_s == 0
    # optim.max_minutes=1, a step 1 s, a validation 5 s every 10 steps: the loop stops after the first step that
    # ends past 60 s (40 steps and 4 validations take exactly 60 s, so step 41) and validates it: 41 steps, 5
    budget = load_config("protonet-quick", ["optim.max_minutes=1", "eval.val_every=10", "eval.val_episodes=50"])
    plan = estimate_plan(budget, Timings(1.0, 0.1, (0.0,), 1.0), validating=True)
    assert (plan.steps, plan.validations) == (41, 5)
    assert 0 < EVAL_FLOOR_S < TOTAL_BOUND_S


def _model() -> torch.nn.Module:
    """An encoder whose training forward moves BatchNorm statistics and draws from torch's random stream (dropout)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.3),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )


def _snapshot(algo: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.state_dict().items()}


def test_the_probe_changes_nothing_in_the_model_the_gradients_or_the_random_streams(tmp_path):
    cfg = tiny(tmp_path)
    trainer = Trainer(cfg, RunFolder(cfg.out_dir), torch.device("cpu"), model=_model())
    trainer.setup(resume=False)
    before, rng = _snapshot(trainer.algo), rng_state()
    timings = commands.probe_timings(trainer)
    after = _snapshot(trainer.algo)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any("running_mean" in k for k in before)  # BatchNorm statistics: a training forward would move them
    assert all(p.grad is None for p in trainer.algo.parameters())
    assert torch.equal(rng_state()["torch"], rng["torch"])
    assert timings.step_s > 0 and timings.val_episode_s > 0 and len(timings.test_episode_s) == 1
    assert timings.probe_s < 2.0


def test_a_run_with_the_plan_equals_a_run_without_it(tmp_path):
    shown: list[str] = []
    plain = fastadapt.train(tiny(tmp_path, name="plain"), model=_model())
    planned = fastadapt.train(
        tiny(tmp_path, name="planned"), model=_model(), plan=commands.plan_check(show=shown.append)
    )
    assert len(shown) == 1 and shown[0].startswith("plan: ~")
    a, b = (load_checkpoint(r.out_dir / "checkpoint.pt", "cpu") for r in (plain, planned))
    assert a["algorithm"].keys() == b["algorithm"].keys()
    assert all(torch.equal(a["algorithm"][k], b["algorithm"][k]) for k in a["algorithm"])
    assert str(a["optimizer"]["state"]) == str(b["optimizer"]["state"])
    rows = [
        [{k: v for k, v in json.loads(line).items() if k not in ("time", "tasks_per_s")} for line in lines]
        for lines in ((r.out_dir / "metrics.jsonl").read_text().splitlines() for r in (plain, planned))
    ]
    assert rows[0] == rows[1]
    assert plain.tests.keys() == planned.tests.keys() == {"5w1s"}
    assert plain.tests["5w1s"].scores == planned.tests["5w1s"].scores
