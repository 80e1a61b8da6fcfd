"""Distributed meta-training: two gloo ranks on 127.0.0.1 against one process on the same tasks.

The two ranks are subprocesses of this file (``python tests/test_distributed.py ROOT PORT``) with
the environment ``torchrun`` would give them; they start when the first test that needs them runs
and work while this process computes the single-process references. They train every case (the
ProtoNets one in two legs, to resume from rank 0's checkpoint), evaluate, then start a second group
in which rank 1 kills itself mid-run.

Both sides train in float64 (the model is built in float64 and the episodes are cast) with SGD, so
that agreement to 1e-6 tests the math and not float32 rounding. In float32 the gradients agree to
about 1e-6 relative, except the conv biases in front of a batch-statistics BatchNorm: their exact
gradient is zero, the computed one is rounding noise, and Adam would normalise that noise into
steps of size lr whose sign depends on the summation order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm, task_sources
from fastadapt.core.errors import ConfigError
from fastadapt.data.sampler import EpisodeSampler
from fastadapt.eval import evaluate
from fastadapt.runs.checkpoint import load_checkpoint
from fastadapt.runtime import distributed
from fastadapt.training.loop import train

TINY = [
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=4",
    "data.test_queries=3",
    "model.hidden=8",
    "optim.steps=5",
    "optim.optimizer=sgd",
    "optim.lr=0.1",
    "optim.momentum=0.9",
    "eval.val_every=0",
    "eval.val_episodes=5",
    "eval.test_episodes=7",
    "eval.batch=2",
    "run.checkpoint_every=2",
    "run.log_every=1",
    "run.progress=false",
    "run.threads=1",
    "run.dist_timeout_s=30",
]
CASES = {
    # Conv4 with BatchNorm over the meta-batch (statistics shared across ranks); the ranks train it 3 steps, then
    # resume to 5
    "protonet": ["algorithm.name=protonet"],
    "protonet-uneven": [
        "algorithm.name=protonet",
        "data.meta_batch=5",
        "eval.val_every=5",
    ],  # 3 + 2 tasks; validation and best.pt
    "maml": ["algorithm.name=maml", "algorithm.inner_lr=0.4", "eval.val_every=5"],  # second order; BatchNorm per task
    "maml-chunked": [
        "algorithm.name=maml",
        "algorithm.inner_lr=0.4",
        "optim.task_chunk=1",
    ],  # a backward per task, weighted T_c/T * T_r/T
}
EVAL_EPISODES, EVAL_BATCH = (
    7,
    2,
)  # 4 batches, the last of 1 episode: rank 0 scores batches 0 and 2, rank 1 batches 1 and 3
WORKER_TIMEOUT_S = 150  # generous: the ranks take ~40 s on a loaded 2-core machine


def config(case: str, out: Path, *extra: str):
    return load_config("protonet-quick", [*TINY, *CASES[case], f"run.out={out}", *extra])


@contextmanager
def float64_episodes():
    """Models built in float64 and episodes cast to float64, for the duration of the block."""
    original = EpisodeSampler.sample_tasks
    dtype = torch.get_default_dtype()

    def sample_tasks(self, step, start, num_tasks):
        return original(self, step, start, num_tasks).to(dtype=torch.float64)

    torch.set_default_dtype(torch.float64)
    EpisodeSampler.sample_tasks = sample_tasks
    try:
        yield
    finally:
        EpisodeSampler.sample_tasks = original
        torch.set_default_dtype(dtype)


def fixed_model_eval(distributed_eval: bool):
    """An untrained ProtoNet (seed 0) on the fixed test episodes, in batches of EVAL_BATCH."""
    cfg = config("protonet", Path("unused"))
    torch.manual_seed(0)
    algo = build_algorithm(cfg)
    sampler = task_sources(cfg).tests["5w1s"]
    return evaluate(algo, sampler.fixed(EVAL_EPISODES, EVAL_BATCH), distributed=distributed_eval)


def batchnorm_case() -> tuple[torch.nn.BatchNorm2d, torch.Tensor, torch.Tensor]:
    """A BatchNorm with running statistics and affine parameters, a batch of 7 and the weights of a linear loss."""
    gen = torch.Generator().manual_seed(3)
    bn = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=gen, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    x = torch.randn(7, 3, 4, 5, generator=gen, dtype=torch.float64) * 2 + 1
    return bn, x, torch.randn(7, 3, 4, 5, generator=gen, dtype=torch.float64)


def batchnorm_run(bn: torch.nn.BatchNorm2d, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * w).sum().backward()
    return {
        "y": y.detach(),
        "dx": x.grad,
        "dweight": bn.weight.grad,
        "dbias": bn.bias.grad,
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
    }


# --- the ranks ------------------------------------------------------------------------------


def worker(root: Path, kill_port: int) -> None:
    """Both phases of one rank (see the module doc); each writes what it saw under ``root``."""
    with float64_episodes(), distributed.process_group(torch.device("cpu"), 30.0):
        for case in CASES:
            if case == "protonet":  # 3 steps, then resume to 5 from rank 0's checkpoint
                train(config(case, root / case, "optim.steps=3"), resume=False)
                steps: list[int] = []
                train(config(case, root / case), step_hook=steps.append)
                (root / f"resumed_steps_rank{distributed.rank()}.json").write_text(json.dumps(steps))
            else:
                train(config(case, root / case), resume=False)
        res = fixed_model_eval(distributed_eval=True)
        (root / f"eval_rank{distributed.rank()}.json").write_text(json.dumps(res.to_dict()))
        bn, x, w = batchnorm_case()
        start, count = distributed.shard(len(x))  # 4 + 3 examples
        with distributed.global_batchnorm():
            out = batchnorm_run(bn, x[start : start + count], w[start : start + count])
        torch.save(out, root / f"batchnorm_rank{distributed.rank()}.pt")
    os.environ["MASTER_PORT"] = str(kill_port)
    overrides = [*TINY, *CASES["protonet"], "optim.steps=1000", f"run.out={root / 'killed'}"]
    if distributed.rank() == 1:

        def die(step: int) -> None:
            if step == 3:
                (root / "died").write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)

        from fastadapt.training.commands import plan_check

        # the same run as rank 0's `fastadapt train` (its plan check takes part in the ranks' collectives), dying
        train(load_config("protonet-quick", overrides), step_hook=die, plan=plan_check())
        return
    from fastadapt.cli import main

    print("--- kill phase", file=sys.stderr, flush=True)
    rc = main(["train", "protonet-quick", *overrides])
    (root / "rank0").write_text(json.dumps({"rc": rc, "time": time.time()}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path) -> list[subprocess.Popen]:
    """Two ranks with torchrun's environment; output in ``root/rank{r}.out|err``."""
    root.mkdir(parents=True, exist_ok=True)
    port, kill_port = free_port(), free_port()
    procs = []
    for r in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
        env.update(
            WORLD_SIZE="2",
            RANK=str(r),
            LOCAL_RANK=str(r),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        with open(root / f"rank{r}.out", "w") as out, open(root / f"rank{r}.err", "w") as err:
            procs.append(
                subprocess.Popen([sys.executable, __file__, str(root), str(kill_port)], env=env, stdout=out, stderr=err)
            )
    return procs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Starts the two ranks; calling the fixture's value waits for them and returns their folder."""
    root = tmp_path_factory.mktemp("dist")
    procs = launch(root)
    codes: list[int] = []

    def finished() -> Path:
        if not codes:
            deadline = time.monotonic() + WORKER_TIMEOUT_S
            for p in procs:
                try:
                    codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    err = (root / "rank0.err").read_text()[-2000:]
                    pytest.fail(f"ranks did not finish in {WORKER_TIMEOUT_S} s; rank 0 stderr:\n{err}")
        errs = [(root / f"rank{r}.err").read_text()[-3000:] for r in (0, 1)]
        assert codes == [0, -signal.SIGKILL], f"return codes {codes}\n{errs[0]}\n{errs[1]}"
        return root

    yield finished
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def one_process(ranks, tmp_path_factory):
    """The single-process runs of every case, trained while the ranks work."""
    root = tmp_path_factory.mktemp("one")
    with float64_episodes():
        for case in CASES:
            train(config(case, root / case), resume=False)
    return root


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shard_gives_contiguous_blocks_that_cover_the_batch_once(world):
    for n in range(world, 13):
        blocks = [distributed.shard(n, r, world) for r in range(world)]
        assert blocks[0][0] == 0 and sum(c for _, c in blocks) == n
        assert all(s + c == blocks[i + 1][0] for i, (s, c) in enumerate(blocks[:-1]))
        assert max(c for _, c in blocks) - min(c for _, c in blocks) <= 1
        assert sum(distributed.task_weight(c, n) for _, c in blocks) == pytest.approx(1.0)


def test_without_a_process_group_the_helpers_are_the_identity():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.shard(5) == (0, 5)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.all_reduce_gradients([p], 1, 4)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert distributed.reduce_metrics({"acc": 0.5}, 0.25) == {"acc": 0.5}
    assert (
        distributed.gather_scores([1, 2]) == [1, 2] and distributed.any_rank(True) and not distributed.any_rank(False)
    )
    with distributed.process_group(torch.device("cpu")):  # WORLD_SIZE unset: nothing to join
        assert not distributed.is_distributed()


def test_dist_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="run.dist_timeout_s=0.0 is invalid"):
        load_config("protonet-quick", ["run.dist_timeout_s=0"])


