"""Converters into a ClassDataset (fastadapt.data.convert): any map-style dataset (``from_dataset``, its fast
path over ``data`` and ``targets``) and image folders (``from_folder``), each error one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastadapt
from fastadapt import ClassDataset
from helpers import QUICK, one_line_error

# --- any map-style dataset ----------------------------------------------------------------------------


class Items(torch.utils.data.Dataset):
    """A map-style dataset over a list of items, as a user would write one."""

    def __init__(self, items):
        self.items = items
        self.calls = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.calls += 1
        return self.items[i]


def random_pil(rng, mode: str, size=(6, 5)) -> Image.Image:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_from_dataset_of_pil_images_follows_the_folder_rule(tmp_path):
    rng = np.random.default_rng(3)
    items = [(random_pil(rng, "RGB" if i % 3 == 0 else "L"), i % 2) for i in range(8)]
    data = ClassDataset.from_dataset(Items(items), name="pil")
    for c in range(2):
        d = tmp_path / "imgs" / str(c)
        d.mkdir(parents=True)
        for i, (im, label) in enumerate(items):
            if label == c:
                im.save(d / f"{i:02d}.png")
    folder = ClassDataset.from_folder(tmp_path / "imgs")
    assert data.example_shape == (3, 5, 6) and data.data.dtype == torch.uint8  # one colour image: all RGB
    assert torch.equal(data.data, folder.data) and data.names == folder.names == ("0", "1")
    grey = ClassDataset.from_dataset(Items(items), channels=1, size=(4, 4))
    assert torch.equal(grey.data, ClassDataset.from_folder(tmp_path / "imgs", size=(4, 4), channels=1).data)
    only_grey = ClassDataset.from_dataset(Items([p for p in items if p[0].mode == "L"]))
    assert only_grey.example_shape == (1, 5, 6)


def test_from_dataset_of_chw_float_tensors_keeps_floats_and_converts_channels_by_luma():
    g = torch.Generator().manual_seed(0)
    rgb = [torch.rand(3, 7, 7, generator=g) for _ in range(6)]
    items = [(x, torch.tensor(i % 3)) for i, x in enumerate(rgb)]
    data = ClassDataset.from_dataset(Items(items))
    assert data.data.dtype == torch.float32 and data.example_shape == (3, 7, 7) and data.counts.tolist() == [2, 2, 2]
    assert torch.equal(data.examples(1), torch.stack([rgb[1], rgb[4]]))
    grey = ClassDataset.from_dataset(Items(items), channels=1)
    expected = 0.299 * rgb[2][0] + 0.587 * rgb[2][1] + 0.114 * rgb[2][2]
    torch.testing.assert_close(grey.examples(2)[0, 0], expected)
    hwc = ClassDataset.from_dataset(
        Items([(x.permute(1, 2, 0).numpy().astype(np.float64), i % 3) for i, x in enumerate(rgb)])
    )
    assert torch.equal(hwc.data, data.data)


def test_from_dataset_of_dict_items_finds_the_image_and_label_keys_and_hugging_face_class_names():
    rng = np.random.default_rng(4)

    class ClassLabel:
        names = ["cat", "dog", "eel"]

    class HFLike(Items):
        features = {"label": ClassLabel()}

    items = [{"id": f"x{i}", "image": random_pil(rng, "L"), "label": i % 3} for i in range(9)]
    data = ClassDataset.from_dataset(HFLike(items), name="hf")
    assert data.names == ("cat", "dog", "eel") and data.counts.tolist() == [3, 3, 3] and data.example_shape == (1, 5, 6)
    np.testing.assert_array_equal(data.examples(1)[0, 0].numpy(), np.asarray(items[1]["image"]))
    two_ints = [{"img": np.asarray(d["image"]), "index": i, "fine": np.int64(i % 3)} for i, d in enumerate(items)]
    assert ClassDataset.from_dataset(Items(two_ints)).num_classes == 9  # the first integer is the label by default
    chosen = ClassDataset.from_dataset(Items(two_ints), label_key="fine")
    assert chosen.num_classes == 3 and torch.equal(chosen.data, data.data)
    msg = one_line_error(ClassDataset.from_dataset, Items(two_ints), name="ds", image_key="picture")
    assert "ds[0] is a dict with no key 'picture'; pass image_key=" in msg


class MNISTLike(torch.utils.data.Dataset):
    """What torchvision's MNIST holds: uint8 data [N, H, W], integer targets, class names; PIL items."""

    def __init__(self, n=40, transform=None, bias=0):
        g = torch.Generator().manual_seed(5)
        self.data = torch.randint(0, 256, (n, 6, 6), dtype=torch.uint8, generator=g)
        self.targets = torch.randint(0, 4, (n,), generator=g)
        self.classes = ["0 - zero", "1 - one", "2 - two", "3 - three"]
        self.transform, self.bias, self.calls = transform, bias, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        im = Image.fromarray((self.data[i] + self.bias).numpy(), mode="L")
        return (self.transform(im) if self.transform else im), int(self.targets[i])


