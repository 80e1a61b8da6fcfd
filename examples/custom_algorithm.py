"""Your own algorithm, by registration: one class keeping the contract, then the one training loop.

The class is an `nn.Module` built as `Cls(model, **options)`, with `meta_loss(batch)` (a differentiable
loss over the batch's tasks), `adapt(support_x, support_y)` (a predictor for one task, the module left
unchanged) and `predict(batch)`. Its constructor's keyword arguments become the keys of `[algorithm]`.
Here: nearest class mean under a scaled cosine similarity.

    python examples/custom_algorithm.py            # ~1 minute
    python examples/custom_algorithm.py --fast     # a few seconds
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import fastadapt


def cosine_logits(zs: torch.Tensor, sy: torch.Tensor, zq: torch.Tensor, ways: int, scale: float) -> torch.Tensor:
    """``scale * cos(query, class mean)``: ``zs [S, D]``, ``sy [S]``, ``zq [Q, D]`` -> ``[Q, ways]``."""
    means = F.normalize(F.one_hot(sy, ways).T.to(zs.dtype) @ zs, dim=-1)
    return scale * F.normalize(zq, dim=-1) @ means.T


class CosineNearestMean(nn.Module):
    """Nearest class mean under scaled cosine similarity (a minimal metric-based learner)."""

    needs_head = False  # the model is an embedding
    encodes_meta_batch = False  # meta_loss encodes task by task

    def __init__(self, model: nn.Module, scale: float = 10.0) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def _task_logits(self, sx, sy, qx, ways):
        return cosine_logits(self.model(sx), sy, self.model(qx), ways, self.scale)

    def meta_loss(self, batch: fastadapt.TaskBatch) -> fastadapt.MetaOutput:
        logits = torch.stack(
            [
                self._task_logits(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.ways)
                for t in range(len(batch))
            ]
        )
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        acc = float((logits.argmax(-1) == batch.query_y).float().mean())
        return fastadapt.MetaOutput(loss, {"loss": float(loss.detach()), "acc": acc})

    def adapt(self, support_x, support_y):
        ways = int(support_y.max()) + 1
        zs = self.model(support_x)
        return lambda query_x: cosine_logits(zs, support_y, self.model(query_x), ways, self.scale)

    def predict(self, batch: fastadapt.TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(
                [self.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]) for t in range(len(batch))]
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--out", default="runs/example-cosine")
    args = parser.parse_args()

    fastadapt.register_algorithm("cosine-mean", CosineNearestMean)
    cfg = fastadapt.config_from_dict(
        {
            "data": {
                "dataset": "omniglot",
                "ways": 5,
                "shots": 1,
                "queries": 2 if args.fast else 5,
                "meta_batch": 2 if args.fast else 8,
            },
            "model": {"name": "conv4", "hidden": 8 if args.fast else 32},
            "algorithm": {"name": "cosine-mean", "scale": 5.0},
            "optim": {"steps": 3 if args.fast else 200},
            "eval": {"val_every": 0, "test_episodes": 10 if args.fast else 300},
            "run": {"out": args.out, "progress": False},
        }
    )
    result = fastadapt.train(cfg, resume=False)
    print(f"cosine nearest mean, Omniglot 5-way 1-shot: {result.tests['5w1s'].summary()}")


if __name__ == "__main__":
    main()
