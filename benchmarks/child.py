"""One measurement in a fresh process: ``benchmarks/compare.py`` runs this and reads the JSON line it prints.

    python benchmarks/child.py --workload a --contender learn2learn --iters 3 [--grad-out g.pt]
    python benchmarks/child.py --matmul 2048          # the fp32 matmul ceiling
    python benchmarks/child.py --workload a --contender plain --flops   # model FLOPs of one meta-update

The model (``Conv4``, seeded) and the synthetic batch are rebuilt from fixed seeds, so every contender
starts from the same weights and sees the same tensors (the JSON carries checksums to prove it).
The first meta-gradient is the warm-up: it is saved with ``--grad-out`` for the agreement check and
is not timed. Each timed iteration is the contender's meta-gradient plus one Adam (1e-3) step; for
the end-to-end workloads it also draws the batch with ``fastadapt.EpisodeSampler``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _contender_library(argv: list[str]) -> str:
    """The library named by ``--contender`` (read before any import of fastadapt)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--contender="):
            return arg.split("=", 1)[1].split("+")[0]
        if arg == "--contender" and i + 1 < len(argv):
            return argv[i + 1].split("+")[0]
    return "fastadapt"


import torch  # noqa: E402
from contenders import WORKLOADS, flat_grad, keep_freed_memory, make_model, parse_contender, supports, synthetic_batch  # noqa: E402
from timing import interleaved, timed  # noqa: E402

# fastadapt as users run it: the `fastadapt` command keeps freed memory for reuse (run.keep_freed_memory,
# fastadapt/runtime/allocator.py); importing the library does not. Other contenders run under the allocator
# settings they get by default; their "+mallopt" variants set it explicitly.
if _contender_library(sys.argv[1:]) == "fastadapt":
    from fastadapt.runtime.allocator import keep_freed_memory as _cli_setting

    _cli_setting()


def rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def checksum(*tensors: torch.Tensor) -> float:
    return float(sum(t.detach().double().sum() * (i + 1) for i, t in enumerate(tensors)))


def matmul_rate(n: int, repeats: int) -> dict:
    """Best and median GFLOP/s (wall and CPU time) of ``torch.mm`` on two ``n x n`` float32 matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = interleaved({"mm": lambda: torch.mm(a, b)}, repeats, warmup=0)
    walls, cpus = times.wall["mm"], times.cpu["mm"]
    flops = 2 * n**3
    walls.sort()
    cpus.sort()
    return {
        "matmul_n": n,
        "gflops_wall_best": flops / walls[0] / 1e9,
        "gflops_wall_median": flops / walls[len(walls) // 2] / 1e9,
        "gflops_cpu_best": flops / max(cpus[0], 1e-9) / 1e9,
        "gflops_cpu_median": flops / max(cpus[len(cpus) // 2], 1e-9) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="a")
    parser.add_argument("--contender", default="fastadapt")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations after the warm-up")
    parser.add_argument("--meta-batch", type=int, default=None, help="override the workload's meta-batch (sweeps)")
    parser.add_argument("--inner-steps", type=int, default=None, help="override the workload's inner steps (sweeps)")
    parser.add_argument("--algo", default=None, help="override the workload's algorithm (sweeps: maml / fomaml)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grad-out", default=None, help="save the warm-up meta-gradient (flattened) here")
    parser.add_argument(
        "--float64", action="store_true", help="run in float64 (the Reptile gradient check; see compare.py)"
    )
    parser.add_argument("--flops", action="store_true", help="count the FLOPs of one meta-gradient instead of timing")
    parser.add_argument(
        "--matmul", type=int, default=0, help="measure the fp32 matmul rate with n x n matrices instead"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.matmul:
        print(json.dumps({**matmul_rate(args.matmul, 7), "threads": args.threads}))
        return

    contender = parse_contender(args.contender)
    mallopt_ok = keep_freed_memory() if contender.mallopt else None
    w = WORKLOADS[args.workload]
    w = replace(
        w,
        meta_batch=args.meta_batch or w.meta_batch,
        inner_steps=args.inner_steps or w.inner_steps,
        algo=args.algo or w.algo,
    )

    reason = supports(contender.library, w)
    if reason:
        print(json.dumps({"workload": w.name, "contender": contender.name, "skipped": reason}))
        return

    torch.manual_seed(0)
    model = make_model(w, contender.library)
    if w.real_data:
        from fastadapt.data import EpisodeSampler, load_omniglot

        sampler = EpisodeSampler(load_omniglot("vinyals", "train"), w.ways, w.shots, w.queries, seed=0)
        first = sampler.sample(w.meta_batch)
        next_batch = lambda: sampler.sample(w.meta_batch)  # noqa: E731
    else:
        first = synthetic_batch(w)
        next_batch = lambda: first  # noqa: E731
    if args.float64:
        model.double()
        first = first.to(dtype=torch.float64)
    sums = {
        "init": checksum(*model.parameters()),
        "batch": checksum(first.support_x, first.query_x, first.support_y, first.query_y),
    }
    step = contender.build(w, model)

    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(first)
        print(json.dumps({"workload": w.name, "contender": contender.name, "flops": counter.get_total_flops()}))
        return

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rss0 = rss_mb()
    warm = timed(lambda: step(first))[:2]  # warm-up, and the meta-gradient for the agreement check
    if args.grad_out:
        torch.save(flat_grad(model), args.grad_out)
    opt.step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = interleaved({"step": lambda: (step(next_batch()), opt.step())}, args.iters, warmup=0)
    walls, cpus = times.wall["step"], times.cpu["step"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "workload": w.name,
                "contender": contender.name,
                "meta_batch": w.meta_batch,
                "inner_steps": w.inner_steps,
                "algo": w.algo,
                "threads": args.threads,
                "wall": walls,
                "cpu": cpus,
                "warmup_wall": warm[0],
                "warmup_cpu": warm[1],
                "maxrss_mb": usage.ru_maxrss / 1024,
                "rss_before_mb": rss0,
                "minflt_per_iter": (usage.ru_minflt - faults0) / max(args.iters, 1),
                "mallopt": mallopt_ok,
                "checksums": sums,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
