"""Nothing lost or mixed up on a crash, one writer per run folder.

kill -9 at random moments (one inside a checkpoint write) then resume equals an uninterrupted run;
metrics.jsonl is cut back to the checkpoint on resume; a changed [optim] is applied (and recorded) or
refused, never ignored; test records are written all or none; a full or read-only disk is a one-line
error that leaves the last checkpoint intact; a second training of a folder refuses, a stale lock is
taken over. The Omniglot originals' checks are in tests/test_originals_verified.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import fastadapt.algorithms.protonet as protonet
import fastadapt.training.testing as eval_tests
import helpers
from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.core.errors import FastAdaptError
from fastadapt.runs.checkpoint import FAULT_SLEEP_ENV, load_checkpoint
from fastadapt.runs.folder import RunFolder, RunFolderLocked
from fastadapt.training.loop import train
from fastadapt.training.resume import TrainingDiverged
from fastadapt.training.testing import evaluate_run

SMALLER = ["model.hidden=4", "eval.val_episodes=3", "eval.test_episodes=3"]
TINY = [*helpers.TINY, *SMALLER]


def tiny(tmp_path, *extra, name="run"):
    return helpers.tiny(tmp_path, *SMALLER, *extra, name=name)


def rows(cfg_or_path, split=None):
    path = Path(getattr(cfg_or_path, "out_dir", cfg_or_path)) / "metrics.jsonl"
    out = [json.loads(x) for x in path.read_text().splitlines()]
    return out if split is None else [r for r in out if r["split"] == split]


def steps(cfg_or_path, split):
    return [r["step"] for r in rows(cfg_or_path, split)]


class Stop(Exception):
    """Raised by a step hook: the training dies as a crash would (no final checkpoint)."""


def stop_at(n):
    def hook(step):
        if step == n:
            raise Stop

    return hook


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp") or p.name == ".lock")


# -- records never lie -----------------------------------------------------------------------------


def test_resume_cuts_metrics_back_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    cfg = tiny(tmp_path)
    with pytest.raises(Stop):
        train(cfg, step_hook=stop_at(3))  # logged steps 1-3 and the validation at 3; the checkpoint is at step 2
    assert steps(cfg, "train") == [1, 2, 3] and steps(cfg, "val") == [3]
    with open(cfg.out_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "tr')  # a line torn by kill -9
    train(cfg)
    assert steps(cfg, "train") == [1, 2, 3, 4, 5, 6]
    assert steps(cfg, "val") == [3, 6]
    assert RunFolder(cfg.out_dir).read_metrics() == rows(cfg)


def test_reading_metrics_skips_a_torn_last_line(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
    assert folder.read_metrics() == [{"step": 1, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\nnot json\n{"step": 2, "split": "train"}\n')
    with pytest.raises(FastAdaptError, match="metrics.jsonl line 2 is not JSON"):
        folder.read_metrics()


def test_a_run_start_removes_the_temporary_files_of_killed_writes_and_nothing_else(tmp_path):
    cfg = tiny(tmp_path, "optim.steps=1", "eval.test_episodes=0")
    cfg.out_dir.mkdir(parents=True)
    ours = [
        ".checkpoint.pt.a1b2c3d4.tmp",
        ".config.json.zz_9yx8w.tmp",
        ".eval_5w1s.json.abcdefgh.tmp",
        ".metrics.jsonl.12345678.tmp",
    ]
    others = [".notes.txt.abcdefgh.tmp", "keep.tmp", ".checkpoint.pt.tmp"]
    for name in ours + others:
        (cfg.out_dir / name).write_bytes(b"partial")
    train(cfg)
    assert sorted(leftovers(cfg.out_dir)) == sorted([".notes.txt.abcdefgh.tmp", "keep.tmp", ".checkpoint.pt.tmp"])


@pytest.mark.parametrize(
    ("change", "expected_lr"),
    [
        (["optim.lr=0.004"], lambda s: 0.004),
        (
            ["optim.lr=0.004", "optim.gamma=0.1"],
            lambda s: 0.004 * 0.1 ** (s // 2),
        ),  # the run has a step schedule, step_size 2
        (["optim.steps=8", "optim.schedule='cosine'"], lambda s: 0.001 * 0.5 * (1 + math.cos(math.pi * s / 8))),
    ],
)
def test_resume_applies_a_changed_optim_and_records_it(tmp_path, change, expected_lr):
    base = (
        ["optim.schedule='step'", "optim.step_size=2", "optim.gamma=0.5", "optim.lr=0.001"]
        if "gamma" in change[-1]
        else ["optim.lr=0.001"]
    )
    cfg = tiny(tmp_path, *base, "eval.test_episodes=0")
    with pytest.raises(Stop):
        train(cfg, step_hook=stop_at(3))  # checkpoint at step 2
    changed = tiny(tmp_path, *base, *change, "eval.test_episodes=0")
    train(changed)
    after = [r for r in rows(cfg, "train") if r["step"] > 2]
    assert [r["step"] for r in after] == list(range(3, changed.optim.steps + 1))
    for r in after:
        assert r["lr"] == pytest.approx(expected_lr(r["step"]), rel=1e-9), r
    events = rows(cfg, "event")
    assert len(events) == 1 and events[0]["step"] == 2 and events[0]["event"] == "config changed"
    old, new = cfg.to_dict()["optim"], changed.to_dict()["optim"]
    assert events[0]["changes"] == {f"optim.{k}": [old[k], new[k]] for k in new if old[k] != new[k]}
    assert json.loads((cfg.out_dir / "config.json").read_text())["optim"] == new


def test_resume_applies_a_changed_weight_decay_and_momentum_to_the_param_groups(tmp_path):
    cfg = tiny(tmp_path, "optim.optimizer='sgd'", "optim.momentum=0.5", "optim.lr=0.01", "eval.test_episodes=0")
    with pytest.raises(Stop):
        train(cfg, step_hook=stop_at(3))
    train(
        tiny(
            tmp_path,
            "optim.optimizer='sgd'",
            "optim.momentum=0.9",
            "optim.weight_decay=0.01",
            "optim.lr=0.01",
            "eval.test_episodes=0",
        )
    )
    group = load_checkpoint(cfg.out_dir / "checkpoint.pt")["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 0.01
    assert rows(cfg, "event")[0]["changes"] == {"optim.momentum": [0.5, 0.9], "optim.weight_decay": [0.0, 0.01]}


def test_resume_refuses_a_changed_optimizer_in_one_line_and_changes_nothing(tmp_path):
    cfg = tiny(tmp_path, "eval.test_episodes=0")
    with pytest.raises(Stop):
        train(cfg, step_hook=stop_at(3))
    before = {p.name: p.read_bytes() for p in cfg.out_dir.iterdir()}
    with pytest.raises(
        FastAdaptError, match="optim.optimizer changed from 'adam' to 'sgd' .* keep optim.optimizer='adam'"
    ) as e:
        train(tiny(tmp_path, "optim.optimizer='sgd'", "eval.test_episodes=0"))
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in cfg.out_dir.iterdir()} == before


def test_non_finite_loss_at_the_first_step_does_not_promise_a_checkpoint(tmp_path, monkeypatch):
    original = protonet.ProtoNet.meta_loss
    poisoned = {"from": 0}

    def meta_loss(self, batch):
        out = original(self, batch)
        return type(out)(out.loss * float("nan"), out.metrics) if self.training and poisoned["from"] <= 0 else out

    monkeypatch.setattr(protonet.ProtoNet, "meta_loss", meta_loss)
    cfg = tiny(tmp_path)
    with pytest.raises(
        TrainingDiverged,
        match=r"loss is nan at step 0; lower optim.lr or set optim.clip_grad \(no checkpoint of this run "
        r"was saved yet \(the first comes at step 2\)",
    ) as e:
        train(cfg)
    assert "is kept" not in str(e.value) and not (cfg.out_dir / "checkpoint.pt").exists()
    poisoned["from"] = 1
    cfg = tiny(tmp_path, name="later")

    def poison_after_3(step):
        if step == 3:
            poisoned["from"] = 0

    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 3; .*the last good checkpoint, step 2, is kept in .*checkpoint.pt"
    ):
        train(cfg, step_hook=poison_after_3)
    assert int(load_checkpoint(cfg.out_dir / "checkpoint.pt")["step"]) == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run with two test settings."""
    cfg = tiny(tmp_path_factory.mktemp("trained"), "eval.test_settings=[[5,1],[5,2]]")
    train(cfg)
    return cfg


