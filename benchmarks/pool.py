"""Conv4's ReLU + 2x2 max-pool on the CPU: torch's NCHW kernel against fastadapt's block (fastadapt.nn.pool).

    python benchmarks/pool.py                                   # the shapes of the benchmarks' workloads, one thread
    python benchmarks/pool.py --out benchmarks/results/pool.json --markdown benchmarks/results/pool.md
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/pool.py   # torch's AVX2 kernels

For each shape, ``[N, C, H, W]`` float32 NCHW (a BatchNorm output in Conv4), three variants, interleaved call by
call after a warm-up, each the median CPU time of ``--calls`` calls of forward and backward (``autograd.grad`` with a
fixed output gradient): ``torch`` (``F.max_pool2d(F.relu(x), 2)``, the papers' block order with torch's kernel),
``pool`` (``F.relu(F.max_pool2d(x, 2))`` with torch's kernel: the order alone) and ``fastadapt``
(``F.relu(fastadapt.nn.pool.max_pool2d(x, 2))``, what Conv4 runs). Every variant's output and input gradient are
checked equal to ``torch``'s before timing. glibc keeps freed memory (as the ``fastadapt`` command sets it), so that
the timings are the kernels', not the page faults of fresh allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastadapt.nn.pool import max_pool2d
from fastadapt.runtime.allocator import keep_freed_memory
from fastadapt.runtime.hardware import cpu_info

SHAPES = {  # where the shape occurs
    "latency, 6 images, block 1": (6, 64, 28, 28),
    "latency, 6 images, block 2": (6, 64, 14, 14),
    "(a)/(b) one task, 80 images, block 1": (80, 64, 28, 28),
    "(d) 400 images, block 1": (400, 64, 28, 28),
    "(d) 400 images, block 2": (400, 64, 14, 14),
    "84x84 RGB, 80 images, block 1": (80, 32, 84, 84),
}
VARIANTS = {
    "torch": lambda x: F.max_pool2d(F.relu(x), 2),
    "pool": lambda x: F.relu(F.max_pool2d(x, 2)),
    "fastadapt": lambda x: F.relu(max_pool2d(x, 2)),
}


def step(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    out = fn(x)
    return out, torch.autograd.grad(out, x, g)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    keep_freed_memory()
    rows = []
    for where, shape in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).requires_grad_()
        g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
        ref = step(VARIANTS["torch"], x, g)
        for name, fn in VARIANTS.items():
            out = step(fn, x, g)
            if not (torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])):
                print(f"{name} differs from torch's block at {shape}", file=sys.stderr)
                return 1
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(3):
            for fn in VARIANTS.values():
                step(fn, x, g)
        for _ in range(args.calls):
            for name, fn in VARIANTS.items():
                start = time.process_time()
                step(fn, x, g)
                times[name].append(time.process_time() - start)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        rows.append({"where": where, "shape": list(shape), "ms": med, "speedup": med["torch"] / med["fastadapt"]})
        print(
            f"{where} {shape}: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
            + f"; fastadapt {rows[-1]['speedup']:.2f}x",
            flush=True,
        )
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    load = os.getloadavg()
    cpu = cpu_info()
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu["model"],
        "flags": cpu["flags"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "caps": caps,
        "load_average_end": load,
        "calls": args.calls,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if args.markdown:
        cmd = "python benchmarks/pool.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            f"`{' '.join(f'{k}={v}' for k, v in caps.items())}{' ' if caps else ''}{cmd.strip()}` (torch "
            f"{torch.__version__}, {cpu['model']} ({', '.join(cpu['flags'])}), kernels {meta['cpu_capability']}, "
            "1 thread, load average at "
            f"the end {' '.join(f'{v:.2f}' for v in load)}); median CPU ms of forward + backward, output and input "
            "gradient equal to torch's block",
            "",
            "| where | shape | torch: relu -> max_pool2d | max_pool2d -> relu | fastadapt | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            m = r["ms"]
            lines.append(
                f"| {r['where']} | {'x'.join(map(str, r['shape']))} | {m['torch']:.2f} | {m['pool']:.2f} | "
                f"{m['fastadapt']:.2f} | {r['speedup']:.2f}x |"
            )
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
