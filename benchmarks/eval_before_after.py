"""Evaluation throughput of two fastadapt versions on the same fixed episodes (issue 17, item 5).

    python benchmarks/eval_before_after.py --before /path/to/old/checkout/src [--reps 2]

Runs the three slow test settings of the result runs (MAML 5-way 1-shot with 10 inner steps, Reptile
5-way 5-shot with 50 persistent-Adam steps, Matching Networks with FCE 20-way 5-shot; 15 queries per
class; Conv4-64 at seed 0, untrained) in fresh child processes that import fastadapt from ``--before``
or from this checkout, interleaved (before, after, before, after, ...), one thread each, and prints
episodes/s (CPU time of the child) and the mean accuracy, which must be equal between the versions
(same weights, same episodes). The current version also runs each setting in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {"maml": 20, "reptile": 10, "matching": 20}  # episodes per measurement


def child(name: str, episodes: int, precision: str) -> None:
    import torch

    from fastadapt.algorithms.maml import MAML
    from fastadapt.algorithms.matching import MatchingNet
    from fastadapt.algorithms.reptile import Reptile
    from fastadapt.data import EpisodeSampler, load_omniglot
    from fastadapt.eval import evaluate
    from fastadapt.nn import Conv4

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if name == "maml":
        ways, shots, algo = 5, 1, MAML(Conv4(1, 5, 64, 28), inner_lr=0.4, inner_steps=1, inner_steps_eval=10)
    elif name == "reptile":
        ways, shots, algo = 5, 5, Reptile(Conv4(1, 5, 64, 28), inner_lr=1e-3, inner_steps=5, inner_steps_eval=50)
    else:
        ways, shots, algo = 20, 5, MatchingNet(Conv4(1, None, 64, 28), fce=True)
    sampler = EpisodeSampler(load_omniglot("vinyals", "test"), ways=ways, shots=shots, queries=15, seed=1234)
    kwargs = {} if precision == "fp32" else {"precision": precision}
    evaluate(algo, sampler.fixed(2, 2), **kwargs)  # warm-up
    c0 = time.process_time()
    res = evaluate(algo, sampler.fixed(episodes, 10), **kwargs)
    cpu = time.process_time() - c0
    print(json.dumps({"episodes_per_s": episodes / cpu, "acc": res.mean, "episodes": episodes}))


def measure(src: Path, name: str, precision: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", name, "--precision", precision],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=str(HERE.parent),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="the src folder of the older checkout")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--which", default="maml,reptile,matching")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help="write the medians as JSON here")
    args = p.parse_args()
    if args.child:
        child(args.child, SETTINGS[args.child], args.precision)
        return
    if args.before is None:
        p.error("--before SRC is required")
    after = HERE.parent / "src"
    rows = []
    for name in args.which.split(","):
        runs: dict[str, list[dict]] = {"before fp32": [], "after fp32": [], "after bf16": []}
        for _ in range(args.reps):
            runs["before fp32"].append(measure(args.before, name, "fp32"))
            runs["after fp32"].append(measure(after, name, "fp32"))
            runs["after bf16"].append(measure(after, name, "bf16"))
        med = {k: sorted(r["episodes_per_s"] for r in v)[len(v) // 2] for k, v in runs.items()}
        row = {
            "setting": name,
            "episodes": SETTINGS[name],
            **{f"{k} ep/s": v for k, v in med.items()},
            **{f"{k} acc": v[0]["acc"] for k, v in runs.items()},
            "speed-up fp32": med["after fp32"] / med["before fp32"],
            "speed-up bf16": med["after bf16"] / med["before fp32"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "load": os.getloadavg()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