def test_eval_refuses_zero_test_episodes_in_one_line(trained, capsys):
    with pytest.raises(FastAdaptError, match="eval.test_episodes=0: nothing to evaluate"):
        evaluate_run(str(trained.out_dir), ["eval.test_episodes=0"])
    assert cli_main(["eval", str(trained.out_dir), "eval.test_episodes=0"]) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and err.count("\n") == 1
    assert not (trained.out_dir / "evals").exists()


def _raise_on_second(monkeypatch, module, name, exc):
    real, calls = getattr(module, name), []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fake)


def test_an_eval_failing_in_its_second_setting_writes_nothing(trained, monkeypatch):
    _raise_on_second(monkeypatch, eval_tests, "evaluate", RuntimeError("boom in 5w2s"))
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_run(str(trained.out_dir), ["eval.test_episodes=2"])
    evals = trained.out_dir / "evals"
    assert not evals.exists() or list(evals.iterdir()) == []


def _disk_full_writing(monkeypatch, name: str) -> None:
    """The temporary file of ``name`` (a record written atomically) hits a full disk; every other file is written."""
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        if prefix.startswith(f".{name}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_an_eval_whose_second_file_hits_a_full_disk_writes_nothing(trained, monkeypatch):
    _disk_full_writing(monkeypatch, "5w2s")
    with pytest.raises(
        FastAdaptError, match=r"cannot write .*5w2s__eval.test_episodes=2.json: no space left on the device; free space"
    ) as e:
        evaluate_run(str(trained.out_dir), ["eval.test_episodes=2"])
    assert "\n" not in str(e.value)
    evals = trained.out_dir / "evals"
    assert not evals.exists() or list(evals.iterdir()) == []
    monkeypatch.undo()
    written = evaluate_run(str(trained.out_dir), ["eval.test_episodes=2"])
    assert sorted(Path(f).name for _, f in written.values()) == sorted(p.name for p in evals.iterdir())


def test_a_training_whose_testing_fails_leaves_no_test_records(tmp_path, monkeypatch):
    _raise_on_second(monkeypatch, eval_tests, "evaluate", RuntimeError("boom in 5w2s"))
    cfg = tiny(tmp_path, "eval.test_settings=[[5,1],[5,2]]", "eval.val_every=0")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    assert not list(cfg.out_dir.glob("eval_*.json")) and not (cfg.out_dir / "results.json").exists()


def test_test_records_and_results_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    _disk_full_writing(monkeypatch, "results.json")
    cfg = tiny(tmp_path, "eval.test_settings=[[5,1],[5,2]]")
    with pytest.raises(FastAdaptError, match="cannot write .*results.json: no space left on the device"):
        train(cfg)
    assert not list(cfg.out_dir.glob("eval_*.json")) and not (cfg.out_dir / "results.json").exists()
    assert leftovers(cfg.out_dir) == []


# -- disk faults -----------------------------------------------------------------------------------


def _second_checkpoint_fails(monkeypatch, how):
    """Make the second write of checkpoint.pt fail ``how``: "save" (torch.save hits a full disk) or an errno at the
    rename."""
    calls = []
    if how == "save":
        real = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and "optimizer" in obj:
                calls.append(1)
                if len(calls) == 2:
                    f.write(b"partial")
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
    else:
        real_replace = os.replace

        def replace_(src, dst, *a, **k):
            if Path(dst).name == "checkpoint.pt":
                calls.append(1)
                if len(calls) == 2:
                    raise OSError(how, os.strerror(how))
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace_)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("save", "no space left on the device; free space there or choose another run.out"),
        (errno.ENOSPC, "no space left on the device; free space there or choose another run.out"),
        (errno.EACCES, "permission denied; fix the folder's permissions or choose another run.out"),
        (errno.EROFS, "the file system is read-only; choose another run.out"),
    ],
)
def test_a_disk_fault_in_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys, how, message
):
    cfg = tiny(tmp_path, "eval.val_every=0")
    first = {}

    def remember(step):
        if step == 3:  # checkpoint.pt of step 2 is on disk
            first["bytes"] = (cfg.out_dir / "checkpoint.pt").read_bytes()

    _second_checkpoint_fails(monkeypatch, how)
    with pytest.raises(FastAdaptError, match=f"cannot write {cfg.out_dir / 'checkpoint.pt'}: {message}$") as e:
        train(cfg, step_hook=remember)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert (cfg.out_dir / "checkpoint.pt").read_bytes() == first["bytes"]
    state = load_checkpoint(cfg.out_dir / "checkpoint.pt")
    assert int(state["step"]) == 2
    assert leftovers(cfg.out_dir) == []  # no temporary file, the lock released
    _second_checkpoint_fails(monkeypatch, how)
    args = [
        "train",
        "protonet-quick",
        *TINY,
        "eval.val_every=0",
        "run.keep_freed_memory=false",
        f"run.out={tmp_path / 'cli'}",
    ]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error: cannot write") and err.count("\n") == 1 and message in err


