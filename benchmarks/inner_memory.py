"""Issue 32's long inner loops: peak memory and time of MAML's meta-gradient with 5 and 50 inner steps, with the
steps' graphs stored (the default) and recomputed in the backward pass (``algorithm.checkpoint_inner``).

    python benchmarks/inner_memory.py [--steps 5,50] [--tasks 4] [--hidden 64] [--queries 15] [--first-order]

Each setting runs in a fresh child process (``--one STEPS CHECKPOINT``): Conv4 (``--hidden`` filters, 28x28, float32)
in MAML (second order unless ``--first-order``, inner rate 0.1), ``--tasks`` random 5-way 1-shot tasks with
``--queries`` queries a class, one meta-gradient with ``task_chunk`` tasks back-propagated at a time (default 1, what
``optim.task_chunk = "auto"`` takes for the loop path), then a second one timed. Printed per setting: the child's
resident memory before the first meta-gradient (model and tasks built), its peak (``VmHWM``, :func:`rss_peak`), the peak's growth
over the start (what the meta-gradient holds), and the second meta-gradient's wall and CPU time. The ratios at the
end are the issue's targets: 50 recomputed steps against 5 stored ones (memory) and 50 stored ones (time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_now() -> int:
    """This process's resident memory now, in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """This process's peak resident memory, in bytes: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``: Linux
    carries the parent's peak into a child across ``fork``/``vfork`` and ``exec``, so a child of a large process
    (pytest) would report its parent's."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one(args: argparse.Namespace, steps: int, checkpoint: bool) -> dict[str, float]:
    """One setting, in this process: the measurements as a dict."""
    import torch

    from fastadapt.algorithms.maml import MAML
    from fastadapt.core.episodes import TaskBatch
    from fastadapt.nn import Conv4
    from fastadapt.training.accumulate import meta_gradient

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ways, t = 5, args.tasks
    labels = torch.arange(ways)
    batch = TaskBatch(
        torch.randn(t, ways, 1, 28, 28, generator=g),
        labels.repeat(t, 1),
        torch.randn(t, ways * args.queries, 1, 28, 28, generator=g),
        labels.repeat_interleave(args.queries).repeat(t, 1),
        labels.repeat(t, 1),
    )
    algo = MAML(
        Conv4(1, ways, args.hidden, 28),
        inner_lr=0.1,
        inner_steps=steps,
        first_order=args.first_order,
        checkpoint_inner=checkpoint,
    )
    start = rss_now()
    meta_gradient(algo, batch, args.chunk)
    peak = rss_peak()
    algo.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    meta_gradient(algo, batch, args.chunk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "start_mb": start / 1e6,
        "peak_mb": peak / 1e6,
        "growth_mb": (peak - start) / 1e6,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def child(args: argparse.Namespace, steps: int, checkpoint: bool) -> dict[str, float]:
    """:func:`one` in a fresh process (its own peak)."""
    cmd = [sys.executable, __file__, "--one", str(steps), str(int(checkpoint))]
    cmd += ["--tasks", str(args.tasks), "--hidden", str(args.hidden), "--queries", str(args.queries)]
    cmd += ["--chunk", str(args.chunk)] + (["--first-order"] if args.first_order else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="5,50")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--chunk", type=int, default=1, help="tasks back-propagated at once (0: all)")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--one", nargs=2, type=int, metavar=("STEPS", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args, args.one[0], bool(args.one[1]))))
        return
    from fastadapt.runtime.hardware import cpu_info

    info = cpu_info()
    print(f"cpu: {info['model']} ({', '.join(info['flags'])}); load average {os.getloadavg()}")
    print(
        f"MAML {'first' if args.first_order else 'second'} order, Conv4-{args.hidden}, {args.tasks} tasks 5-way 1-shot "
        f"{args.queries} queries, task_chunk {args.chunk}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    found = {}
    print(f"{'steps':>5} {'inner':>10} {'start MB':>9} {'peak MB':>8} {'growth MB':>10} {'wall s':>7} {'cpu s':>7}")
    for steps in (int(s) for s in args.steps.split(",")):
        for checkpoint in (False, True):
            r = found[steps, checkpoint] = child(args, steps, checkpoint)
            how = "recomputed" if checkpoint else "stored"
            print(
                f"{steps:>5} {how:>10} {r['start_mb']:>9.0f} {r['peak_mb']:>8.0f} {r['growth_mb']:>10.0f} "
                f"{r['wall_s']:>7.2f} {r['cpu_s']:>7.2f}"
            )
    lo, hi = (int(s) for s in args.steps.split(",")[:2])
    small, long_ck, long_st = found[lo, False], found[hi, True], found[hi, False]
    print(
        f"{hi} recomputed / {lo} stored: peak {long_ck['peak_mb'] / small['peak_mb']:.2f}x "
        f"(growth {long_ck['growth_mb'] / small['growth_mb']:.2f}x; target <= 2x)"
    )
    print(
        f"{hi} recomputed / {hi} stored: wall {long_ck['wall_s'] / long_st['wall_s']:.2f}x, "
        f"cpu {long_ck['cpu_s'] / long_st['cpu_s']:.2f}x (target <= 1.6x); peak {long_ck['peak_mb'] / long_st['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
