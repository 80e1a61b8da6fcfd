"""Load a trained run and adapt it to a new task: a few labelled examples in, predictions out.

`fastadapt.load_run(path)` gives the run's config and its trained algorithm; `adapt(support_x,
support_y)` returns a predictor for that one task (the algorithm itself is never changed), and the
predictor maps query images to logits. The run here is trained first (a short ProtoNet on the bundled
Omniglot); point `--run` at one of yours, or at a `fastadapt export RUN` folder, to skip that.

    python examples/adapt_predict.py                 # trains ~1 minute, then adapts
    python examples/adapt_predict.py --fast          # a few seconds
    python examples/adapt_predict.py --run runs/protonet-quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fastadapt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run folder (or an export folder); default: train a small one first")
    parser.add_argument("--fast", action="store_true", help="a few training steps: checks that it runs")
    parser.add_argument("--out", default="runs/example-adapt")
    args = parser.parse_args()

    path = Path(args.run) if args.run else Path(args.out)
    if not args.run:
        steps = 3 if args.fast else 200
        fastadapt.train(
            "protonet-quick",
            [
                f"optim.steps={steps}",
                "model.hidden=16" if args.fast else "model.hidden=64",
                "eval.val_every=0",
                "eval.test_episodes=0",
                f"run.out={path}",
                "run.progress=false",
            ],
            resume=False,
        )
    run = fastadapt.load_run(path)
    print(f"loaded {run.config.algorithm} from {path} ({run.weights}, step {run.step})")

    # A new task: 5 characters the run never saw (Omniglot's test part), 1 example each to learn from.
    size = run.config.data.image_size
    task = fastadapt.EpisodeSampler(fastadapt.load_omniglot("vinyals", "test"), 5, 1, 4, seed=7).sample(1).task(0)
    if task.support_x.shape[-1] != size:
        task = fastadapt.Episode(
            *(
                torch.nn.functional.interpolate(v, size=size, mode="bilinear", antialias=True) if v.ndim == 4 else v
                for v in (task.support_x, task.support_y, task.query_x, task.query_y)
            )
        )
    predictor = run.algorithm.adapt(task.support_x, task.support_y)
    with torch.no_grad():
        predicted = predictor(task.query_x).argmax(-1)
    accuracy = float((predicted == task.query_y).float().mean())
    print(f"predicted {predicted.tolist()}\n     true {task.query_y.tolist()}\naccuracy {accuracy:.2f}")


if __name__ == "__main__":
    main()