# -- one writer per run folder ---------------------------------------------------------------------


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "fastadapt.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def test_a_second_training_of_a_running_folder_refuses_and_a_stopped_one_releases_its_lock(tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "train",
        "protonet-quick",
        *TINY,
        "optim.steps=100000",
        "eval.val_every=0",
        "run.checkpoint_every=1000",
        f"run.out={out}",
    ]
    first = _cli(args)
    try:
        t0 = time.time()
        while not (out / "metrics.jsonl").exists():  # training: the lock is held
            assert first.poll() is None, first.communicate()
            assert time.time() - t0 < 60, "the first training did not start"
            time.sleep(0.05)
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname() and lock["started"]
        capsys.readouterr()
        assert cli_main([*args, "run.keep_freed_memory=false"]) == 2  # the second training, in this process
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is being written by pid {first.pid} on {socket.gethostname()}" in err, err
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
        assert first.returncode == 143  # 128 + SIGTERM
        assert not (out / ".lock").exists()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()


def test_a_stale_lock_is_taken_over_and_a_live_or_foreign_one_refuses(tmp_path, capsys):
    cfg = tiny(tmp_path, "optim.steps=2", "eval.test_episodes=0")
    lock = cfg.out_dir / ".lock"
    cfg.out_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for holder, refused in (
        ({"pid": os.getpid(), "host": socket.gethostname(), "started": now}, "stop it"),
        ({"pid": 1, "host": "elsewhere.example", "started": "2020-01-01T00:00:00+00:00"}, "on another host"),
    ):
        lock.write_text(json.dumps(holder))
        with pytest.raises(
            RunFolderLocked, match=f"is being written by pid {holder['pid']} on {holder['host']} .*{refused}"
        ) as e:
            train(cfg)
        assert "\n" not in str(e.value) and json.loads(lock.read_text()) == holder
        assert not (cfg.out_dir / "metrics.jsonl").exists()
    lock.write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"})
    )
    capsys.readouterr()
    assert train(cfg).steps == 2  # a live pid that started after the lock was taken: the pid was reused
    assert "(its pid was reused)" in capsys.readouterr().err
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}))
    capsys.readouterr()
    assert train(cfg).steps == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"taking over the lock of {cfg.out_dir}: pid {gone.pid}" in err
        and "no longer running" in err
    )
    assert not lock.exists()


