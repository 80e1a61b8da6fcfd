"""``execution="shared_first"`` against ``"loop"``: CPU time of one MAML meta-gradient (forward + backward).

    python benchmarks/shared_first.py [--tasks 32] [--hidden 64] [--iters 3] [--first-order] [--steps 1]

Workload (a) on random images: Conv4 (``--hidden`` filters) on 28x28, 5-way 1-shot, 5 queries per class,
``--tasks`` tasks, ``--steps`` inner steps, second order unless ``--first-order``; one thread; the two
paths interleaved; median CPU time of this process per meta-gradient, and the largest gradient difference.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved

from fastadapt import TaskBatch
from fastadapt.algorithms.maml import MAML
from fastadapt.nn import Conv4


def batch(tasks: int, ways: int = 5, shots: int = 1, queries: int = 5) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, 28, 28, generator=g),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        torch.randn(tasks, ways * queries, 1, 28, 28, generator=g),
        labels.repeat_interleave(queries).repeat(tasks, 1),
        torch.arange(ways).repeat(tasks, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--first-order", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = batch(args.tasks)
    torch.manual_seed(0)
    model = Conv4(1, 5, hidden=args.hidden, image_size=28)
    algos = {
        ex: MAML(model, inner_lr=0.4, inner_steps=args.steps, first_order=args.first_order, execution=ex)
        for ex in ("loop", "shared_first")
    }
    last: dict[str, list[torch.Tensor]] = {}

    def step(ex: str):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            algos[ex].meta_loss(data).loss.backward()

        return run

    times = interleaved({ex: step(ex) for ex in algos}, args.iters)
    for ex in algos:  # the meta-gradients compared (not timed)
        step(ex)()
        last[ex] = [p.grad.clone() for p in model.parameters()]
    diff = max(float((a - b).abs().max()) for a, b in zip(last["loop"], last["shared_first"]))
    for ex in algos:
        print(f"{ex:13s} {1000 * times.median_cpu(ex):8.0f} ms CPU per meta-gradient (median of {len(times.cpu[ex])})")
    speed = times.median_cpu("loop") / times.median_cpu("shared_first")
    print(f"speed-up {speed:.2f}x; max |grad difference| {diff:.2e} (float32)")


if __name__ == "__main__":
    main()
