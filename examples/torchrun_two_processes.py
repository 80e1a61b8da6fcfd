"""Meta-train on two processes with torchrun: the same script, the same `fastadapt.train`, one global batch.

Under `torchrun` every process runs this file; `fastadapt.train` joins the process group torchrun describes
(gloo on CPU, NCCL on CUDA), each rank takes its share of the meta-batch's tasks, the meta-gradients are
all-reduced, and rank 0 alone writes the run folder and prints. The result equals one process with the same
global batch (docs/DISTRIBUTED.md; tests/test_distributed.py checks it to 1e-6). Run it either way:

    torchrun --standalone --nproc-per-node 2 examples/torchrun_two_processes.py --fast
    python examples/torchrun_two_processes.py --fast     # starts that torchrun command for you

The command line does the same: `torchrun --standalone --nproc-per-node 2 --no-python fastadapt train protonet-quick`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import fastadapt
from fastadapt.runtime import distributed


def launch_torchrun(argv: list[str], processes: int = 2) -> int:
    """Run this script under ``torchrun --standalone --nproc-per-node processes`` (``python -m torch.distributed.run``)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        __file__,
        *argv,
    ]
    print("running: " + " ".join(command[2:]).replace("torch.distributed.run", "torchrun", 1), flush=True)
    return subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    ).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--out", default="runs/example-torchrun")
    args = parser.parse_args()
    if distributed.env_world_size() == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # not under torchrun: start it
        sys.exit(launch_torchrun(sys.argv[1:]))

    cfg = fastadapt.load_config(
        "protonet-quick",
        [
            f"optim.steps={4 if args.fast else 600}",
            "data.meta_batch=4",
            f"model.hidden={8 if args.fast else 64}",
            f"eval.val_every={0 if args.fast else 200}",
            f"eval.test_episodes={10 if args.fast else 600}",
            f"run.out={args.out}",
            "run.progress=false",
            "run.threads=1",
        ],
    )
    result = fastadapt.train(cfg, resume=False)
    if distributed.is_main():  # every rank has the result; one prints it
        print(
            f"rank {distributed.rank()} of {distributed.env_world_size()} processes, {result.steps} steps: "
            f"5-way 1-shot {result.tests['5w1s'].summary()}"
        )


if __name__ == "__main__":
    main()