def test_the_lock_is_released_when_the_training_fails(tmp_path):
    cfg = tiny(tmp_path)
    with pytest.raises(Stop):
        train(cfg, step_hook=stop_at(1))
    assert not (cfg.out_dir / ".lock").exists()
    with RunFolder(cfg.out_dir).lock() as held:
        assert held["pid"] == os.getpid()
        with pytest.raises(RunFolderLocked):
            train(cfg)
    assert not (cfg.out_dir / ".lock").exists()


# -- kill -9 at random moments ---------------------------------------------------------------------

KILL = [
    "model.hidden=4",
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "data.test_queries=3",
    "optim.steps=30",
    "run.checkpoint_every=3",
    "run.log_every=1",
    "eval.val_every=10",
    "eval.val_episodes=3",
    "eval.test_episodes=3",
    "eval.batch=3",
    "run.progress=false",
    "run.threads=1",
]


def _last_step(metrics: Path) -> int:
    """The step of the last complete train row (0 if none)."""
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return 0
    last = 0
    for line in text.split("\n")[:-1]:
        if '"split": "train"' in line:
            last = json.loads(line)["step"]
    return last


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = load_config("protonet-quick", [*KILL, f"run.out={tmp_path / 'straight'}"])
    train(straight)
    out = tmp_path / "killed"
    args = ["train", "protonet-quick", *KILL, f"run.out={out}"]
    rng = random.Random(12)  # kills after steps 10 and 18, inside a checkpoint write, after step 23
    moments: list[int | str] = sorted(rng.sample(range(2, 29), rng.randint(2, 3)))  # after this train step, plus one:
    moments.insert(rng.randrange(len(moments) + 1), "in a checkpoint write")
    killed = []  # (moment, whether the process was still running when killed)
    for moment in moments:
        env = os.environ | ({FAULT_SLEEP_ENV: "30"} if moment == "in a checkpoint write" else {})
        begin = _last_step(out / "metrics.jsonl")
        proc = _cli(args, env=env)
        try:
            t0 = time.time()
            while proc.poll() is None and time.time() - t0 < 60:
                if moment == "in a checkpoint write":
                    if list(out.glob(".*.pt.*.tmp")):  # checkpoint.pt, or best.pt when a validation comes first
                        break
                elif _last_step(out / "metrics.jsonl") >= max(moment, begin + 1):
                    break
                time.sleep(0.005)
        finally:
            killed.append((moment, proc.poll() is None))
            proc.kill()
            proc.communicate()
        if moment == "in a checkpoint write":
            assert killed[-1][1] and list(
                out.glob(".*.pt.*.tmp")
            )  # killed inside the write: its temporary file is left
    assert (out / ".lock").exists() == killed[-1][1]  # a killed training leaves its lock
    proc = _cli(args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert ("taking over the lock" in err) == killed[-1][1]
    a, b = load_checkpoint(straight.out_dir / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert int(a["step"]) == int(b["step"]) == 30
    assert a["algorithm"].keys() == b["algorithm"].keys()
    for k in a["algorithm"]:
        assert torch.equal(a["algorithm"][k], b["algorithm"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert steps(out, "train") == list(range(1, 31))
    assert steps(out, "val") == [10, 20, 30]
    assert [r["acc"] for r in rows(out, "val")] == [r["acc"] for r in rows(straight, "val")]
    assert leftovers(out) == []
    assert (
        json.loads((out / "results.json").read_text())["tests"]
        == json.loads((straight.out_dir / "results.json").read_text())["tests"]
    )
