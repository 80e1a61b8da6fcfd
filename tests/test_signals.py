"""SIGINT and SIGTERM stop every phase within 5 s: training steps, validation, the test after training, fastadapt eval.

A signal abandons a partial validation (no row, no ``best.pt``) and saves the checkpoint of the last completed step,
from which the same command resumes exactly; a partial test or evaluation writes no record. The exit status is
128 + the signal: 130 for SIGINT, 143 for SIGTERM. One mechanism carries the signal to the evaluation loops:
``fastadapt.training.environment.StopFlag`` makes its flag the stop asked of ``fastadapt.core.cancel.check``.

The subprocess tests run small ProtoNets whose evaluation episodes are cheap (2-way 1-shot 1-query) but many, so a
phase lasts tens of seconds while a step takes milliseconds; each waits for its phase to begin (a metrics row, or the
phase's progress bar on stderr) before it signals, and times the exit from the signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from fastadapt import cli
from fastadapt.core import cancel
from fastadapt.core.cancel import Cancelled, Interrupted
from fastadapt.eval import evaluate
from fastadapt.runs.checkpoint import load_checkpoint
from fastadapt.training.environment import StopFlag
from helpers import EXIT, STOP_WITHIN_S, images, signal_and_time, start_command, wait_until

SMALL = [
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "data.test_ways=2",
    "data.test_queries=1",  # about a millisecond an evaluation episode
    "model.hidden=8",
    "run.log_every=1",
    "run.threads=1",
]
VAL_EPISODES = 8000  # a validation lasts seconds (tens on a loaded machine); a resumed run repeats it
TRAIN = ["optim.steps=7", "eval.val_every=5", f"eval.val_episodes={VAL_EPISODES}", "eval.test_episodes=6"]


def _finish(args: list[str], logs: Path) -> str:
    proc = start_command(args, logs)
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (logs / "stderr").read_text()[-2000:]
    return (logs / "stdout").read_text()


def _rows(run: Path) -> list[dict]:
    file = run / "metrics.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.endswith("}")]


def _same(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run the interrupted ones must equal: 7 steps, validations at 5 and 7, never interrupted."""
    root = tmp_path_factory.mktemp("straight")
    _finish(["train", "protonet-quick", *SMALL, *TRAIN, "run.progress=false", f"run.out={root / 'run'}"], root / "logs")
    return root / "run"


# --- the mechanism, in this process ---------------------------------------------------------------------------------


def test_a_stop_flag_makes_a_signal_a_cancellation_and_a_second_one_stops_at_once():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert cancel.requested() is None
    cancel.check()  # outside a command: nothing to cancel
    with StopFlag() as flag:
        cancel.check()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between two bytecodes of this thread
        assert flag.signal == signal.SIGTERM
        with pytest.raises(Cancelled) as stopped:
            cancel.check()
        assert stopped.value.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert second.value.signum == signal.SIGINT and not isinstance(second.value, Cancelled)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert cancel.requested() is None


