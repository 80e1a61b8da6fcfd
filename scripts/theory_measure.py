"""Regenerate results/theory/: fastadapt.analysis on sinusoid regression and Omniglot, in float64, on one thread.

    OMP_NUM_THREADS=1 python scripts/theory_measure.py [--only NAME ...] [--out results/theory]

Subjects (each a JSON and a PNG, written by fastadapt.analysis; summary.json gathers the figures docs/THEORY.md quotes):

* sinusoid-relu-init:   maml-sinusoid's 1-40-40-1 ReLU MLP at initialization (run.seed 0), 8 tasks, k = 2 and 3
* sinusoid-tanh-init:   the same network with tanh in place of ReLU (a smooth twin: the expansion's assumptions hold)
* sinusoid-relu-trained: the ReLU MLP after 300 MAML steps (trained here, into a temporary folder)
* omniglot-conv-init:   maml-omniglot-5w1s's Conv4 at 8 channels, 5-way, 4 tasks, 6 examples a class
* omniglot-smooth-init: the same with tanh and average pooling

Slopes are fitted twice: over the whole sweep, and over the small-a range a * L <= SMALL (stated in the summary).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fastadapt.analysis import loglog_slope  # noqa: E402
from fastadapt.analysis.plots import plot_analysis  # noqa: E402
from fastadapt.analysis.runner import Subject, analyze_subject, load_subject  # noqa: E402
from fastadapt.runs.folder import write_json  # noqa: E402

SCALES = [1e-6 * 10 ** (i / 2) for i in range(11)]  # a * L from 1e-6 to 1e-1, two points a decade
SMALL = 3.2e-5  # the small-a fit range, a * L <= SMALL: the first four points (below the first ReLU kink measured)
SINUSOID = ["run.seed=0"]
OMNIGLOT = ["model.hidden=8", "data.queries=5", "run.seed=0"]


def smoothed(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ReLU replaced by tanh and every max-pool by an average pool of the same size:
    a twin whose loss is smooth in the weights (the Taylor expansion's assumption)."""
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Tanh())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride))
    return twin


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(name: str, subject: Subject, out: Path, tasks: int, k: int) -> dict:
    started = time.perf_counter()
    record = analyze_subject(subject, None, tasks, k, scales=SCALES)
    scale = record["hessian"]["task_curvature_max"]
    record["seconds_total"] = time.perf_counter() - started
    write_json(out / f"{name}-k{k}.json", record)
    plot_analysis(record, out / f"{name}-k{k}.png", f"{name}, k = {k} (float64)")
    a = [row["a"] for row in record["sweep"]]
    small = [i for i, row in enumerate(record["sweep"]) if row["a_times_L"] <= SMALL * (1 + 1e-9)]

    def fit(ys: list[float], idx: list[int]) -> float:
        return round(loglog_slope([a[i] for i in idx], [ys[i] for i in idx]), 3)

    every = list(range(len(a)))
    res = {n: [row["taylor"][n]["residual"] for row in record["sweep"]] for n in ("maml", "fomaml", "reptile")}
    fo = [row["first_order"]["error"] for row in record["sweep"]]
    return {
        "subject": name,
        "k": k,
        "tasks": tasks,
        "parameters": record["settings"]["parameters"],
        "minibatch": record["settings"]["minibatch"],
        "L_max": scale,
        "hessian_top_eigenvalue": record["hessian"]["top_eigenvalue"],
        "a_range": [a[0], a[-1]],
        "small_a_range": [a[small[0]], a[small[-1]]],
        "taylor_slope_small_a": {n: fit(r, small) for n, r in res.items()},
        "taylor_slope_all_a": {n: fit(r, every) for n, r in res.items()},
        "taylor_local_slopes": {
            n: [round(s, 2) for s in v] for n, v in record["summary"]["taylor_local_slopes"].items()
        },
        "relative_residual_at_smallest_a": {n: record["sweep"][0]["taylor"][n]["relative"] for n in res},
        "relative_residual_at_largest_a": {n: record["sweep"][-1]["taylor"][n]["relative"] for n in res},
        "fo_slope_small_a": fit(fo, small),
        "fo_slope_all_a": fit(fo, every),
        "fo_bound_holds_everywhere": record["summary"]["fo_bound_holds"],
        "fo_max_error_over_bound": max(row["first_order"]["max_ratio"] for row in record["sweep"]),
        "task_gradient_cosine": record["alignment"]["task_gradient_cosine"],
        "within_task_cosine": record["alignment"]["within_task_cosine"],
        "spread_at_largest_a": record["sweep"][-1]["transfer"],
        "seconds": round(record["seconds_total"], 1),
    }


