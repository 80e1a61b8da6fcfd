"""Many workers on one shared study (``--storage URL``): a real PostgreSQL server (a throwaway cluster) and SQLite
files; a worker killed with SIGKILL mid-trial or mid-cell; no trial or cell lost or run twice; the same best trial
and the same results.json as one worker; a bad URL, an unreachable server and another preset's study in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import needs_package, throwaway_postgres, tiny_tune_toml

optuna = pytest.importorskip("optuna")

from sqlalchemy import text  # noqa: E402 (with Optuna)
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from fastadapt.apps import storage as shared  # noqa: E402
from fastadapt.apps.study import load_study, run_study  # noqa: E402
from fastadapt.apps.tuning import tune  # noqa: E402
from fastadapt.cli import main  # noqa: E402

STUDY = """
description = "a tiny grid on many workers"
out = "{out}"
overrides = ["optim.steps={steps}", "data.meta_batch=2", "model.layers=[8]", "eval.val_every=0", "eval.test_episodes=0",
  "run.checkpoint_every=20", "run.log_every=10", "run.progress=false", "run.threads=1"]
seeds = [0, 1]
episodes = 3

[rows]
MAML = "maml-sinusoid"

[variants]
"lr 0.01" = []
"lr 0.1" = ["algorithm.inner_lr=0.1"]

[evals]
"1 step" = {{ test = "5shot", overrides = ["algorithm.inner_steps_eval=1"] }}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DEADLINE_S = 150


@pytest.fixture(scope="module")
def postgres():
    """``database(name) -> URL`` on a throwaway PostgreSQL server, one server for the module."""
    with throwaway_postgres() as database:
        yield database


def tune_file(folder: Path, steps: int = 8) -> Path:
    path = folder / "tiny.toml"
    path.write_text(
        tiny_tune_toml(steps, steps, 6, log_every=5, run_extra="threads = 1\n", tune_extra='pruner = "none"\n')
    )
    return path


def study_file(folder: Path, out: Path, steps: int = 4, name: str = "grid") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(out=out, steps=steps))
    return path


def workers(args: list[str], n: int, cwd: Path) -> list[subprocess.Popen]:
    """``n`` processes of ``fastadapt ARGS`` (one thread each), their output in ``cwd/worker-I.log``."""
    procs = []
    for i in range(n):
        with open(cwd / f"worker-{i}.log", "w") as log:  # the child keeps its own copy
            cmd = [sys.executable, "-m", "fastadapt", *args]
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=log, stderr=subprocess.STDOUT))
    return procs


def kill_when(victim: subprocess.Popen, busy, others: list[subprocess.Popen]) -> None:
    """SIGKILL ``victim`` as soon as ``busy(pid)`` says it is in the middle of its work."""
    deadline = time.monotonic() + DEADLINE_S
    while not busy(victim.pid):
        assert victim.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "the worker never started working"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    for p in others:
        assert p.wait(timeout=DEADLINE_S) == 0, (Path(p.args[-1]).name, p.returncode)


def trials_of(url: str, name: str) -> list:
    """The trials of study ``name``, read through a storage closed again after."""
    storage = optuna.storages.RDBStorage(shared.normalize(url), skip_table_creation=True)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.remove_session()
        storage.engine.dispose()


