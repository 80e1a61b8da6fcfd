"""Faults under torchrun, on two gloo ranks: the run lock, rank 0 killed inside a checkpoint write, a resume with
another number of processes, and ``best.pt`` after each; the process group ends with its block.

The ranks are subprocesses: ``fastadapt train`` with torchrun's environment (:func:`helpers.start_ranks`), or this
file as a program (``python tests/test_distributed_faults.py OUT STEPS [OVERRIDE...]``) that trains ``f64`` in float64
as tests/test_distributed.py does, so that two ranks and one process agree to its 1e-6.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.eval import EvalResult
from fastadapt.runs import best as best_files
from fastadapt.runs.best import KEPT_BEST
from fastadapt.runs.checkpoint import FAULT_SLEEP_ENV, load_checkpoint
from fastadapt.runtime.distributed import DEFAULT_TIMEOUT_S
from fastadapt.training import loop
from fastadapt.training.callbacks import Callback
from fastadapt.training.loop import train
from helpers import FASTADAPT, TINY, start_ranks, wait_all, wait_until
from test_distributed import TINY as DIST_TINY
from test_distributed import float64_episodes

F64 = [*DIST_TINY, "algorithm.name=protonet", "eval.val_every=3"]  # checkpoints at 2 and 4, validations at 3 and 5
HERE = str(Path(__file__).resolve())


def f64(out: Path, steps: int, *extra: str):
    """ProtoNets on 4 tasks a step with SGD (tests/test_distributed.py's), ``steps`` steps, validated every 3."""
    return load_config("protonet-quick", [*F64, f"optim.steps={steps}", f"run.out={out}", *extra])


def train_f64(out: Path, steps: int, logs: Path, world: int = 1) -> None:
    """Train (or resume) ``f64(out, steps)`` in float64: in this process, or on ``world`` ranks started from here."""
    if world == 1:
        with float64_episodes():
            train(f64(out, steps))
        return
    ranks = start_ranks([HERE, str(out), str(steps)], logs, world)
    codes = wait_all(ranks)
    assert codes == [0] * world, [(logs / f"rank{r}" / "stderr").read_text()[-2000:] for r in range(world)]


def rows(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def assert_close_to(run: Path, straight: Path) -> None:
    """``run`` ended as ``straight`` did, to 1e-6: the weights at the last step, the validation rows, and ``best.pt``
    (its step and weights)."""
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert a["step"] == b["step"] and a["best_step"] == b["best_step"]
    for file in ("checkpoint.pt", "best.pt"):
        want, got = load_checkpoint(straight / file)["algorithm"], load_checkpoint(run / file)["algorithm"]
        for key, value in want.items():
            if value.is_floating_point():
                assert value.dtype == torch.float64
                torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"{file} {key}")
    assert [r["step"] for r in rows(run, "train")] == [r["step"] for r in rows(straight, "train")]
    assert [r["step"] for r in rows(run, "val")] == [r["step"] for r in rows(straight, "val")]
    for x, y in zip(rows(run, "val"), rows(straight, "val")):
        assert x["acc"] == pytest.approx(y["acc"], abs=1e-6)
    assert load_checkpoint(run / "best.pt")["step"] == load_checkpoint(straight / "best.pt")["step"]


def assert_best_matches_the_rows(run: Path) -> None:
    """``best.pt`` is the model of the best validation row of ``metrics.jsonl`` (the first of equal ones), and the
    checkpoint names it; no kept copy is left beside it."""
    val = rows(run, "val")
    best_row = max(val, key=lambda r: r["acc"])  # max keeps the first of equal scores, as the trainer does
    best = load_checkpoint(run / "best.pt")
    assert (best["step"], best["val"]) == (best_row["step"], best_row["acc"]), (best["step"], val)
    assert load_checkpoint(run / "checkpoint.pt")["best_step"] == best_row["step"]
    assert not (run / KEPT_BEST).exists()


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name in (".lock", KEPT_BEST))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run the others must equal: ``f64``, 5 steps, one process."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train_f64(out, 5, out.parent)
    return out


# --- the process group ----------------------------------------------------------------------------------------------