LABELS = {
    "sinusoid-relu-init": "sinusoid ReLU, init",
    "sinusoid-tanh-init": "sinusoid tanh, init",
    "sinusoid-relu-trained": "sinusoid ReLU, 300 MAML steps",
    "omniglot-conv-init": "Omniglot Conv4, init",
    "omniglot-smooth-init": "Omniglot smooth, init",
}


def table(summary: dict) -> str:
    """The Markdown table of docs/THEORY.md ("Measured"), from summary.json."""
    lines = [
        "| subject | k | L (max over tasks) | Hessian top eigenvalue | Taylor slope, a L <= 3.2e-5 (MAML / FOMAML / "
        "Reptile) | Taylor slope, whole sweep | first-order error slope | under its bound | max error / bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.values():
        if not isinstance(row, dict) or "subject" not in row:
            continue
        small = " / ".join(f"{v:.2f}" for v in row["taylor_slope_small_a"].values())
        every = " / ".join(f"{v:.2f}" for v in row["taylor_slope_all_a"].values())
        lines.append(
            f"| {LABELS[row['subject']]} | {row['k']} | {row['L_max']:.1f} | {row['hessian_top_eigenvalue']:.1f} | "
            f"{small} | {every} | {row['fo_slope_small_a']:.2f} | "
            f"{'every a' if row['fo_bound_holds_everywhere'] else 'NOT at every a'} | {row['fo_max_error_over_bound']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def trained_sinusoid(folder: Path) -> Path:
    """maml-sinusoid trained for 300 steps (float32, the library's defaults otherwise) in ``folder``."""
    from fastadapt import train

    over = ["optim.steps=300", "eval.val_every=0", "eval.test_episodes=20", "run.progress=false", "run.seed=0"]
    train("maml-sinusoid", [*over, f"run.out={folder}"])
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/theory")
    p.add_argument("--only", nargs="*", help="subject names to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["machine"] = {
        "cpu": cpu_name(),
        "threads": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    summary["small_a"] = f"a * L <= {SMALL}"

    def wanted(name: str) -> bool:
        return not args.only or name in args.only

    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        if wanted("sinusoid-relu-init") or wanted("sinusoid-tanh-init"):
            relu = load_subject("maml-sinusoid", SINUSOID)
            if wanted("sinusoid-relu-init"):
                jobs += [("sinusoid-relu-init", relu, 8, 2), ("sinusoid-relu-init", relu, 8, 3)]
            if wanted("sinusoid-tanh-init"):
                tanh = Subject(relu.config, smoothed(relu.model), relu.tasks, {**relu.origin, "variant": "tanh"}, out)
                jobs += [("sinusoid-tanh-init", tanh, 8, 2), ("sinusoid-tanh-init", tanh, 8, 3)]
        if wanted("sinusoid-relu-trained"):
            started = time.perf_counter()
            run = trained_sinusoid(Path(tmp) / "maml-sinusoid-300")
            summary["sinusoid-training-seconds"] = round(time.perf_counter() - started, 1)
            trained = load_subject(str(run))
            trained.origin["run"] = run.name  # a temporary folder: the record names the run, not this machine's path
            jobs.append(("sinusoid-relu-trained", trained, 8, 2))
        if wanted("omniglot-conv-init") or wanted("omniglot-smooth-init"):
            conv = load_subject("maml-omniglot-5w1s", OMNIGLOT)
            if wanted("omniglot-conv-init"):
                jobs.append(("omniglot-conv-init", conv, 4, 2))
            if wanted("omniglot-smooth-init"):
                twin = Subject(
                    conv.config, smoothed(conv.model), conv.tasks, {**conv.origin, "variant": "tanh+avgpool"}, out
                )
                jobs.append(("omniglot-smooth-init", twin, 4, 2))
        for name, subject, tasks, k in jobs:
            row = measure(name, subject, out, tasks, k)
            summary[f"{name}-k{k}"] = row
            print(json.dumps(row), flush=True)
            write_json(summary_file, summary)
    (out / "table.md").write_text(table(summary))


if __name__ == "__main__":
    main()
