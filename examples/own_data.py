"""Train ProtoNets from Python on your own data, registered as a task source.

Your data is any tensor of images with integer class labels (here: 16 classes of random 1x16x16
patterns, drawn with noise); `register_task_source` makes it `data.dataset = "patterns"`, and the
one training loop does the rest (validation, checkpoints, the test with a 95% confidence interval).

    python examples/own_data.py            # ~1 minute on 2 CPU cores
    python examples/own_data.py --fast     # a few seconds (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse

import torch

import fastadapt


def noisy_patterns(request: fastadapt.SourceRequest) -> fastadapt.ClassDataset:
    """16 classes of 1x16x16 patterns, 12 noisy drawings each; other classes for each part (train, val, test)."""
    seed = {"train": 0, "val": 1, "test": 2}[request.part]
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(16, 1, 16, 16, generator=g)
    x = patterns.repeat_interleave(12, 0) + 0.3 * torch.randn(16 * 12, 1, 16, 16, generator=g)
    y = torch.arange(16).repeat_interleave(12)
    return fastadapt.ClassDataset.from_arrays(x, y, name=f"patterns-{request.part}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--out", default="runs/example-own-data")
    args = parser.parse_args()

    fastadapt.register_task_source("patterns", noisy_patterns)
    cfg = fastadapt.config_from_dict(
        {
            "data": {
                "dataset": "patterns",
                "ways": 4,
                "shots": 1,
                "queries": 3,
                "meta_batch": 4,
                "image_size": 16,
                "augment": ["flip", "shift"],
            },
            "model": {"name": "conv4", "hidden": 8 if args.fast else 32},
            "algorithm": {"name": "protonet"},
            "optim": {"steps": 4 if args.fast else 300},
            "eval": {
                "val_every": 2 if args.fast else 100,
                "val_episodes": 10,
                "test_episodes": 20 if args.fast else 500,
            },
            "run": {"out": args.out, "progress": False, "loggers": ["jsonl", "csv"]},
        }
    )
    result = fastadapt.train(cfg, resume=False)
    print(f"4-way 1-shot on new patterns: {result.tests['4w1s'].summary()}")
    print(f"metrics: {cfg.out_dir / 'metrics.jsonl'} and {cfg.out_dir / 'metrics.csv'}")


if __name__ == "__main__":
    main()
