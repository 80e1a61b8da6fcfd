"""run.loggers: CSV and TensorBoard files hold the logged steps, live and across a resume; a missing package is
one line."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

import fastadapt
import helpers
from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError
from fastadapt.training import loggers as loggers_module
from fastadapt.training.loggers import Loggers, scalars

TINY = [  # helpers.TINY with 2 test queries, validation every 2 steps on 4 episodes, no test
    *helpers.TINY,
    "data.test_queries=2",
    "eval.val_every=2",
    "eval.val_episodes=4",
    "eval.batch=2",
    "eval.test_episodes=0",
]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class _Crash(Exception):
    pass


def test_csv_and_tensorboard_hold_every_logged_step_once_across_a_crash_and_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    loggers = 'run.loggers=["jsonl", "csv", "tensorboard"]'

    def crash(step):
        if step == 3:  # the checkpoint is at step 2: step 3's rows are written, then the process dies
            raise _Crash

    with pytest.raises(_Crash):
        fastadapt.train(
            load_config("protonet-quick", [*TINY, "optim.steps=4", loggers, f"run.out={run}"]), step_hook=crash
        )
    assert {int(r["step"]) for r in _csv(run / "metrics.csv")} == {1, 2, 3}  # live: written before the crash
    fastadapt.train(load_config("protonet-quick", [*TINY, "optim.steps=4", loggers, f"run.out={run}"]))

    rows = _metrics(run / "metrics.jsonl")
    want = {
        (r["step"], r["split"], k): float(v)
        for r in rows
        for k, v in r.items()
        if k not in ("step", "split") and isinstance(v, (int, float))
    }
    got = {(int(r["step"]), r["split"], r["name"]): float(r["value"]) for r in _csv(run / "metrics.csv")}
    assert len(_csv(run / "metrics.csv")) == len(got)  # no (step, metric) twice
    assert got == want and sorted({s for s, _, _ in got}) == [1, 2, 3, 4]

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/acc", "val/acc", "val/ci"} <= set(acc.Tags()["scalars"])
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]  # the crashed run's step 3 purged, logged again once
    for e in losses:
        assert e.value == pytest.approx(want[(e.step, "train", "loss")], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/acc")] == [2, 4]


def test_a_fresh_run_starts_its_logs_empty(tmp_path):
    run = tmp_path / "run"
    for _ in range(2):
        fastadapt.train(
            load_config("protonet-quick", [*TINY, "optim.steps=2", 'run.loggers=["csv"]', f"run.out={run}"]),
            resume=False,
        )
    assert sorted({int(r["step"]) for r in _csv(run / "metrics.csv") if r["name"] == "loss"}) == [1, 2]
    assert len([r for r in _csv(run / "metrics.csv") if r["name"] == "loss"]) == 2


def test_scalars_take_the_numbers_of_a_row():
    row = {
        "step": 3,
        "split": "val",
        "acc": 0.5,
        "ci": 0.1,
        "event": "x",
        "changes": {"a": [1, 2]},
        "flag": True,
        "bad": float("nan"),
    }
    assert scalars(row) == {"val/acc": 0.5, "val/ci": 0.1}


def test_a_logger_whose_package_is_missing_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loggers_module.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package; pip install 'fastadapt\[wandb\]'") as e:
        Loggers(["jsonl", "wandb"], tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="run.loggers=.*'mlflow' is not one of jsonl, csv, tensorboard, wandb"):
        load_config("protonet-quick", ['run.loggers=["mlflow"]'])


def test_wandb_logs_offline_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Loggers(["wandb"], tmp_path, config={"a": 1}, name="t") as log:
        log.log({"step": 1, "split": "train", "loss": 2.0})
        log.log({"step": 2, "split": "train", "loss": 1.0})
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
