"""Online adaptation on a stream whose task changes over time, test-then-train (`fastadapt.online`).

A GrBAL learner is meta-trained on windows of drifting, switching sinusoid streams; then, on a new
stream, at every step the predictor first predicts the step's points (the error is recorded: data it
has not seen) and then learns from them. The same learner without updates is the baseline.

    python examples/streaming.py            # ~1 minute
    python examples/streaming.py --fast     # a few seconds
"""

from __future__ import annotations

import argparse

import numpy as np

import fastadapt
from fastadapt.data.streams import sinusoid_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps and a short stream: checks that it runs")
    parser.add_argument("--out", default="runs/example-stream")
    args = parser.parse_args()

    length, phase = (40, 10) if args.fast else (400, 100)
    cfg = fastadapt.load_config(
        "grbal-sinusoid-stream",
        [
            f"optim.steps={5 if args.fast else 1500}",
            "eval.val_every=0",
            "eval.test_episodes=0",
            "data.meta_batch=25",
            f"data.options={{ length = {length}, phase_length = {phase} }}",
            f"run.out={args.out}",
            "run.progress=false",
        ],
    )
    fastadapt.train(cfg, resume=False)
    algo = fastadapt.load_run(args.out).algorithm

    request = fastadapt.SourceRequest(
        "test", 1, cfg.data.shots, cfg.data.queries, seed=99, options=dict(cfg.data.options)
    )
    stream = sinusoid_stream(request).stream(0)
    adapting = fastadapt.online(algo, stream, probe=False)
    frozen = fastadapt.online(algo, stream, update=False, probe=False)
    print(f"{stream.length} steps, changes at {list(stream.change_points)}")
    print(
        f"mean squared error, adapting online: {np.nanmean(adapting.error):.3f}; without adapting: {np.nanmean(frozen.error):.3f}"
    )


if __name__ == "__main__":
    main()
