"""Your own backbone, pretrained, saved to safetensors, loaded with `model.weights` and fine-tuned with ProtoNets.

1. Your backbone: any `nn.Module`; `register_model` makes it `model.name = "small-cnn"` (its factory names
   the arguments it takes: `in_channels`, `out_features` (None: an embedding), `hidden`, ...).
2. Pretraining: plain supervised classification of 64 Omniglot training characters with a linear head
   (the "pretrain, then meta-train" recipe), in a few lines of ordinary PyTorch.
3. The encoder's weights (the head left out) go to a `.safetensors` file with `fastadapt.save_safetensors`;
   any safetensors or torch state-dict file of the same names and shapes works, wherever it was trained.
4. `model.weights = "<file>"` loads them (strictly: every name and shape must match; the head may be missing)
   before ProtoNets fine-tunes the backbone on 5-way 1-shot episodes. The full mode also trains the same
   backbone from scratch for comparison.

    python examples/pretrained_backbone.py            # 400 + 2 x 200 steps (not timed yet)
    python examples/pretrained_backbone.py --fast     # ~5 s (what tests/test_examples.py runs)

The same fine-tuning from the command line: `fastadapt train protonet-quick model.weights=encoder.safetensors`
(with a registered or `model.target` backbone whose names match the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fastadapt


class SmallConvNet(nn.Module):
    """Three conv-BatchNorm-ReLU-pool blocks and a global average: ``[B, C, S, S]`` -> ``[B, hidden]``
    (``[B, out_features]`` with a linear head)."""

    def __init__(self, in_channels: int, hidden: int = 32, out_features: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(hidden, out_features) if out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        return z if self.head is None else self.head(z)


def small_cnn(in_channels: int, out_features: int | None, hidden: int = 32) -> SmallConvNet:
    """The factory `register_model` calls with the arguments it names (here from the task source and `model.hidden`)."""
    return SmallConvNet(in_channels, hidden, out_features)


def pretrain(hidden: int, steps: int, classes: int = 64, batch: int = 64, seed: int = 0) -> SmallConvNet:
    """Supervised pretraining on ``classes`` Omniglot training characters (all 20 drawings each); returns the trained model."""
    data = fastadapt.load_omniglot("vinyals", "train").subset(range(classes))
    x = data.data.to(torch.float32) / 255.0  # [classes * 20, 1, 28, 28], ink = 1
    y = torch.repeat_interleave(torch.arange(classes), data.counts)
    torch.manual_seed(seed)
    model = small_cnn(1, classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.eval()
        accuracy = float((model(x).argmax(-1) == y).float().mean())
        model.train()
    print(f"pretrained {steps} steps on {classes} characters: training accuracy {accuracy:.2f}")
    return model


def fine_tune(out: Path, hidden: int, steps: int, fast: bool, weights: str) -> fastadapt.EvalResult:
    cfg = fastadapt.config_from_dict(
        {
            "data": {
                "dataset": "omniglot",
                "ways": 5,
                "shots": 1,
                "queries": 2 if fast else 5,
                "meta_batch": 2 if fast else 8,
            },
            "model": {"name": "small-cnn", "hidden": hidden, "weights": weights},
            "algorithm": {"name": "protonet"},
            "optim": {"steps": steps, "lr": 1e-3},
            "eval": {"val_every": 0, "test_episodes": 10 if fast else 300},
            "run": {"out": str(out), "progress": False},
        }
    )
    return fastadapt.train(cfg, resume=False).tests["5w1s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--out", default="runs/example-pretrained")
    args = parser.parse_args()
    out = Path(args.out)
    hidden, pre_steps, steps = (16, 5, 3) if args.fast else (64, 400, 200)

    fastadapt.register_model("small-cnn", small_cnn, "examples/pretrained_backbone.py: 3 conv blocks + global average")
    model = pretrain(hidden, pre_steps)
    encoder = {
        k: v for k, v in model.state_dict().items() if not k.startswith("head.")
    }  # the head was for the 64 classes
    out.parent.mkdir(parents=True, exist_ok=True)
    path = fastadapt.save_safetensors(
        encoder, out.parent / f"{out.name}-encoder.safetensors", metadata={"pretrained": "omniglot-64"}
    )
    print(f"saved {len(encoder)} tensors to {path}")

    result = fine_tune(out, hidden, steps, args.fast, str(path))
    print(f"ProtoNets from the pretrained backbone, Omniglot 5-way 1-shot: {result.summary()}")
    if not args.fast:
        scratch = fine_tune(out.parent / f"{out.name}-scratch", hidden, steps, args.fast, "")
        print(f"the same from scratch: {scratch.summary()}")


if __name__ == "__main__":
    main()
