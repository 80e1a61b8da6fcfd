"""Workers of one tuning study: wall time of a fixed 8-trial ``fastadapt tune`` study on 1 worker and on 2 workers.

Each worker is a ``fastadapt tune ... --storage URL`` process with one torch thread (``OMP_NUM_THREADS=1``,
``run.threads=1``), as on a cluster; the study is a MAML sinusoid search whose trials all train for ``--steps``
meta-steps (no pruning: ``pruner = "none"``, so every setting does the same work). The wall time runs from the first
worker's start to the last worker's exit (process start-up included: it is part of a worker's cost). Worker counts
are interleaved round by round so that a busy machine slows them alike; the median over rounds is reported with the
ratio to one worker (the issue's target: 2 workers <= 0.6x of 1 on a 2-core CPU), the CPU model and flags, and the
load average before and after (a figure taken on a loaded machine says so).

    python benchmarks/workers.py                       # 8 trials of 400 steps, workers 1 and 2, 3 rounds, SQLite
    python benchmarks/workers.py --storage postgresql://USER@HOST/DB   # a server (each round uses its own study)
    python benchmarks/workers.py --steps 20 --rounds 1 # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
[data]
dataset = "sinusoid"
ways = 1
shots = 5
queries = 5
meta_batch = 4
test_queries = 5

[model]
name = "mlp"
layers = [40, 40]

[algorithm]
name = "maml"
inner_lr = 0.01
execution = "vmap"

[optim]
lr = 1e-3
steps = {steps}

[eval]
val_every = {steps}
val_episodes = 20
batch = 10
test_episodes = 4

[run]
name = "workers-bench"
checkpoint_every = 100000
log_every = 100000
threads = 1
progress = false

[tune]
trials = {trials}
seed = 0
pruner = "none"
"optim.lr" = {{ low = 1e-4, high = 1e-2, log = true }}
"algorithm.inner_steps" = {{ choices = [1, 2] }}
"""


def run_study(workers: int, config: Path, folder: Path, storage: str) -> float:
    """Wall seconds for ``workers`` processes to finish the study in ``folder`` on ``storage``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fastadapt", "tune", str(config), "--dir", str(folder), "--storage", storage]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed ({p.returncode}): {err.strip()[-2000:]}")
    return time.perf_counter() - start


def fresh_storage(storage: str | None, scratch: Path, tag: str) -> str:
    """An empty study store for one run: a new SQLite file, or (a server) the same database, the study named anew."""
    return storage or f"sqlite:///{scratch / f'{tag}.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="meta-steps of every trial")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storage", help="a database URL (default: a new SQLite file per run)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    from fastadapt.runtime.hardware import cpu_info

    info = cpu_info()
    load_before = os.getloadavg()
    print(f"cpu: {info['model']} ({', '.join(info['flags'])}); {os.cpu_count()} logical CPUs")
    print(f"load average before: {load_before}")
    walls: dict[int, list[float]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory(prefix="fastadapt-workers-") as tmp:
        scratch = Path(tmp)
        config = scratch / "study.toml"
        config.write_text(STUDY.format(steps=args.steps, trials=args.trials))
        for r in range(args.rounds):
            for w in args.workers:
                tag = f"r{r}-w{w}"  # the study's name is the tune folder's: a new one each run
                wall = run_study(w, config, scratch / tag, fresh_storage(args.storage, scratch, tag))
                walls[w].append(wall)
                print(f"round {r + 1}: {w} worker(s): {wall:.1f} s (load average {os.getloadavg()[0]:.2f})")
    load_after = os.getloadavg()
    base = statistics.median(walls[args.workers[0]])
    summary = {w: {"median_s": statistics.median(v), "runs_s": v} for w, v in walls.items()}
    print(f"load average after: {load_after}")
    for w, s in summary.items():
        s["ratio_to_first"] = s["median_s"] / base
        print(f"{w} worker(s): median {s['median_s']:.1f} s, {s['ratio_to_first']:.2f}x of {args.workers[0]}")
    if args.out:
        record = {"cpu": info, "logical_cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
                  "trials": args.trials, "steps": args.steps, "rounds": args.rounds, "workers": summary}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