GROUP_ENDS = """
import weakref
import torch
import torch.distributed as dist
from fastadapt.runtime import distributed
with distributed.process_group(torch.device("cpu"), 30.0):
    group = weakref.ref(dist.group.WORLD)
    import torch._dynamo  # building an algorithm imports it, inside the group
    distributed.any_rank(True)
print("freed" if group() is None else "alive", dist.is_initialized())
"""


@pytest.mark.slow
def test_the_process_group_is_freed_when_its_block_ends_even_if_torch_dynamo_is_imported_inside(tmp_path):
    """A group that outlives its block is destroyed at the interpreter's exit, where a gloo worker thread that drops
    the last collective's tensors needs the GIL and aborts the process (exit -6, "terminate called without an active
    exception"): the flake of test_a_signal_to_one_rank_in_a_validation_stops_both_ranks_within_5_s."""
    ranks = start_ranks(["-c", GROUP_ENDS], tmp_path)
    codes = wait_all(ranks)
    out = [(tmp_path / f"rank{r}" / "stdout").read_text() for r in (0, 1)]
    assert codes == [0, 0], [(tmp_path / f"rank{r}" / "stderr").read_text()[-2000:] for r in (0, 1)]
    assert out == ["freed False\n", "freed False\n"]


# --- the run lock ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_under_torchrun_rank_0_holds_the_lock_another_training_refuses_on_every_rank_and_it_is_released(
    tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["train", "protonet-quick", *TINY, "optim.steps=100000", "eval.val_every=0", "run.checkpoint_every=1000"]
    args += ["run.device=cpu", f"run.out={out}"]
    ranks = start_ranks([*FASTADAPT, *args], tmp_path / "first")
    try:
        wait_until(lambda: (out / "metrics.jsonl").exists(), ranks[0], tmp_path / "first" / "rank0", "training")
        holder = f"is being written by pid {ranks[0].pid} on {socket.gethostname()}"
        assert json.loads((out / ".lock").read_text())["pid"] == ranks[0].pid

        capsys.readouterr()
        assert cli_main([*args, "run.keep_freed_memory=false"]) == 2  # one process, here
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and holder in err, err

        t0 = time.monotonic()
        second = start_ranks([*FASTADAPT, *args], tmp_path / "second")
        assert wait_all(second) == [2, 2]
        took = time.monotonic() - t0
        for r in (0, 1):  # rank 1 had rank 0's error, not a lost peer after run.dist_timeout_s
            err = (tmp_path / "second" / f"rank{r}" / "stderr").read_text()
            assert err.startswith("fastadapt: error: ") and err.count("\n") == 1 and holder in err, err
        assert took < DEFAULT_TIMEOUT_S, f"the second group took {took:.1f} s to refuse"

        assert [p.poll() for p in ranks] == [None, None]  # the first group trains on
        ranks[0].send_signal(signal.SIGTERM)  # to one rank, during training steps: every rank exits 128 + it
        assert wait_all(ranks) == [143, 143]
    finally:
        wait_all(ranks, 0)
    assert not (out / ".lock").exists()
    again = ["train", "--restart", "protonet-quick", *TINY, "optim.steps=1", "eval.test_episodes=0"]
    assert cli_main([*again, "run.keep_freed_memory=false", f"run.out={out}"]) == 0


# --- a kill inside a checkpoint write -------------------------------------------------------------------------------


@pytest.mark.slow
def test_rank_0_killed_inside_a_checkpoint_write_then_the_same_command_ends_as_an_uninterrupted_run(straight, tmp_path):
    out = tmp_path / "run"
    ranks = start_ranks([HERE, str(out), "5"], tmp_path / "killed", **{FAULT_SLEEP_ENV: "1"})  # each write: 1 s

    def in_second_write() -> bool:  # step 4's: checkpoint.pt of step 2 is on disk, its successor not yet renamed
        return (out / "checkpoint.pt").exists() and any(out.glob(".checkpoint.pt.*.tmp"))

    try:
        wait_until(in_second_write, ranks[0], tmp_path / "killed" / "rank0", "the second checkpoint write")
        ranks[0].send_signal(signal.SIGKILL)
        codes = wait_all(ranks, 60)  # rank 1 sees its peer gone at its next collective
    finally:
        wait_all(ranks, 0)
    assert codes[0] == -signal.SIGKILL and codes[1] not in (0, -signal.SIGABRT), codes
    assert "rank 1 of 2 lost rank 0" in (tmp_path / "killed" / "rank1" / "stderr").read_text()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2  # the write of step 4 never replaced it
    assert ".lock" in leftovers(out) and list(out.glob(".checkpoint.pt.*.tmp"))

    train_f64(out, 5, tmp_path / "resumed", world=2)  # the same command
    assert "taking over the lock" in (tmp_path / "resumed" / "rank0" / "stderr").read_text()
    assert leftovers(out) == []
    assert load_checkpoint(out / "checkpoint.pt")["world_size"] == 2
    assert_close_to(out, straight)
    assert_best_matches_the_rows(out)