class OnlyItems(torch.utils.data.Dataset):
    """``ds`` seen through len() and [i] alone: no fast path."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


@pytest.mark.parametrize("kwargs", [{}, {"max_per_class": 3}, {"channels": 3}, {"size": (4, 4)}])
def test_from_dataset_fast_path_over_data_and_targets_equals_reading_every_item(kwargs):
    ds = MNISTLike()
    fast = ClassDataset.from_dataset(ds, name="m", **kwargs)
    slow = ClassDataset.from_dataset(OnlyItems(ds), name="m", **kwargs)
    assert torch.equal(fast.data, slow.data) and torch.equal(fast.offsets, slow.offsets)
    assert fast.data.dtype == slow.data.dtype and fast.names[0] == "0 - zero" and slow.names[0] == "0"
    if kwargs in ({}, {"max_per_class": 3}):
        assert ds.calls == 1 + len(ds)  # the fast path read item 0 only (the slow one read all)
    if kwargs == {"max_per_class": 3}:
        assert fast.counts.tolist() == [3, 3, 3, 3]
        first = [int(np.flatnonzero(ds.targets.numpy() == c)[0]) for c in range(4)]
        assert [bool(torch.equal(fast.examples(c)[0, 0], ds.data[first[c]])) for c in range(4)] == [True] * 4


def test_from_dataset_reads_items_when_a_transform_or_the_items_disagree_with_data():
    flipped = MNISTLike(transform=lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    out = ClassDataset.from_dataset(flipped)
    assert flipped.calls == len(flipped)
    assert torch.equal(out.data, ClassDataset.from_dataset(OnlyItems(flipped)).data)
    shifted = MNISTLike(bias=1)  # items differ from .data: read every item
    out = ClassDataset.from_dataset(shifted)
    assert torch.equal(out.data, ClassDataset.from_dataset(OnlyItems(shifted)).data)
    cifar = Items([(np.zeros((4, 4, 3), np.uint8), 0)])
    cifar.data, cifar.targets = (
        np.random.default_rng(6).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8),
        [i % 2 for i in range(10)],
    )
    cifar.items = [(Image.fromarray(a), t) for a, t in zip(cifar.data, cifar.targets)]
    fast = ClassDataset.from_dataset(cifar)
    assert cifar.calls == 1 and fast.example_shape == (3, 4, 4)
    assert torch.equal(fast.data, ClassDataset.from_dataset(OnlyItems(cifar)).data)


@pytest.mark.parametrize(
    "items,expected",
    [
        ([(np.zeros((4, 4), np.uint8), 0), 7], "ds[1] is a int; need an (image, label) pair"),
        ([(np.zeros((4, 4), np.uint8), 0, "extra")], "ds[0] is a tuple; need an (image, label) pair"),
        (
            [(np.zeros((4, 4), np.uint8), 0), ("a picture", 1)],
            "ds[1]: image is a str; need a PIL image, a numpy array or a torch tensor",
        ),
        ([(np.zeros((4, 4), np.uint8), 1.0)], "ds[0]: label 1.0 is a float; need an integer class label"),
        (
            [(np.zeros((4, 4), np.uint8), 0), (np.zeros((4, 4), np.uint8), torch.tensor(1.0))],
            "ds[1]: label tensor(1.) is a Tensor",
        ),
        ([(np.zeros((4, 4), np.uint8), True)], "ds[0]: label True is a bool"),
        ([(np.zeros((6, 6, 5), np.uint8), 0)], "ds[0]: image has shape [6, 6, 5]; need HxW, HxWxC or CxHxW"),
        (
            [(np.zeros((4, 4), np.uint8), 0), (np.zeros((5, 4), np.uint8), 1)],
            "ds[1] is 5x4, earlier images are 4x4; pass size=(H, W)",
        ),
        (
            [(np.zeros((4, 4), np.uint8), 0), (np.zeros((4, 4), np.float32), 1)],
            "ds[1] is a float32 image, earlier ones are uint8",
        ),
        ([(np.full((4, 4), 300, np.int64), 0)], "ds[0]: image is int64; need uint8, floats, or integers in 0..255"),
        (
            [{"image": np.zeros((4, 4), np.uint8), "label": "cat"}],
            "ds[0] is a dict with no label in keys image, label; pass label_key=",
        ),
        ([], "ds holds no examples"),
    ],
)
def test_from_dataset_on_bad_items_is_a_one_line_error_naming_the_index(items, expected):
    msg = one_line_error(ClassDataset.from_dataset, Items(items), name="ds")
    assert expected in msg


def test_from_dataset_resizes_mixed_sizes_and_refuses_what_is_not_a_dataset():
    items = [(np.full((4, 4), 9, np.uint8), 0), (np.full((6, 5), 9, np.uint8), 1)]
    data = ClassDataset.from_dataset(items, size=(3, 3))
    assert data.example_shape == (1, 3, 3) and int(data.data.min()) == int(data.data.max()) == 9
    assert "has no len() and [index]" in one_line_error(ClassDataset.from_dataset, iter(items))
    assert "channels=2 is invalid" in one_line_error(ClassDataset.from_dataset, items, channels=2)


def test_a_dataset_from_from_dataset_trains_through_fastadapt_train(tmp_path):
    ds = MNISTLike(n=60)
    cfg = fastadapt.load_config(
        "protonet-quick",
        [
            "data.ways=3",
            "data.test_ways=3",
            "data.image_size=16",
            "model.hidden=8",
            "optim.steps=2",
            "eval.val_every=0",
            "eval.test_episodes=2",
            f"run.out={tmp_path / 'run'}",
            "run.progress=false",
            *QUICK,
        ],
    )
    data = ClassDataset.from_dataset(ds)
    result = fastadapt.train(cfg, tasks={"train": data, "test": data})
    assert 0.0 <= result.tests["3w1s"].mean <= 1.0


# --- folder hardening ---------------------------------------------------------------------------------


def two_classes(root: Path, side: int = 20) -> Path:
    rng = np.random.default_rng(7)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "limit", [150, 300]
)  # 400 pixels: over twice the limit (Pillow raises), over it (Pillow warns)
@pytest.mark.parametrize("channels", [None, 1])  # None reads every header first
def test_an_image_over_pillows_decompression_bomb_limit_is_a_one_line_error(tmp_path, monkeypatch, limit, channels):
    root = two_classes(tmp_path / "imgs")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    msg = one_line_error(ClassDataset.from_folder, root, channels=channels)
    assert f"image {root / 'a' / '0.png'} is too large for Pillow" in msg and "PIL.Image.MAX_IMAGE_PIXELS" in msg
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    assert ClassDataset.from_folder(root, channels=channels).num_classes == 2


def test_an_image_folder_needs_two_classes_and_decodable_images(tmp_path):
    root = two_classes(tmp_path / "imgs")
    (root / "a" / "notes.txt").write_text("skipped by its suffix")
    assert ClassDataset.from_folder(root).counts.tolist() == [2, 2]
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    (root / "a" / "0.png").replace(one / "only" / "0.png")
    msg = one_line_error(ClassDataset.from_folder, one)
    assert "has one class subfolder (only); episodes need at least 2 classes" in msg
    (root / "b" / "fake.png").write_text("not an image")
    msg = one_line_error(ClassDataset.from_folder, root, channels=1)
    assert f"cannot read image {root / 'b' / 'fake.png'}" in msg
