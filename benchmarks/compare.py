"""fastadapt against the libraries users would pick instead: learn2learn, higher, TorchOpt, plain PyTorch.

    python benchmarks/compare.py            # full run: 2 repetitions, all workloads, sweeps (~20 min on a quiet 2-core machine)
    python benchmarks/compare.py --quick    # ~2 min idle: (a), (b), (d), one repetition, meta-batch 8, no sweeps

Workloads (``benchmarks/contenders.py``): (a) MAML second order, (b) first order, (c) Reptile,
(d) ProtoNets, (e) (a) and (d) end to end on episodes sampled from the bundled Omniglot.
Every measurement runs in a fresh process (``benchmarks/child.py``); contenders are interleaved
(the order rotates every repetition) so that a busy machine slows them alike; the table reports
medians over all timed iterations of all repetitions. Speed is iterations per second of wall time
and of the process's CPU time (robust when the machine is shared); memory is the child's peak
resident set (``ru_maxrss``). The meta-gradient of every contender on the same initial weights and
batch is compared with fastadapt's. Writes ``results.json``, ``table.md`` and the sweep plots to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_report import plot_sweeps, render  # noqa: E402
from contenders import WORKLOADS, parse_contender, supports  # noqa: E402
from timing import median  # noqa: E402

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
FASTADAPT = ("fastadapt", "fastadapt+mallopt+accum4")  # as shipped, and with proposals A + B
OTHERS = ("learn2learn", "higher", "torchopt", "plain")
RTOL = 1e-4  # gradient agreement: |g - g_fastadapt| <= RTOL * |g_fastadapt| + RTOL * max|g_fastadapt|, elementwise


def run_child(args: list[str], timeout: float) -> dict:
    """Run ``child.py`` with ``args``; its last stdout line as a dict (or ``{"error": ...}``)."""
    cmd = [sys.executable, str(CHILD), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def library_status() -> dict[str, str | None]:
    """``None`` for each contender library that imports here, else why it is skipped."""
    probes = {
        "learn2learn": f"import sys; sys.path.insert(0, {str(HERE)!r}); from contenders import import_learn2learn_maml; import_learn2learn_maml()",
        "higher": "import higher",
        "torchopt": "import torchopt",
    }
    out: dict[str, str | None] = {"fastadapt": None, "plain": None}
    for lib, code in probes.items():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out[lib] = (
            None
            if proc.returncode == 0
            else f"does not import ({(proc.stderr.strip().splitlines() or ['?'])[-1]}); see benchmarks/install_contenders.sh"
        )
    return out


def compare_grads(ref: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None) -> dict:
    """Relative error of ``g`` against ``ref`` (whole vector, and on ``mask`` if given) and the elementwise check."""

    def stats(a: torch.Tensor, b: torch.Tensor) -> dict:
        tol = RTOL * a.abs() + RTOL * a.abs().max()
        return {
            "rel_err": float((b - a).norm() / a.norm().clamp_min(1e-30)),
            "max_abs": float((b - a).abs().max()),
            "agree": bool(((b - a).abs() <= tol).all()),
        }

    out = {"all": stats(ref, g)}
    if mask is not None:
        out["checked"] = stats(ref[mask], g[mask])
    return out


def reptile_mask() -> tuple[torch.Tensor, list[str]]:
    """Parameters that the Reptile check compares: all but the conv biases.

    Each conv bias feeds a BatchNorm that removes it, so its exact gradient is zero and what every
    library computes is rounding noise; Adam (beta1 = 0) turns that noise into steps of +-lr, whose sign
    differs between any two implementations. Those entries carry no information and are excluded.
    """
    from contenders import make_model

    model = make_model(WORKLOADS["c"])
    parts, skipped = [], []
    for name, p in model.named_parameters():
        conv_bias = name.startswith("features.") and name.endswith(".0.bias")
        parts.append(torch.full((p.numel(),), not conv_bias))
        if conv_bias:
            skipped.append(name)
    return torch.cat(parts), skipped


def summarise(records: list[dict]) -> dict:
    """Medians over all timed iterations of all repetitions of one (workload, contender)."""
    ok = [r for r in records if "wall" in r]
    if not ok:
        return {"error": next((r.get("error") or r.get("skipped") for r in records), "no result")}
    walls = [x for r in ok for x in r["wall"]]
    cpus = [x for r in ok for x in r["cpu"]]
    return {
        "it_s_wall": 1 / median(walls),
        "it_s_cpu": 1 / median(cpus),
        "sec_wall": median(walls),
        "sec_cpu": median(cpus),
        "rep_medians_cpu": [median(r["cpu"]) for r in ok],
        "maxrss_mb": max(r["maxrss_mb"] for r in ok),
        "rss_before_mb": median([r["rss_before_mb"] for r in ok]),
        "minflt_per_iter": median([r["minflt_per_iter"] for r in ok]),
        "iterations": len(walls),
        "repetitions": len(ok),
    }


def main() -> None:  # noqa: C901
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="~2 min idle: workloads a,b,d, one repetition, meta-batch 8, two fastadapt variants, no sweeps (--sweeps: small ones)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every measurement (default 2; quick 1)")
    parser.add_argument(
        "--iters", type=int, default=None, help="timed iterations per process after one warm-up (default 1)"
    )
    parser.add_argument("--workloads", default=None, help="comma-separated (default: all; quick: a,b,d)")
    parser.add_argument(
        "--fastadapt", default=None, help=f"fastadapt variants, comma-separated (default: {','.join(FASTADAPT)})"
    )
    parser.add_argument("--others", default=",".join(OTHERS))
    parser.add_argument(
        "--meta-batch",
        type=int,
        default=None,
        help="tasks per update for the gradient-based workloads instead of 32 (quick: 8; per-task loops scale linearly)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in every child (default 1: the machine is shared)"
    )
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument("--sweeps", action="store_true", help="run the (small) sweeps in quick mode too")
    parser.add_argument("--sweeps-only", action="store_true")
    parser.add_argument(
        "--deadline-min",
        type=float,
        default=0,
        help="start no new measurement of the main grid after this many minutes (0: none); the table says what was run",
    )
    parser.add_argument(
        "--rotate", type=int, default=0, help="offset of the contender order (a second run started beside a first)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="pool the timings of several runs' results.json (gradients and FLOPs from the first) and render the table",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a child is abandoned")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    reps = args.reps or (1 if args.quick else 2)
    iters = args.iters or 1
    if args.quick and args.meta_batch is None:
        args.meta_batch = 8
    fastadapt = (args.fastadapt or ",".join(FASTADAPT)).split(",")
    others = [c for c in args.others.split(",") if c]
    workloads = [w for w in (args.workloads or ("a,b,d" if args.quick else ",".join(WORKLOADS))).split(",") if w]
    if args.quick and not args.sweeps:
        args.no_sweeps = True
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = ["--threads", str(args.threads)]

    status = library_status()
    for lib, why in status.items():
        print(f"[contender] {lib}: {'ok' if why is None else 'SKIPPED: ' + why}", flush=True)
    contenders = [c for c in fastadapt + others if status.get(parse_contender(c).library) is None]

    result: dict = {
        "command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]),
        "reps": reps,
        "iters": iters,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {"cpus": _cpu_model(), "logical_cpus": _nproc(), "load_before": _load()},
        "skipped": {},
        "workloads": {},
        "matmul": [],
        "sweeps": {},
        "meta_batch_override": args.meta_batch,
    }
    result["skipped"].update({lib: why for lib, why in status.items() if why})

    result["matmul"].append(run_child(["--matmul", "2048", *common], args.timeout))
    if not args.sweeps_only:
        _main_grid(args, result, workloads, contenders, reps, iters, common)
        result["matmul"].append(run_child(["--matmul", "2048", *common], args.timeout))
    if not args.no_sweeps:
        _sweeps(args, result, common)
    result["machine"]["load_after"] = _load()
    result["elapsed_s"] = time.perf_counter() - started
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    table = render(result)
    (out_dir / "table.md").write_text(table)
    print(table)
    if result["sweeps"]:
        plot_sweeps(result, out_dir)
    print(
        f"[done] {result['elapsed_s'] / 60:.1f} min; wrote {out_dir}/results.json, table.md"
        + (", sweep plots" if result["sweeps"] else "")
    )


def _main_grid(
    args: argparse.Namespace,
    result: dict,
    workloads: list[str],
    contenders: list[str],
    reps: int,
    iters: int,
    common: list[str],
) -> None:
    records: dict[str, dict[str, list[dict]]] = {w: {} for w in workloads}
    skipped: dict[str, dict[str, str]] = {w: {} for w in workloads}
    mask, masked_names = reptile_mask()

    def tasks(w: str) -> int:
        return args.meta_batch if args.meta_batch and WORKLOADS[w].algo != "protonet" else WORKLOADS[w].meta_batch

    with tempfile.TemporaryDirectory() as tmp:
        deadline = time.perf_counter() + args.deadline_min * 60 if args.deadline_min else float("inf")
        for rep in range(reps):
            for w in workloads:
                runnable = [c for c in contenders if not supports(parse_contender(c).library, WORKLOADS[w])]
                for c in contenders:
                    why = supports(parse_contender(c).library, WORKLOADS[w])
                    if why:
                        skipped[w][c] = why
                shift = (rep + args.rotate) % max(len(runnable), 1)
                for c in runnable[shift:] + runnable[:shift]:  # rotate the order every repetition
                    if time.perf_counter() > deadline:
                        result.setdefault("stopped_at_deadline", f"repetition {rep + 1}, workload {w}")
                        break
                    extra = ["--grad-out", f"{tmp}/{w}-{c}.pt"] if rep == 0 else []
                    mb = ["--meta-batch", str(tasks(w))]
                    r = run_child(
                        ["--workload", w, "--contender", c, "--iters", str(iters), *mb, *extra, *common], args.timeout
                    )
                    if rep == 0 and WORKLOADS[w].algo == "reptile":  # the float64 gradient check (see reptile_mask)
                        run_child(
                            [
                                "--workload",
                                w,
                                "--contender",
                                c,
                                "--iters",
                                "0",
                                "--float64",
                                "--grad-out",
                                f"{tmp}/{w}-{c}-f64.pt",
                                *mb,
                                *common,
                            ],
                            args.timeout,
                        )
                    records[w].setdefault(c, []).append(r)
                    cpu = (
                        f"{median(r['cpu']):.2f} s cpu, {median(r['wall']):.2f} s wall, {r['maxrss_mb']:.0f} MB"
                        if "cpu" in r
                        else r.get("error")
                    )
                    print(f"[rep {rep + 1}/{reps}] {w:10s} {c:28s} {cpu}", flush=True)
        for w in (w for w in workloads if records[w]):
            ref_path = Path(tmp) / f"{w}-fastadapt.pt"
            ref = torch.load(ref_path) if ref_path.exists() else None
            desc = WORKLOADS[w].description
            if tasks(w) != WORKLOADS[w].meta_batch:
                desc += f" (run with meta-batch {tasks(w)})"
            entry: dict = {"description": desc, "contenders": {}, "skipped": skipped[w]}
            for c, recs in records[w].items():
                s = summarise(recs)
                sums = {json.dumps(r.get("checksums")) for r in recs if "checksums" in r}
                s["same_inputs_as_fastadapt"] = bool(sums) and sums == {
                    json.dumps(r.get("checksums")) for r in records[w].get("fastadapt", []) if "checksums" in r
                }
                g_path = Path(tmp) / f"{w}-{c}.pt"
                if ref is not None and g_path.exists():
                    s["grad"] = compare_grads(ref, torch.load(g_path), None)
                f64, ref64 = Path(tmp) / f"{w}-{c}-f64.pt", Path(tmp) / f"{w}-fastadapt-f64.pt"
                if WORKLOADS[w].algo == "reptile" and f64.exists() and ref64.exists():
                    s.setdefault("grad", {})["checked"] = compare_grads(torch.load(ref64), torch.load(f64), mask)[
                        "checked"
                    ]
                    s["grad"]["excluded"] = masked_names
                entry["contenders"][c] = s
            counted = min(tasks(w), 2)
            flops = run_child(
                ["--workload", w, "--contender", "plain", "--flops", "--meta-batch", str(counted), *common],
                args.timeout,
            )
            if "flops" in flops:
                entry["flops"] = flops["flops"] * tasks(w) / counted  # linear in tasks
            result["workloads"][w] = entry
            result["raw"] = records


SWEEP_T = (1, 8, 32, 128)
SWEEP_T_QUICK = (1, 4, 16)
SWEEP_STEPS = (1, 5, 10)
SWEEP_STEPS_QUICK = (1, 3)
SWEEP_STEPS_T = 8  # meta-batch of the inner-steps sweep (kept small for time)
SWEEP_STEPS_T_QUICK = 4


def _sweeps(args: argparse.Namespace, result: dict, common: list[str]) -> None:
    contenders = (
        ["fastadapt", "learn2learn"] if args.quick else ["fastadapt", "fastadapt+mallopt+accum4", "learn2learn"]
    )
    points = [
        ("meta_batch", t, 1, algo) for t in (SWEEP_T_QUICK if args.quick else SWEEP_T) for algo in ("maml", "fomaml")
    ]
    steps_t = SWEEP_STEPS_T_QUICK if args.quick else SWEEP_STEPS_T
    points += [
        ("inner_steps", steps_t, k, algo)
        for k in (SWEEP_STEPS_QUICK if args.quick else SWEEP_STEPS)
        for algo in ("maml", "fomaml")
    ]
    rows = []
    for axis, t, k, algo in points:
        for c in contenders:
            r = run_child(
                [
                    "--workload",
                    "a",
                    "--contender",
                    c,
                    "--iters",
                    "1",
                    "--meta-batch",
                    str(t),
                    "--inner-steps",
                    str(k),
                    "--algo",
                    algo,
                    *common,
                ],
                args.timeout,
            )
            row = {"axis": axis, "meta_batch": t, "inner_steps": k, "algo": algo, "contender": c}
            if "cpu" in r:
                row.update(sec_cpu=median(r["cpu"]), sec_wall=median(r["wall"]), maxrss_mb=r["maxrss_mb"])
            else:
                row["error"] = r.get("error")
            print(
                f"[sweep] {axis} T={t} K={k} {algo:6s} {c:22s} "
                + (f"{row['sec_cpu']:.2f} s cpu {row['maxrss_mb']:.0f} MB" if "sec_cpu" in row else str(row["error"])),
                flush=True,
            )
            rows.append(row)
    result["sweeps"] = {"contenders": contenders, "rows": rows, "inner_steps_meta_batch": steps_t}


def merge(paths: list[str], out_dir: Path) -> None:
    """Pool the raw timings of several runs into one table (gradient checks and FLOPs come from the first run)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    result = runs[0]
    result["command"] = (
        " + ".join(r["command"] for r in runs) + f" (merged: python benchmarks/compare.py --merge {' '.join(paths)})"
    )
    result["reps"] = sum(r["reps"] for r in runs)
    result["matmul"] = [m for r in runs for m in r["matmul"]]
    result["elapsed_s"] = max(r.get("elapsed_s", 0) for r in runs)
    result["machine"]["load_after"] = runs[-1]["machine"].get("load_after")
    for w, entry in result["workloads"].items():
        for c in entry["contenders"]:
            recs = [rec for r in runs for rec in r.get("raw", {}).get(w, {}).get(c, [])]
            if recs:
                keep = {
                    k: entry["contenders"][c][k]
                    for k in ("grad", "same_inputs_as_fastadapt")
                    if k in entry["contenders"][c]
                }
                entry["contenders"][c] = {**summarise(recs), **keep}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    table = render(result)
    (out_dir / "table.md").write_text(table)
    print(table)


# --- report -------------------------------------------------------------------------------------------------------------


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _nproc() -> int:
    import os

    return os.cpu_count() or 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    main()