class _Counting(torch.nn.Module):
    """Predicts uniform logits and counts the batches it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def predict(self, batch):
        self.batches += 1
        return torch.zeros(*batch.query_y.shape, 3)


def test_evaluate_abandons_between_batches_once_a_stop_is_asked():
    algo = _Counting()
    with cancel.cancellable(lambda: signal.SIGINT if algo.batches >= 2 else None):
        with pytest.raises(Cancelled):
            evaluate(algo, (images(seed=i, dtype=torch.float32) for i in range(10)))
    assert algo.batches == 2 and algo.training  # stopped before the third batch; the mode is restored
    assert evaluate(algo, (images(seed=i, dtype=torch.float32) for i in range(3))).episodes == 9


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt(), 130), (Interrupted(signal.SIGTERM), 143)])
def test_the_command_exits_with_128_plus_the_signal(raised, status, monkeypatch, capsys):
    def interrupted(args):
        raise raised

    monkeypatch.setattr(cli, "_cmd_list", interrupted)
    assert cli.main(["list"]) == status
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: interrupted (SIG") and err.count("\n") == 1, err


# --- the phases, through the command --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_a_validation_stops_within_5_s_and_the_same_command_resumes_exactly(sig, straight, tmp_path):
    run = tmp_path / "run"
    args = ["train", "protonet-quick", *SMALL, *TRAIN, "run.progress=false", f"run.out={run}"]
    proc = start_command(args, tmp_path / "logs")
    # the row of step 5 is written just before its validation starts; that validation lasts seconds at least
    wait_until(lambda: any(r["step"] == 5 for r in _rows(run)), proc, tmp_path / "logs", "step 5")
    time.sleep(0.3)
    took = signal_and_time(proc, sig)
    out, err = (tmp_path / "logs" / "stdout").read_text(), (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == EXIT[sig], err[-2000:]
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the validation"
    assert f"interrupted at step 5 ({signal.Signals(sig).name})" in out, out
    assert not [r for r in _rows(run) if r["split"] == "val"]  # the partial validation left no row
    assert not (run / "best.pt").exists()  # ... and no best model
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 5 and saved["validated_at"] is None

    assert "test 2w1s:" in _finish(args, tmp_path / "resumed")
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for key in ("step", "algorithm", "optimizer", "scheduler", "best_val", "validated_at"):
        _same(a[key], b[key], key)
    _same(a["rng"]["torch"], b["rng"]["torch"], "torch's RNG")  # numpy's and Python's are not seeded by a run
    best_a, best_b = load_checkpoint(straight / "best.pt"), load_checkpoint(run / "best.pt")
    for key in ("step", "algorithm", "val"):
        _same(best_a[key], best_b[key], f"best.pt {key}")

    def vals(r):
        return [(row["step"], row["acc"], row["ci"]) for row in _rows(r) if row["split"] == "val"]

    assert vals(run) == vals(straight) and [s for s, _, _ in vals(run)] == [5, 7]
    assert [(r["step"], r["split"]) for r in _rows(run)] == [(r["step"], r["split"]) for r in _rows(straight)]
    tests = [json.loads((r / "results.json").read_text())["tests"] for r in (straight, run)]
    assert tests[0] == tests[1]


@pytest.mark.slow
def test_a_signal_to_one_rank_in_a_validation_stops_both_ranks_within_5_s(tmp_path):
    """Under torchrun's environment (two ranks, gloo): the ranks agree on the stop between evaluation batches, so the
    rank that saw no signal waits in no collective; rank 0 names the other rank's signal and saves step 5."""
    run = tmp_path / "run"
    args = ["train", "protonet-quick", *SMALL, *TRAIN, "run.progress=false", "run.device=cpu", f"run.out={run}"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ranks = [
        start_command(
            args,
            tmp_path / f"rank{r}",
            WORLD_SIZE="2",
            RANK=str(r),
            LOCAL_RANK=str(r),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for r in (0, 1)
    ]
    try:
        wait_until(lambda: any(r["step"] == 5 for r in _rows(run)), ranks[1], tmp_path / "rank1", "step 5")
        time.sleep(0.3)
        t0 = time.monotonic()
        ranks[1].send_signal(signal.SIGTERM)
        for proc in ranks:
            proc.wait(timeout=60)
        took = time.monotonic() - t0  # until both ranks exited
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    errs = [(tmp_path / f"rank{r}" / "stderr").read_text()[-2000:] for r in (0, 1)]
    assert [proc.returncode for proc in ranks] == [143, 143], errs
    assert took <= STOP_WITHIN_S, f"SIGTERM to rank 1 took {took:.2f} s to stop both ranks"
    assert "interrupted at step 5 (SIGTERM)" in (tmp_path / "rank0" / "stdout").read_text()
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 5 and saved["world_size"] == 2 and saved["validated_at"] is None
    assert not [r for r in _rows(run) if r["split"] == "val"] and not (run / "best.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_the_test_after_training_stops_within_5_s_and_writes_no_record(sig, tmp_path):
    run = tmp_path / "run"
    args = ["train", "protonet-quick", *SMALL, "optim.steps=2", "eval.val_every=0", "eval.test_episodes=20000"]
    proc = start_command([*args, "run.progress=true", f"run.out={run}"], tmp_path / "logs")
    stderr = tmp_path / "logs" / "stderr"
    wait_until(lambda: "test 2w1s" in stderr.read_text(), proc, tmp_path / "logs", "the test's progress bar")
    time.sleep(0.3)
    took = signal_and_time(proc, sig)
    assert proc.returncode == EXIT[sig], stderr.read_text()[-2000:]
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the test"
    assert f"interrupted at step 2 ({signal.Signals(sig).name})" in (tmp_path / "logs" / "stdout").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2  # the same command goes straight to testing
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".json") == ["config.json"]  # no test record


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_fastadapt_eval_within_5_s_and_it_writes_no_record(sig, straight, tmp_path):
    before = sorted(p.relative_to(straight) for p in straight.rglob("*"))
    args = ["eval", str(straight), "eval.test_episodes=20000", "run.progress=true", "run.threads=1"]
    proc = start_command(args, tmp_path / "logs")
    stderr = tmp_path / "logs" / "stderr"
    wait_until(lambda: "test 2w1s" in stderr.read_text(), proc, tmp_path / "logs", "the evaluation's progress bar")
    time.sleep(0.3)
    took = signal_and_time(proc, sig)
    err = stderr.read_text()
    assert proc.returncode == EXIT[sig], err[-2000:]
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the evaluation"
    assert f"fastadapt: interrupted ({signal.Signals(sig).name}); no evaluation record written" in err, err[-2000:]
    assert sorted(p.relative_to(straight) for p in straight.rglob("*")) == before  # no evals/ file, no temporary
