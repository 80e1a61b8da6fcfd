"""`fastadapt tune`: an Optuna study in an SQLite file that survives SIGKILL, pruned diverging trials, bad input in one
line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from fastadapt import ConfigError, FastAdaptError  # noqa: E402
from fastadapt.apps.tuning import parse_param, parse_spec, tune  # noqa: E402
from helpers import tiny_tune_toml  # noqa: E402


def tiny(tmp_path: Path, steps: int = 4, val_every: int = 2, trials: int = 2, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(tiny_tune_toml(steps, val_every, trials))
    return path


def finished(db: Path) -> list[tuple[int, str, float | None]]:
    """(number, state, value) of every trial, read with sqlite3 alone (no Optuna in the reader)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        rows = con.execute(
            "SELECT t.number, t.state, v.value FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
            "ORDER BY t.number"
        ).fetchall()
    return [(n, s, v) for n, s, v in rows]


def trial_params(db: Path) -> dict[int, dict[str, float]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        rows = con.execute(
            "SELECT t.number, p.param_name, p.param_value FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id"
        ).fetchall()
    out: dict[int, dict[str, float]] = {}
    for n, name, value in rows:
        out.setdefault(n, {})[name] = value
    return out


def test_a_study_killed_with_sigkill_resumes_with_its_finished_trials(tmp_path):
    config = tiny(tmp_path, steps=30, val_every=10, trials=6)
    study = tmp_path / "study"
    db = study / "study.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fastadapt", "tune", str(config), "--dir", str(study)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if db.is_file() and any(s == "COMPLETE" for _, s, _ in finished(db)):
                    break
            except sqlite3.OperationalError:  # the writer holds the file a moment
                pass
            assert proc.poll() is None, "the tuning ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = finished(db)
    done_before = {n: v for n, s, v in before if s == "COMPLETE"}
    params_before = trial_params(db)
    assert done_before and len(done_before) < 6
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    after = finished(db)
    for n, v in done_before.items():  # every trial finished before the kill is intact: same state, value and parameters
        assert (n, "COMPLETE", v) in after
        assert trial_params(db)[n] == params_before[n]
    states = [s for _, s, _ in after]
    assert (
        states.count("COMPLETE") + states.count("PRUNED") == 6
    )  # the budget counts the trials finished before the kill
    assert "RUNNING" not in states  # the trial killed mid-run is marked failed (and its values tried again)
    assert (study / "best.toml").is_file() and "finished" in again.stdout


def test_diverging_trial_is_pruned_and_recorded_and_the_study_goes_on(tmp_path):
    config = tiny(tmp_path, trials=2)
    res = tune(
        str(config), [], tmp_path / "study", ["algorithm.inner_lr=[1e30]"], trials=2
    )  # every trial's loss is not finite
    study = optuna.load_study(study_name="fastadapt", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.PRUNED
    ] * 2  # both ran: the first did not stop the study
    assert all("loss is" in t.user_attrs["diverged"] for t in study.trials)
    assert (res.finished, res.pruned, res.best_file) == (0, 2, None)
    res = tune(str(config), [], tmp_path / "study", ["algorithm.inner_lr=[1e30]"], trials=3)  # resumed: one more trial
    assert res.pruned == 3


def test_bad_input_is_one_line(tmp_path):
    config = tiny(tmp_path)
    cases = [
        ({"optim.lr": {"low": 1e-2, "high": 1e-3}}, "inverted"),
        ({"optim.lr": {"low": 1e-2, "high": 1e-2}}, "empty"),
        ({"optim.lr": {"low": 0.0, "high": 1e-2, "log": True}}, "log range needs low > 0"),
        ({"optim.lr": {"choices": []}}, "empty"),
        ({"optim.lr": {"low": 1e-3}}, "needs low and high"),
        ({"lr": {"low": 1e-3, "high": 1e-2}}, "unknown key tune.lr"),
        ({"pruner": "hyperband", "optim.lr": [1e-3]}, "pruner"),
    ]
    for table, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_spec(table)
    with pytest.raises(ConfigError, match="nothing to tune"):
        parse_spec({"trials": 3})
    with pytest.raises(ConfigError, match="unknown key optim.nope"):
        tune(str(config), [], tmp_path / "a", ["optim.nope=[1, 2]"])
    with pytest.raises(ConfigError, match="optim.lr=20"):
        tune(str(config), [], tmp_path / "a", ["optim.lr={ low = 1e-3, high = 20.0 }"])
    with pytest.raises(ConfigError, match="needs validation"):
        tune(str(config), ["eval.val_every=0"], tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing written for bad input
    assert parse_param("algorithm.inner_steps", {"low": 1, "high": 5}).low == 1
    tune(str(config), [], tmp_path / "b", trials=1)
    record = json.loads((tmp_path / "b" / "tune.json").read_text())
    assert set(record["space"]) == {"optim.lr", "algorithm.inner_steps"}
    other = tiny(tmp_path, steps=5, name="other.toml")
    with pytest.raises(FastAdaptError, match="another preset or config"):
        tune(str(other), [], tmp_path / "b", trials=1)
    with pytest.raises(FastAdaptError, match="another search space"):
        tune(str(config), [], tmp_path / "b", ["optim.lr=[0.001]"], trials=1)


def test_under_torchrun_it_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    from fastadapt.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["tune", str(tiny(tmp_path)), "--dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun" in err and not (tmp_path / "c").exists()


def test_plot_draws_the_study(tmp_path):
    pytest.importorskip("matplotlib")
    from fastadapt.cli import main

    config = tiny(tmp_path, trials=2)
    tune(str(config), [], tmp_path / "s", trials=2)
    assert main(["plot", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "study.png").stat().st_size > 1000
