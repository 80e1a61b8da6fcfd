"""Issue 17's execution paths, measured: peak memory of chunked accumulation, Reptile's training step,
and evaluation episodes/s per execution path and precision.

    python benchmarks/perf_paths.py memory [--algo maml|fomaml] [--chunks 0,1,4]     # one fresh process per setting
    python benchmarks/perf_paths.py reptile [--tasks 32] [--iters 3]                  # workload (c): one meta-step
    python benchmarks/perf_paths.py eval [--episodes 20] [--batch 10] [--which maml,reptile,matching]
    python benchmarks/perf_paths.py reptile-grad [--tasks 8] [--iters 8]             # plain_grad vs torch.func.grad

``memory``: peak RSS (``ru_maxrss``) of a child process that builds workload (a) (Conv4-64, 28x28,
5-way 1-shot, 5 queries, T=32, 1 inner step; second order for ``maml``) and runs one meta-gradient
with ``optim.task_chunk`` = each value (0: the whole batch), and its CPU time.
``reptile-grad``: Reptile's training step (workload (c)'s shape, real Omniglot tasks) with its inner gradients
from :func:`fastadapt.algorithms.inner.plain_grad` (autograd on leaf copies, the library's path) against
``torch.func.grad`` swapped in, interleaved in one process, median CPU time of each.
``eval``: episodes/s of ``evaluate`` on fixed Omniglot test episodes for the three slow test settings
(MAML 5-way 1-shot with 10 inner steps, Reptile 5-way 5-shot with 50 persistent-Adam steps, Matching
Networks with FCE 20-way 5-shot; 15 queries per class), per execution path (``loop``: a task at a
time; ``vmap``: all episodes of an evaluation batch in one batched call) and precision (fp32, bf16),
with the mean accuracy of each, which must be equal across execution paths. CPU time of this process,
one thread; the paths are interleaved.
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys

import torch
from timing import interleaved, timed

from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.data import EpisodeSampler, load_omniglot
from fastadapt.eval import evaluate
from fastadapt.nn import Conv4
from fastadapt.training.accumulate import meta_gradient


def memory_child(algo_name: str, chunk: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = EpisodeSampler(load_omniglot("vinyals", "train"), ways=5, shots=1, queries=5, seed=0).sample(32)
    algo = (MAML if algo_name == "maml" else FOMAML)(Conv4(1, 5, 64, 28), inner_lr=0.4, inner_steps=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = timed(lambda: meta_gradient(algo, batch, chunk))[1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{algo_name} task_chunk={chunk}: peak RSS {peak:.0f} MB (before the step {before:.0f} MB), step CPU {cpu:.2f} s",
        flush=True,
    )


def reptile_step(tasks: int, iters: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = EpisodeSampler(load_omniglot("vinyals", "train"), ways=5, shots=1, queries=5, seed=0).sample(tasks)
    algo = Reptile(Conv4(1, 5, 64, 28), inner_lr=1e-3, inner_steps=5)
    times = interleaved({"reptile": lambda: (algo.zero_grad(set_to_none=True), meta_gradient(algo, batch))}, iters)
    times = times.cpu["reptile"]
    print(
        f"reptile (c) T={tasks}: {min(times):.2f} s CPU per meta-gradient (best of {iters}), {tasks / min(times):.1f} tasks/s"
    )


def reptile_grad(tasks: int, iters: int) -> None:

    from fastadapt.algorithms import inner

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = EpisodeSampler(load_omniglot("vinyals", "train"), ways=5, shots=1, queries=5, seed=0).sample(tasks)
    algo = Reptile(Conv4(1, 5, 64, 28), inner_lr=1e-3, inner_steps=5)
    library = inner.plain_grad
    paths = {
        "plain_grad": library,
        "torch.func.grad": lambda loss_of, has_aux=False: torch.func.grad(loss_of, has_aux=has_aux),
    }

    def with_grad(fn):
        def run():
            inner.plain_grad = fn
            algo.zero_grad(set_to_none=True)
            meta_gradient(algo, batch)

        return run

    try:
        times = interleaved({name: with_grad(fn) for name, fn in paths.items()}, iters)
    finally:
        inner.plain_grad = library
    med = {name: times.median_cpu(name) for name in paths}
    print(
        f"reptile T={tasks}: plain_grad {1000 * med['plain_grad']:.0f} ms, torch.func.grad {1000 * med['torch.func.grad']:.0f} ms CPU "
        f"per meta-gradient (median of {iters}): {med['torch.func.grad'] / med['plain_grad']:.2f}x"
    )


def eval_speed(which: list[str], episodes: int, batch: int) -> None:
    torch.set_num_threads(1)
    test = load_omniglot("vinyals", "test")
    settings = {
        "maml": (
            5,
            1,
            lambda ex: MAML(Conv4(1, 5, 64, 28), inner_lr=0.4, inner_steps=1, inner_steps_eval=10, execution=ex),
        ),
        "reptile": (
            5,
            5,
            lambda ex: Reptile(Conv4(1, 5, 64, 28), inner_lr=1e-3, inner_steps=5, inner_steps_eval=50, execution=ex),
        ),
        "matching": (20, 5, lambda ex: MatchingNet(Conv4(1, None, 64, 28), fce=True)),
    }
    for name in which:
        ways, shots, make = settings[name]
        sampler = EpisodeSampler(test, ways=ways, shots=shots, queries=15, seed=1234)
        torch.manual_seed(0)
        paths = {"loop": make("loop")}
        if name != "matching":
            paths["vmap"] = make("vmap")
            paths["vmap"].load_state_dict(paths["loop"].state_dict())
        else:
            paths = {"loop": paths["loop"]}
        runs = {
            (ex, p): (algo if p == "fp32" else copy.deepcopy(algo))
            for ex, algo in paths.items()
            for p in ("fp32", "bf16")
        }
        for (ex, precision), algo in runs.items():
            evaluate(algo, sampler.fixed(2, 2), precision=precision)  # warm-up (first calls allocate and pick kernels)
            _, cpu, res = timed(
                lambda a=algo, s=sampler, p=precision: evaluate(a, s.fixed(episodes, batch), precision=p)
            )
            print(
                f"{name} {ways}-way {shots}-shot, execution={ex}, precision={precision}: {episodes / cpu:.2f} episodes/s "
                f"(acc {100 * res.mean:.2f} %)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("memory", "reptile", "reptile-grad", "eval", "_memory_child"))
    parser.add_argument("--algo", default="maml")
    parser.add_argument("--chunks", default="0,1,4")
    parser.add_argument("--chunk", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--which", default="maml,reptile,matching")
    args = parser.parse_args()
    if args.what == "_memory_child":
        memory_child(args.algo, args.chunk)
    elif args.what == "memory":
        for chunk in (int(c) for c in args.chunks.split(",")):
            subprocess.run(
                [sys.executable, __file__, "_memory_child", "--algo", args.algo, "--chunk", str(chunk)], check=True
            )
    elif args.what == "reptile":
        reptile_step(args.tasks, args.iters)
    elif args.what == "reptile-grad":
        reptile_grad(args.tasks, args.iters)
    else:
        eval_speed(args.which.split(","), args.episodes, args.batch)


if __name__ == "__main__":
    main()
