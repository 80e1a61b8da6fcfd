"""Where a meta-gradient step's time goes, per operator, against the CPU's fp32 matmul rate (issue 32, part 4).

    python benchmarks/op_profile.py --workload a                        # fastadapt's step of workload (a), this CPU
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/op_profile.py --workload a   # as an AVX2 CPU
    python benchmarks/op_profile.py --workload a --layouts contiguous,channels_last --out DIR/profile.json

One process, one thread. The step is ``benchmarks/contenders.py``'s ``fastadapt_step`` of the workload (the
library's default execution, float32) on its synthetic batch. For each layout (``contiguous``: NCHW as users call
it; ``channels_last``: the model's weights and the batch in NHWC, oneDNN's preferred layout; ``inputs_nhwc``: the
batch only; ``weights_nhwc``: the weights only), after a warm-up: the
median CPU time of ``--iters`` steps, then one profiled step (``torch.profiler``, self CPU time per operator)
grouped into convolution forward / backward, BatchNorm forward / backward, ReLU forward / backward, max-pool forward
/ backward, the rest; the FLOPs of one step (``torch.utils.flop_counter``: convolutions and matrix products,
forward and backward) over its CPU time as a share of the fp32 matmul rate measured in the same process (best of 5
2048 x 2048 products). The layouts are interleaved, iteration by iteration. ``ONEDNN_MAX_CPU_ISA`` /
``ATEN_CPU_CAPABILITY`` cap the instructions oneDNN / torch's own kernels use, so an AVX-512 machine measures what
an AVX2-only CPU runs (not its memory system or clock: say which one ran).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import WORKLOADS, fastadapt_step, make_model, synthetic_batch  # noqa: E402

GROUPS = (  # (group, substrings of aten operator names), first match wins
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("mkldnn_convolution", "_convolution", "conv2d", "convolution")),
    ("BatchNorm backward", ("batch_norm_backward",)),
    ("BatchNorm forward", ("batch_norm",)),
    ("ReLU backward", ("threshold_backward",)),
    ("ReLU forward", ("relu", "clamp_min")),
    ("max-pool backward", ("max_pool2d_with_indices_backward",)),
    ("max-pool forward", ("max_pool2d",)),
    ("matrix products", ("addmm", "mm", "bmm", "linear")),
)


def group_of(name: str) -> str:
    """The :data:`GROUPS` entry an operator's name falls in ("other" if none)."""
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of an n x n x n product on this thread, the best of ``repeats`` (process CPU time)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - t0)
    return 2 * n**3 / best


def to_layout(batch, layout: str):  # noqa: ANN001, ANN201
    """``batch`` with its images in ``layout``."""
    if layout in ("contiguous", "weights_nhwc"):
        return batch
    if layout not in ("channels_last", "inputs_nhwc"):
        raise SystemExit(f"--layouts: {layout!r} is not one of contiguous, channels_last, inputs_nhwc, weights_nhwc")
    fmt = torch.channels_last

    def nhwc(x: torch.Tensor) -> torch.Tensor:  # [T, B, C, H, W]: each task's images NHWC
        return x.flatten(0, 1).contiguous(memory_format=fmt).unflatten(0, x.shape[:2])

    return type(batch)(nhwc(batch.support_x), batch.support_y, nhwc(batch.query_x), batch.query_y, batch.classes)


def profile_step(step, batch) -> dict[str, float]:  # noqa: ANN001
    """Self CPU seconds per :data:`GROUPS` entry of one call of ``step(batch)``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    out: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            name = event.key[len("aten::") :]
            g = group_of(name)
            out[g] = out.get(g, 0.0) + event.self_cpu_time_total / 1e6
            if g == "other":  # what "other" holds, by operator
                out[f"other: {name}"] = event.self_cpu_time_total / 1e6
    return out


def step_flops(step, batch) -> int:  # noqa: ANN001
    """FLOPs of one call of ``step(batch)`` (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="a", choices=[w for w in WORKLOADS if not w.startswith("e")])
    parser.add_argument("--layouts", default="contiguous,channels_last")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", help="write the result as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from fastadapt.runtime.hardware import cpu_info

    workload = WORKLOADS[args.workload]
    layouts = args.layouts.split(",")
    steps, batches = {}, {}
    for layout in layouts:
        torch.manual_seed(0)
        model = make_model(workload)
        if layout in ("channels_last", "weights_nhwc"):  # weights NHWC ("inputs_nhwc": the batch only)
            model = model.to(memory_format=torch.channels_last)
        steps[layout], batches[layout] = fastadapt_step(workload, model), to_layout(synthetic_batch(workload), layout)
        steps[layout](batches[layout])  # warm-up
    rate = matmul_rate()
    times: dict[str, list[float]] = {layout: [] for layout in layouts}
    for _ in range(args.iters):
        for layout in layouts:  # interleaved
            t0 = time.process_time()
            steps[layout](batches[layout])
            times[layout].append(time.process_time() - t0)
    rows = {}
    for layout in layouts:
        seconds = statistics.median(times[layout])
        flops = step_flops(steps[layout], batches[layout])
        found = profile_step(steps[layout], batches[layout])
        groups = {g: v for g, v in found.items() if not g.startswith("other: ")}
        total = sum(groups.values())
        others = sorted(
            ((g[len("other: ") :], v) for g, v in found.items() if g.startswith("other: ")), key=lambda kv: -kv[1]
        )
        rows[layout] = {
            "step_cpu_s": seconds,
            "flops": flops,
            "share_of_matmul_rate": flops / seconds / rate,
            "groups_s": groups,
            "groups_share": {g: v / total for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "other_top_s": dict(others[:6]),
        }
    result = {"workload": args.workload, "cpu": cpu_info(), "matmul_gflops": rate / 1e9, "layouts": rows}
    print(f"{cpu_info()}\nfp32 matmul rate: {rate / 1e9:.1f} GFLOP/s (one thread)")
    for layout, row in rows.items():
        print(
            f"{layout}: {row['step_cpu_s']:.3f} s a step (median CPU time), {row['flops'] / 1e9:.1f} GFLOP, "
            f"{100 * row['share_of_matmul_rate']:.0f} % of the matmul rate"
        )
        for g, share in row["groups_share"].items():
            print(f"    {g:22s} {100 * share:5.1f} %  {row['groups_s'][g]:.3f} s")
        print("    other, by operator: " + ", ".join(f"{k} {v:.3f} s" for k, v in row["other_top_s"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
