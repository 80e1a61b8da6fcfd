"""Issue 34: iMAML's peak memory against its inner steps (flat: the inner loop is never differentiated), with
second-order MAML alongside (its graph grows with every step).

    OMP_NUM_THREADS=1 python benchmarks/imaml_memory.py [--steps 1,5,20,50] [--tasks 2] [--hidden 32] [--shots 5]
        [--json results/theory/imaml-memory.json]
    python benchmarks/imaml_memory.py --plot results/theory/imaml-memory.json   # redraw its PNG from the JSON

Each setting runs in a fresh child process (``--one ALGORITHM STEPS``): Conv4 (``--hidden`` filters, 28x28, float32),
``--tasks`` random 5-way ``--shots``-shot tasks with 15 queries a class, one meta-gradient (``meta_loss`` and its
backward, all tasks at once). iMAML: lam 2, inner rate 0.01 (``inner_lr * lam < 2``), 5 CG steps; MAML: second
order, inner rate 0.01. The child reports its resident memory with the model and tasks built (``start``), the
peak during the meta-gradient (``VmHWM``, reset to the current RSS just before by writing 5 to
``/proc/self/clear_refs``; where that is refused, ``ru_maxrss`` since the process began) and the peak's growth over
the start (what the meta-gradient holds), and the meta-gradient's wall time. The load average is printed: the
machine may be busy; resident memory does not depend on it, the times do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

WAYS, QUERIES = 5, 15


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def reset_peak() -> bool:
    """Reset this process's peak resident memory (VmHWM) to the current one; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def one(args: argparse.Namespace, algorithm: str, steps: int) -> dict[str, float]:
    """One setting, in this process: the measurements as a dict."""
    import torch

    from fastadapt.algorithms.imaml import IMAML
    from fastadapt.algorithms.maml import MAML
    from fastadapt.core.episodes import TaskBatch
    from fastadapt.nn import Conv4

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    t, labels = args.tasks, torch.arange(WAYS)
    batch = TaskBatch(
        torch.randn(t, WAYS * args.shots, 1, 28, 28, generator=g),
        labels.repeat_interleave(args.shots).repeat(t, 1),
        torch.randn(t, WAYS * QUERIES, 1, 28, 28, generator=g),
        labels.repeat_interleave(QUERIES).repeat(t, 1),
        labels.repeat(t, 1),
    )
    model = Conv4(1, WAYS, args.hidden, 28)
    if algorithm == "imaml":
        algo = IMAML(model, lam=2.0, inner_lr=0.01, inner_steps=steps, cg_steps=5)
    else:
        algo = MAML(model, inner_lr=0.01, inner_steps=steps, execution="loop")
    start = status_kb("VmRSS") * 1024
    reset = reset_peak()
    wall = time.perf_counter()
    algo.meta_loss(batch).loss.backward()
    wall = time.perf_counter() - wall
    peak = status_kb("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad = sum(float(p.grad.norm()) for p in algo.parameters() if p.grad is not None)
    return {
        "start_mb": start / 1e6,
        "peak_mb": peak / 1e6,
        "growth_mb": (peak - start) / 1e6,
        "wall_s": wall,
        "peak_reset": reset,
        "grad_finite": grad == grad and grad != float("inf"),
    }


def child(args: argparse.Namespace, algorithm: str, steps: int) -> dict[str, float]:
    """:func:`one` in a fresh process (its own peak)."""
    cmd = [sys.executable, __file__, "--one", algorithm, str(steps)]
    cmd += ["--tasks", str(args.tasks), "--hidden", str(args.hidden), "--shots", str(args.shots)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> float:
    """``(max - min) / min``: how far from flat a list of peaks is (0.1: within 10 %)."""
    return (max(values) - min(values)) / min(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="1,5,20,50")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--algorithms", default="imaml,maml")
    p.add_argument("--json", help="also write the measurements to this JSON file, and its figure beside it (.png)")
    p.add_argument("--plot", metavar="JSON", help="only draw the figure of a JSON written by --json (JSON -> .png)")
    p.add_argument("--one", nargs=2, metavar=("ALGORITHM", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args, args.one[0], int(args.one[1]))))
        return
    if args.plot is not None:
        draw(args.plot)
        return
    from fastadapt.runtime.hardware import cpu_info

    info, load = cpu_info(), os.getloadavg()
    print(f"cpu: {info['model']} ({', '.join(info['flags'])}); load average {load}")
    print(
        f"Conv4-{args.hidden}, {args.tasks} tasks 5-way {args.shots}-shot {QUERIES} queries, float32, "
        f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    steps = [int(s) for s in args.steps.split(",")]
    found: dict[str, dict[int, dict[str, float]]] = {}
    print(f"{'algorithm':>9} {'steps':>5} {'start MB':>9} {'peak MB':>8} {'growth MB':>10} {'wall s':>7}")
    for algorithm in args.algorithms.split(","):
        found[algorithm] = {}
        for n in steps:
            r = found[algorithm][n] = child(args, algorithm, n)
            print(
                f"{algorithm:>9} {n:>5} {r['start_mb']:>9.0f} {r['peak_mb']:>8.0f} {r['growth_mb']:>10.1f} "
                f"{r['wall_s']:>7.2f}"
            )
    summary = {}
    for algorithm, rows in found.items():
        peaks = [rows[n]["peak_mb"] for n in steps]
        growth = [rows[n]["growth_mb"] for n in steps]
        summary[algorithm] = {
            "peak_spread": spread(peaks),
            "growth_spread": spread(growth),
            "growth_ratio_last_over_first": growth[-1] / growth[0],
        }
        print(
            f"{algorithm}: peak {min(peaks):.0f}..{max(peaks):.0f} MB (spread {100 * spread(peaks):.1f} %), growth "
            f"{min(growth):.1f}..{max(growth):.1f} MB (spread {100 * spread(growth):.1f} %; {steps[-1]} steps / "
            f"{steps[0]}: {growth[-1] / growth[0]:.2f}x)"
        )
    if args.json:
        record = {
            "cpu": info["model"],
            "load_average": list(load),
            "settings": {k: getattr(args, k) for k in ("tasks", "hidden", "shots")} | {"queries": QUERIES},
            "steps": steps,
            "measured": {a: {str(n): r for n, r in rows.items()} for a, rows in found.items()},
            "summary": summary,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        draw(args.json)


def draw(path: str) -> None:
    """The figure of a JSON record written by ``--json``, beside it (``.png``)."""
    from pathlib import Path

    from fastadapt.analysis.plots import plot_memory

    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    print(f"wrote {plot_memory(record, Path(path).with_suffix('.png'))}")


if __name__ == "__main__":
    main()
