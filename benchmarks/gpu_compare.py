"""Workloads (a) and (b) of ``benchmarks/compare.py`` on a CUDA device: fastadapt's execution paths and precisions
against the contenders that are installed (learn2learn, higher, TorchOpt, plain PyTorch).

    python benchmarks/gpu_compare.py [--workloads a,b] [--meta-batch 32] [--iters 10] [--out gpu_compare.json]

Every contender runs in a fresh process (``--one``), on the same seeded Conv4-64 weights and the same synthetic
batch (``benchmarks/contenders.py``), moved to the device. One warm-up meta-gradient (saved for the agreement
check against fastadapt's default), then ``--iters`` timed iterations of meta-gradient + Adam step with
``torch.cuda.synchronize`` around each; reports iterations/s (median), peak CUDA memory
(``max_memory_allocated``) and the gradient's relative difference to fastadapt's. Only useful on a GPU machine:
``benchmarks/gpu.sh`` runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import WORKLOADS, flat_grad, make_model, parse_contender, supports, synthetic_batch  # noqa: E402
from timing import interleaved  # noqa: E402

# fastadapt's paths (exec=auto is vmap on an accelerator), bf16 autocast, and the contenders
CONTENDERS = (
    "fastadapt",
    "fastadapt+exec=loop",
    "fastadapt+exec=shared_first",
    "fastadapt@bf16",
    "learn2learn",
    "higher",
    "torchopt",
    "plain",
)


def one(workload: str, spec: str, meta_batch: int, iters: int, grad_out: str, device: str) -> dict:
    """Measure one contender in this process."""
    bf16 = spec.endswith("@bf16")
    contender = parse_contender(spec.removesuffix("@bf16"))
    w = replace(WORKLOADS[workload], meta_batch=meta_batch)
    reason = supports(contender.library, w)
    if reason:
        return {"workload": workload, "contender": spec, "skipped": reason}
    torch.manual_seed(0)
    model = make_model(w, contender.library).to(device)
    batch = synthetic_batch(w).to(device)
    step = contender.build(w, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run() -> None:
        if bf16:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                step(batch)
        else:
            step(batch)

    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None  # a CPU run is only a smoke test of this script
    run()  # warm-up: kernels chosen, caches filled
    torch.save(flat_grad(model).cpu(), grad_out)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = interleaved({"step": lambda: (run(), optimizer.step())}, iters, warmup=0, sync=sync)
    return {
        "workload": workload,
        "contender": spec,
        "it_per_s": 1 / times.median_wall("step"),
        "ms_median": 1000 * times.median_wall("step"),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "meta_batch": meta_batch,
        "iters": iters,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="a,b")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before a contender's process is abandoned")
    ap.add_argument("--out", default="gpu_compare.json")
    ap.add_argument("--one", nargs=3, metavar=("WORKLOAD", "CONTENDER", "GRAD_OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(
            json.dumps(one(args.one[0], args.one[1], args.meta_batch, args.iters, args.one[2], args.device)), flush=True
        )
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_compare.py: no CUDA device here")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads.split(","):
            ref = None
            for spec in args.contenders.split(","):
                grad_file = Path(tmp) / f"{workload}-{spec.replace('+', '_').replace('@', '_')}.pt"
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    workload,
                    spec,
                    str(grad_file),
                    "--meta-batch",
                    str(args.meta_batch),
                    "--iters",
                    str(args.iters),
                    "--device",
                    args.device,
                ]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                    row = (
                        json.loads(lines[-1])
                        if proc.returncode == 0 and lines
                        else {
                            "workload": workload,
                            "contender": spec,
                            "error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]),
                        }
                    )
                except subprocess.TimeoutExpired:
                    row = {"workload": workload, "contender": spec, "error": f"timed out after {args.timeout:.0f} s"}
                if grad_file.exists():
                    g = torch.load(grad_file)
                    if ref is None:
                        ref = g
                    row["grad_rel_diff"] = float((g - ref).norm() / ref.norm())
                rows.append(row)
                print(json.dumps(row), flush=True)
    best = {}
    for r in rows:
        if "it_per_s" in r and not r["contender"].startswith("fastadapt"):
            best[r["workload"]] = max(best.get(r["workload"], 0.0), r["it_per_s"])
    for r in rows:
        if "it_per_s" in r and best.get(r["workload"]):
            r["vs_fastest_contender"] = r["it_per_s"] / best[r["workload"]]
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    for r in rows:
        figure = (
            f"{r['it_per_s']:8.2f} it/s  {r['peak_cuda_mb']:8.0f} MB"
            if "it_per_s" in r
            else r.get("skipped") or r.get("error")
        )
        ratio = f"  {r['vs_fastest_contender']:.2f}x" if "vs_fastest_contender" in r else ""
        print(f"({r['workload']}) {r['contender']:30s} {figure}{ratio}")


if __name__ == "__main__":
    main()
