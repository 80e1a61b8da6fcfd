"""Train ProtoNets on your own image folder: `data.dataset = "folder:DIR"`, one subfolder per class.

The folder holds `DIR/train/<class>/<image>`, `DIR/val/<class>/<image>` and `DIR/test/<class>/<image>`
(PNG, JPEG, ...; any size, resized to `data.image_size`; grey or colour). Each part has its own classes:
the test tasks are made of classes never seen in training. Without `--folder`, this script first writes
such a folder of small coloured PNG patterns (with Pillow) to show the layout, then trains on it with
random crops and colour jitter (`data.augment`). The same from the command line:

    fastadapt train protonet-quick data.dataset=folder:DIR data.ways=5 data.image_size=32

    python examples/own_image_folder.py                      # writes the folder, then 300 steps (not timed yet)
    python examples/own_image_folder.py --folder DIR         # your images
    python examples/own_image_folder.py --fast               # ~5 s (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import fastadapt

PARTS = {"train": 12, "val": 5, "test": 6}  # classes per part in the folder written here


def write_folder(root: Path, size: int = 20, per_class: int = 8, seed: int = 0) -> Path:
    """``root/<part>/<class>/<i>.png``: each class a random coloured 5x5 pattern scaled up, each image a noisy, shifted copy."""
    rng = np.random.default_rng(seed)
    for part, classes in PARTS.items():
        for c in range(classes):
            folder = root / part / f"{part}-{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            pattern = rng.random((5, 5, 3)) * rng.random(3)  # a pattern in its own colours
            big = np.kron(pattern, np.ones((size // 5 + 1, size // 5 + 1, 1)))[:size, :size]
            for i in range(per_class):
                img = np.roll(big, rng.integers(-2, 3, 2), axis=(0, 1)) + 0.1 * rng.standard_normal(big.shape)
                Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8), "RGB").save(folder / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folder", help="your image folder (DIR/train|val|test/<class>/<image>); default: write a small one"
    )
    parser.add_argument("--fast", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--out", default="runs/example-image-folder")
    args = parser.parse_args()

    folder = Path(args.folder) if args.folder else write_folder(Path(args.out).parent / f"{Path(args.out).name}-images")
    print(f"image folder: {folder}")
    cfg = fastadapt.config_from_dict(
        {
            "data": {
                "dataset": f"folder:{folder}",
                "ways": 5,
                "shots": 1,
                "queries": 3,
                "meta_batch": 2 if args.fast else 4,
                "image_size": 16 if args.fast else 32,
                "augment": ["crop", "jitter"],
            },
            "model": {"name": "conv4", "hidden": 8 if args.fast else 32},
            "algorithm": {"name": "protonet"},
            "optim": {"steps": 3 if args.fast else 300},
            "eval": {
                "val_every": 0 if args.fast else 100,
                "val_episodes": 20,
                "test_episodes": 10 if args.fast else 300,
            },
            "run": {"out": args.out, "progress": False},
        }
    )
    result = fastadapt.train(cfg, resume=False)
    print(f"5-way 1-shot on the folder's test classes: {result.tests['5w1s'].summary()}")


if __name__ == "__main__":
    main()