# --- another number of processes ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_a_resume_with_another_number_of_processes_ends_as_an_uninterrupted_run(first, then, straight, tmp_path):
    out = tmp_path / "run"
    train_f64(out, 3, tmp_path / "first", world=first)
    assert load_checkpoint(out / "checkpoint.pt")["world_size"] == first
    train_f64(out, 5, tmp_path / "then", world=then)
    assert load_checkpoint(out / "checkpoint.pt")["world_size"] == then
    assert [list(e["changes"]) for e in rows(out, "event")] == [["optim.steps"]]  # 3 -> 5, recorded
    assert_close_to(out, straight)
    assert_best_matches_the_rows(out)


# --- best.pt after a crash and a resume with another [optim] -------------------------------------------------------


@pytest.mark.parametrize("link", [True, False], ids=["hard-link", "copy"])
def test_a_crash_after_a_new_best_then_a_resume_with_another_lr_keeps_the_best_of_the_checkpoint(
    link, tmp_path, monkeypatch
):
    """Validations at steps 2 and 4, checkpoints at 3 and at the end. The first run's validation at 4 beats step 2's and
    writes ``best.pt``, then the run dies before checkpointing step 4; resumed from step 3 with another ``optim.lr``,
    step 4 scores worse than step 2 (the scores are set here), so ``best.pt`` must be step 2's model again."""
    cfg = [*TINY, "optim.steps=4", "eval.val_every=2", "run.checkpoint_every=3", "eval.test_episodes=0"]
    scores = iter([0.5, 0.9, 0.4])  # step 2; step 4 of the first run; step 4 resumed

    def scripted(*args, **kwargs):
        return EvalResult("acc", next(scores), 0.0, 0.95, 1, [0.0])

    monkeypatch.setattr(loop, "evaluate", scripted)
    if not link:  # a file system without hard links: the kept best.pt is a copy

        def no_links(*args):
            raise OSError("hard links are not supported here")

        monkeypatch.setattr(best_files.os, "link", no_links)
    at_2: dict[str, torch.Tensor] = {}

    class Died(Exception):
        """The first run dies after step 4's validation, before its checkpoint, as under kill -9."""

    def keep_2(trainer, step, result):
        if step == 2:
            at_2.update({k: v.clone() for k, v in trainer.algo.state_dict().items()})

    def die_at_4(trainer, step, metrics):
        if step == 4:
            raise Died

    hooks = Callback(on_step=die_at_4, on_validation=keep_2)
    with pytest.raises(Died):
        train(load_config("protonet-quick", [*cfg, f"run.out={tmp_path}"]), callbacks=[hooks])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4 and (tmp_path / KEPT_BEST).exists()  # step 2's, kept

    train(load_config("protonet-quick", [*cfg, "optim.lr=0.0005", f"run.out={tmp_path}"]))
    assert [(r["step"], r["acc"]) for r in rows(tmp_path, "val")] == [(2, 0.5), (4, 0.4)]
    assert_best_matches_the_rows(tmp_path)
    best = load_checkpoint(tmp_path / "best.pt")["algorithm"]
    assert best.keys() == at_2.keys() and all(torch.equal(best[k], at_2[k]) for k in at_2)


if __name__ == "__main__":  # a rank: python tests/test_distributed_faults.py OUT STEPS [OVERRIDE...]
    torch.set_num_threads(1)
    with float64_episodes():
        train(f64(Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]))
