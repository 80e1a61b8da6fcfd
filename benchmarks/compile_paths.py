"""``run.compile`` against eager: cold start and CPU time of one MAML meta-gradient on the loop path.

    python benchmarks/compile_paths.py [--tasks 32] [--hidden 64] [--iters 3] [--first-order] [--cache DIR]

Workload (a) on random images (Conv4 on 28x28, 5-way 1-shot, 5 queries per class, 1 inner step, second order
unless ``--first-order``), one thread. Prints the first compiled call's wall and CPU time (the cold start; the
C++ compiler runs in child processes, so count wall time), then the median CPU time per meta-gradient of eager
and compiled, interleaved, and the largest gradient difference (float32). ``--cache`` (default: a fresh
temporary folder, so the start is cold) is inductor's cache; run twice with the same folder to see a warm start.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_first import batch  # noqa: E402
from timing import interleaved  # noqa: E402

from fastadapt.algorithms import compiled  # noqa: E402
from fastadapt.algorithms.maml import MAML  # noqa: E402
from fastadapt.nn import Conv4  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--cache", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = batch(args.tasks)
    torch.manual_seed(0)
    model = Conv4(1, 5, hidden=args.hidden, image_size=28)
    algo = MAML(model, inner_lr=0.4, inner_steps=1, first_order=args.first_order, execution="loop")
    with tempfile.TemporaryDirectory() as tmp:
        session = compiled.CompileSession(cache=Path(args.cache or tmp))

        def step(compile_: bool) -> list[torch.Tensor]:
            model.zero_grad(set_to_none=True)
            if compile_:
                with compiled.compiling(session):
                    algo.meta_loss(data).loss.backward()
            else:
                algo.meta_loss(data).loss.backward()
            return [p.grad.clone() for p in model.parameters()]

        step(False)
        t0, c0 = time.perf_counter(), time.process_time()
        step(True)
        print(
            f"cold start (first compiled meta-gradient): {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU "
            f"of this process; cache {session.cache}"
        )
        grads = {}

        def run(mode: bool):
            return lambda: grads.__setitem__(mode, step(mode))

        times = interleaved({"eager": run(False), "compiled": run(True)}, args.iters, warmup=0)
    for mode in ("eager", "compiled"):
        n = len(times.cpu[mode])
        print(f"{mode:9s} {1000 * times.median_cpu(mode):8.0f} ms CPU per meta-gradient (median of {n})")
    diff = max(float((a - b).abs().max()) for a, b in zip(grads[False], grads[True]))
    speed = times.median_cpu("eager") / times.median_cpu("compiled")
    print(f"speed-up {speed:.2f}x; max |grad difference| {diff:.2e}")


if __name__ == "__main__":
    main()