def key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def check_tune_survives_a_killed_worker(tmp_path: Path, url_one: str, url_many: str) -> None:
    """One worker, then three (one killed mid-trial): the same 6 trials, the same best, the killed trial retried."""
    config = tune_file(tmp_path, steps=100)
    one = tune(str(config), [], tmp_path / "one" / "study", storage=url_one, heartbeat=1)
    assert (one.finished, one.failed) == (6, 0)
    folder = tmp_path / "many" / "study"
    many = workers(["tune", str(config), "--dir", str(folder), "--storage", url_many, "--heartbeat", "1"], 3, tmp_path)

    engine = shared.connect(shared.normalize(url_many))

    def busy(pid: int) -> bool:  # its trial has written training rows: mid-trial
        query = (
            "SELECT w.value_json, d.value_json FROM trials t JOIN trial_user_attributes w ON w.trial_id = t.trial_id "
            "JOIN trial_user_attributes d ON d.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND w.key = 'worker' "
            "AND d.key = 'run_dir'"
        )
        try:
            with engine.connect() as con:
                rows = con.execute(text(query)).all()
        except SQLAlchemyError:  # no tables yet
            return False
        held = [json.loads(d) for w, d in rows if json.loads(w).endswith(f":{pid}")]
        return any((Path(d) / "metrics.jsonl").is_file() for d in held)

    kill_when(many[0], busy, many[1:])
    engine.dispose()
    got = trials_of(url_many, "study")
    state = optuna.trial.TrialState
    done = [t for t in got if t.state == state.COMPLETE]
    failed = [t for t in got if t.state == state.FAIL]
    assert {t.state for t in got} == {state.COMPLETE, state.FAIL} and len(failed) == 1
    assert len(done) == 6 and len({key(t.params) for t in done}) == 6  # none lost, none run twice
    retry = [t for t in done if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params  # the killed trial's values, run again
    ones = trials_of(url_one, "study")
    assert {key(t.params): t.value for t in ones} == {key(t.params): t.value for t in done}
    best = max(done, key=lambda t: t.value)
    assert (key(best.params), best.value) == (key(one.best_params), one.best_value)
    body = (folder / "best.toml").read_text().split("\n", 2)[2]  # after the title, which names the trial
    assert body.replace(str(folder), "DIR") == (one.folder / "best.toml").read_text().split("\n", 2)[2].replace(
        str(one.folder), "DIR"
    )


def comparable(results: dict, out: Path) -> dict:
    """results.json without what differs between two equal studies: the folder and the training minutes."""
    plain = json.loads(json.dumps(results).replace(str(out), "OUT"))
    for cell in plain["cells"].values():
        cell.pop("train_minutes")
    return plain


def check_study_survives_a_killed_worker(tmp_path: Path, url: str) -> None:
    """A grid on one worker (no storage), then on three sharing ``url`` (one killed mid-cell): the same results."""
    one_out, many_out = tmp_path / "one", tmp_path / "many"
    alone = run_study(study_file(tmp_path, one_out, steps=400, name="alone"), progress=lambda s: None)
    grid = study_file(tmp_path, many_out, steps=400)
    many = workers(["study", str(grid), "--storage", url, "--heartbeat", "1"], 3, tmp_path)
    engine = shared.connect(shared.normalize(url))
    runs = {c.label: c.run for c in load_study(grid).cells}

    def busy(pid: int) -> bool:  # the victim holds a cell whose run has a checkpoint: mid-cell
        try:
            with engine.connect() as con:
                rows = con.execute(text("SELECT label, worker FROM fastadapt_cells WHERE state = 'running'")).all()
        except SQLAlchemyError:  # no table yet
            return False
        return any((runs[label] / "checkpoint.pt").is_file() for label, w in rows if w.endswith(f":{pid}"))

    kill_when(many[0], busy, many[1:])
    with engine.connect() as con:
        rows = con.execute(text("SELECT label, state, attempts FROM fastadapt_cells WHERE study = 'grid'")).all()
    engine.dispose()
    assert {state for _, state, _ in rows} == {"done"} and len(rows) == 4
    assert sorted(a for _, _, a in rows) == [1, 1, 1, 2]  # each cell once, the killed one resumed once more
    merged = json.loads((many_out / "results.json").read_text())
    assert list(merged["cells"]) == list(alone["cells"])  # the study's order, not the finishing order
    assert comparable(merged, many_out) == comparable({**alone, "study": "grid"}, one_out)
    assert (many_out / "results.md").is_file()


@needs_package("postgresql")
def test_tune_on_postgresql_three_workers_one_killed_same_trials_and_best(tmp_path, postgres):
    check_tune_survives_a_killed_worker(tmp_path, postgres("tune_one"), postgres("tune_many"))


@needs_package("postgresql")
def test_study_on_postgresql_three_workers_one_killed_same_results(tmp_path, postgres):
    check_study_survives_a_killed_worker(tmp_path, postgres("grid"))


def test_tune_on_an_sqlite_url_three_workers_one_killed_same_trials_and_best(tmp_path):
    check_tune_survives_a_killed_worker(tmp_path, f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/many.db")


def test_study_on_an_sqlite_url_three_workers_one_killed_same_results(tmp_path):
    check_study_survives_a_killed_worker(tmp_path, f"sqlite:///{tmp_path}/grid.db")


def one_line(capsys, argv: list[str]) -> str:
    """Run ``fastadapt ARGV``: exit status 2 and one line on stderr, returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastadapt: error: "), err
    return err


@pytest.mark.parametrize(
    "url, match",
    [
        ("nonsense", "is not a database URL"),
        ("mysql://u@localhost/db", "the scheme 'mysql' is not supported"),
        ("sqlite://", "needs a file that every worker opens"),
        ("postgresql://u:secret@localhost", "names no database"),
    ],
)
def test_a_bad_storage_url_is_one_line_and_writes_nothing(tmp_path, capsys, url, match):
    config = tune_file(tmp_path)
    assert match in one_line(capsys, ["tune", str(config), "--dir", str(tmp_path / "t"), "--storage", url])
    assert "secret" not in capsys.readouterr().err and not (tmp_path / "t").exists()
    grid = study_file(tmp_path, tmp_path / "out")
    assert match in one_line(capsys, ["study", str(grid), "--storage", url])
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_is_one_line_naming_it_without_its_password(tmp_path, capsys):
    pytest.importorskip("psycopg", reason="needs psycopg 3: pip install 'fastadapt[cluster]'")
    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://tuner:secret@127.0.0.1:{port}/studies"
    err = one_line(capsys, ["tune", str(tune_file(tmp_path)), "--dir", str(tmp_path / "t"), "--storage", url])
    assert "cannot reach the database" in err and f"tuner:***@127.0.0.1:{port}/studies" in err and "secret" not in err
    assert not (tmp_path / "t").exists()
    err = one_line(capsys, ["study", str(study_file(tmp_path, tmp_path / "out")), "--storage", url])
    assert "cannot reach the database" in err and not (tmp_path / "out").exists()
    missing = f"sqlite:///{tmp_path}/no/such/folder.db"
    grid = study_file(tmp_path, tmp_path / "o")
    assert "does not exist" in one_line(capsys, ["study", str(grid), "--storage", missing])
    assert "--heartbeat 0 is invalid" in one_line(
        capsys, ["tune", str(tune_file(tmp_path)), "--storage", f"sqlite:///{tmp_path}/a.db", "--heartbeat", "0"]
    )


def test_a_study_of_another_preset_or_grid_in_the_database_is_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/shared.db"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = tune(str(tune_file(tmp_path / "a", steps=4)), [], tmp_path / "a" / "study", storage=url, trials=1)
    assert one.finished == 1
    other = tune_file(tmp_path / "b", steps=5)  # another config, and another folder of the same name: the same study
    err = one_line(capsys, ["tune", str(other), "--dir", str(tmp_path / "b" / "study"), "--storage", url])
    assert "the study 'study'" in err and "created by another preset" in err
    assert not list((tmp_path / "b" / "study").glob("trials/*"))  # nothing trained
    grid_a = study_file(tmp_path / "a", tmp_path / "a" / "out", steps=2)
    run_study(grid_a, storage=url, heartbeat=1, only=["MAML, lr 0.01, seed 0"], progress=lambda s: None)
    grid_b = study_file(tmp_path / "b", tmp_path / "b" / "out", steps=3)  # grid.toml again, other steps
    err = one_line(capsys, ["study", str(grid_b), "--storage", url])
    assert "holds a study 'grid' with another grid" in err


def test_a_trial_whose_heartbeat_stops_is_failed_and_queued_again_with_its_values(tmp_path):
    from fastadapt.apps.tune_workers import close, open_study, reap

    mark = {"preset": "p", "overrides": [], "config": {"a": 1}, "space": {"x": {"choices": [1, 2]}}}
    study, engine = open_study(f"sqlite:///{tmp_path}/s.db", "s", mark, 0, optuna.pruners.NopPruner(), 1)
    try:
        dist = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
        with pytest.warns(UserWarning, match="Heartbeat of storage"):
            trial = study.ask(dist)
        trial.set_user_attr("worker", "another-host:123")  # a worker this host cannot check: its heartbeat decides
        study._storage.record_heartbeat(trial._trial_id)
        beat = time.monotonic()
        reap(study)
        assert [t.state.name for t in study.get_trials()] == ["RUNNING"]  # beating recently: alive
        while len(study.get_trials()) == 1 and time.monotonic() - beat < 10:  # the database's clock counts seconds
            time.sleep(0.2)
            reap(study)
        assert time.monotonic() - beat >= 3  # GRACE = 3 heartbeats of 1 s without a beat, not before
        first, again = study.get_trials()
        assert (first.state.name, again.state.name) == ("FAIL", "WAITING")
        assert again.params == first.params and again.system_attrs["failed_trial"] == first.number
    finally:
        close(study, engine)


def test_a_cell_whose_heartbeat_stops_goes_back_to_the_queue(tmp_path, monkeypatch):
    from fastadapt.apps import study_claims

    grid = load_study(study_file(tmp_path, tmp_path / "out"))
    engine = shared.connect(f"sqlite:///{tmp_path}/cells.db")
    study_claims.register(engine, grid)
    monkeypatch.setattr(study_claims, "worker_id", lambda: "another-host:7")
    first = grid.cells[0].label
    assert study_claims.claim(engine, "grid", [first]) == (first, None)
    assert study_claims.claim(engine, "grid", [first]) is None  # held: no second claim
    assert study_claims.reap(engine, "grid", heartbeat=1) == []
    with engine.begin() as con:  # its last beat 10 s ago: past 3 heartbeats of 1 s
        con.execute(text("UPDATE fastadapt_cells SET beat = beat - 10"))
    assert study_claims.reap(engine, "grid", heartbeat=1) == [first]
    monkeypatch.setattr(study_claims, "worker_id", lambda: "this-host:8")
    assert study_claims.claim(engine, "grid", [first]) == (first, "another-host:7")  # the next worker resumes it
    engine.dispose()


def test_a_worker_stopped_by_sigterm_queues_its_trial_again_and_exits_143(tmp_path):
    url = f"sqlite:///{tmp_path}/term.db"
    folder = tmp_path / "study"
    config = tune_file(tmp_path, steps=400)
    (worker,) = workers(["tune", str(config), "--dir", str(folder), "--storage", url], 1, tmp_path)
    deadline = time.monotonic() + DEADLINE_S
    while not list(folder.glob("trials/*/metrics.jsonl")):  # mid-trial: its first training rows are written
        assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker-0.log").read_text()
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 128 + signal.SIGTERM
    states = [(t.state.name, t.params, t.system_attrs.get("failed_trial")) for t in trials_of(url, "study")]
    assert [s for s, _, _ in states] == ["FAIL", "WAITING"] and states[0][1] == states[1][1] and states[1][2] == 0