def test_which_algorithms_share_batchnorm_statistics_across_ranks():
    from fastadapt.core.contract import encodes_meta_batch
    from fastadapt.nn import Conv4

    assert encodes_meta_batch(ProtoNet(Conv4(out_features=None)))
    assert encodes_meta_batch(MatchingNet(Conv4(out_features=None)))
    assert not encodes_meta_batch(MatchingNet(Conv4(out_features=None), encode="per_task"))
    assert not encodes_meta_batch(MAML(Conv4()))


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_after_5_steps(ranks, one_process, case):
    tmp_path, root = one_process, ranks()
    one, two = load_checkpoint(tmp_path / case / "checkpoint.pt"), load_checkpoint(root / case / "checkpoint.pt")
    assert one["step"] == two["step"] == 5 and two["world_size"] == 2
    for key, value in one["algorithm"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float64
            assert torch.allclose(two["algorithm"][key], value, rtol=0, atol=1e-6), (
                key,
                (two["algorithm"][key] - value).abs().max(),
            )
    rows = [
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / case, root / case)
    ]
    events = [r for r in rows[1] if r["split"] == "event"]  # the ranks resumed from 3 to 5 steps: recorded, not silent
    assert all(list(e["changes"]) == ["optim.steps"] for e in events) and (case != "protonet" or events)
    rows = [[r for r in part if r["split"] != "event"] for part in rows]
    assert [r["step"] for r in rows[1] if r["split"] == "train"] == [1, 2, 3, 4, 5]  # rank 0 alone writes
    for a, b in zip(rows[0], rows[1], strict=True):
        assert a["split"] == b["split"] and a["step"] == b["step"]
        for metric in ("loss", "acc"):
            if metric in a:
                assert b[metric] == pytest.approx(a[metric], abs=1e-6), (metric, a, b)
    ev1, ev2 = (json.loads((d / "eval_5w1s.json").read_text()) for d in (tmp_path / case, root / case))
    assert ev1["scores"] == ev2["scores"] and ev1["episodes"] == EVAL_EPISODES


def test_both_ranks_resume_from_rank_0s_checkpoint(ranks):
    root = ranks()  # the "protonet" case above, resumed at step 3, equals one process's straight run
    for r in (0, 1):
        assert json.loads((root / f"resumed_steps_rank{r}.json").read_text()) == [4, 5]


def test_evaluation_split_across_two_ranks_gathers_the_scores_of_one_process_in_order(ranks):
    with float64_episodes():
        one = fixed_model_eval(distributed_eval=False)
    root = ranks()
    for r in (0, 1):
        got = json.loads((root / f"eval_rank{r}.json").read_text())
        assert got["scores"] == one.scores and got["episodes"] == EVAL_EPISODES
        assert got["mean"] == one.mean and got["ci"] == one.ci


def test_global_batchnorm_on_two_ranks_equals_batchnorm_of_the_whole_batch(ranks):
    bn, x, w = batchnorm_case()
    one = batchnorm_run(bn, x, w)
    root = ranks()
    parts = [torch.load(root / f"batchnorm_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert parts[0]["y"].shape[0] == 4 and parts[1]["y"].shape[0] == 3
    for key in ("y", "dx"):
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), one[key], rtol=0, atol=1e-12)
    for key in ("dweight", "dbias"):  # each rank holds its part; the training loop sums them
        torch.testing.assert_close(parts[0][key] + parts[1][key], one[key], rtol=0, atol=1e-12)
    for key in ("running_mean", "running_var"):
        for p in parts:
            torch.testing.assert_close(p[key], one[key], rtol=0, atol=1e-12)


def test_a_killed_rank_makes_the_other_exit_promptly_with_one_line_naming_it(ranks):
    root = ranks()  # rank 1 ended by SIGKILL, rank 0 with status 0 after writing what the CLI returned
    died = float((root / "died").read_text())
    rank0 = json.loads((root / "rank0").read_text())
    assert rank0["rc"] == 2 and rank0["time"] - died < 15, (rank0, died)
    err = (root / "rank0.err").read_text().split("--- kill phase\n", 1)[1]
    assert (
        err.startswith("fastadapt: error: rank 0 of 2 lost rank 1 (")
        and err.count("\n") == 1
        and "Traceback" not in err
    ), err
    assert "run.dist_timeout_s=30" in err and "rerun the same command to resume" in err
    assert (
        load_checkpoint(root / "killed" / "checkpoint.pt")["step"] == 2
    )  # the last checkpoint before the death, readable


if __name__ == "__main__":  # a rank: python tests/test_distributed.py ROOT PORT
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]), int(sys.argv[2]))
