"""A user's data as a task source: IDX files, Fashion-MNIST, a folder of IDX files (map-style datasets and
image folders: test_convert.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.config.build import task_sources
from fastadapt.data import load_fashion_mnist, load_idx, read_idx
from fastadapt.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files
from helpers import QUICK, needs_package, one_line_error

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """``a`` in the IDX format: two zero bytes, the type code, the dimensions, big-endian sizes and data."""
    head = bytes([0, 0, IDX_CODES[a.dtype.type], a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


# --- the IDX reader ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_read_idx_returns_the_written_array_for_every_type_plain_and_gzipped(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    a = (
        (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
        if np.dtype(dtype).kind == "f"
        else rng.integers(-100 if np.dtype(dtype).kind == "i" else 0, 100, (3, 4, 5)).astype(dtype)
    )
    path = write_idx(tmp_path / f"x-idx3{suffix}", a)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, a)


def header(kind: int, dims: list[int]) -> bytes:
    return bytes([0, 0, kind, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"\x01\x00\x08\x01" + bytes(8), "starts with bytes 0100, not 0000"),
        (header(0x07, [4]) + bytes(4), "type code 0x07 is none of"),
        (header(0x08, []), "gives 0 dimensions"),
        (b"\x00\x00", "fewer than the 4-byte header"),
        (header(0x08, [2, 3])[:8], "header needs 12 bytes, found 8"),
        (header(0x08, [10]) + bytes(7), "truncated: shape [10] of uint8 needs 10 data bytes, found 7"),
        (header(0x0D, [2, 2]) + bytes(15), "needs 16 data bytes, found 15"),
        (header(0x08, [10]) + bytes(12), "2 bytes of trailing garbage after the 10 data bytes"),
    ],
)
def test_read_idx_on_a_bad_file_is_a_one_line_error_naming_the_file_and_the_fix(tmp_path, content, expected):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    msg = one_line_error(read_idx, path)
    assert expected in msg and str(path) in msg
    assert "download it again" in msg or "pass an IDX file" in msg
    gz = tmp_path / "bad-idx.gz"  # the same problems inside a valid gzip stream
    gz.write_bytes(gzip.compress(content))
    assert expected in one_line_error(read_idx, gz)


def test_read_idx_on_a_missing_file_or_a_corrupt_gzip_is_a_one_line_error(tmp_path):
    assert "does not exist" in one_line_error(read_idx, tmp_path / "nope.gz")
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    msg = one_line_error(read_idx, cut)
    assert "is a corrupt gzip file" in msg and str(cut) in msg and "download it again" in msg
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # the CRC
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(bytes(flipped))
    assert "corrupt gzip" in one_line_error(read_idx, bad_crc)


def test_load_idx_groups_images_by_label_as_uint8_nchw(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 5, 6), dtype=np.uint8)
    y = np.array([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 0], dtype=np.uint8)
    data = load_idx(write_idx(tmp_path / "im.gz", x), write_idx(tmp_path / "lab", y), class_names=["a", "b", "c"])
    assert data.data.dtype == torch.uint8 and data.example_shape == (1, 5, 6)
    assert data.names == ("a", "b", "c") and data.counts.tolist() == [4, 3, 5]
    for c in range(3):
        np.testing.assert_array_equal(data.examples(c)[:, 0].numpy(), x[y == c])  # dataset order kept within a class
    assert data.name == "im"
    rgb = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    colour = load_idx(
        write_idx(tmp_path / "rgb", rgb), write_idx(tmp_path / "l4", np.array([0, 1, 0, 1], dtype=np.int32)), name="rgb"
    )
    assert colour.example_shape == (3, 5, 6)
    np.testing.assert_array_equal(colour.examples(1).numpy(), rgb[[1, 3]].transpose(0, 3, 1, 2))
    floats = load_idx(write_idx(tmp_path / "f", x.astype(np.float64) / 255), tmp_path / "lab")
    assert floats.data.dtype == torch.float32


def test_load_idx_with_mismatched_files_is_a_one_line_error(tmp_path):
    x = write_idx(tmp_path / "im", np.zeros((5, 4, 4), dtype=np.uint8))
    msg = one_line_error(load_idx, x, write_idx(tmp_path / "lab", np.zeros(4, dtype=np.uint8)))
    assert "hold 5 examples but labels" in msg and "hold 4" in msg
    assert "need [N] integers" in one_line_error(
        load_idx, x, write_idx(tmp_path / "flab", np.zeros(5, dtype=np.float32))
    )
    assert "need [N, H, W]" in one_line_error(
        load_idx, write_idx(tmp_path / "v", np.zeros((5, 4), dtype=np.uint8)), tmp_path / "lab"
    )
    assert "integer images must lie in 0..255" in one_line_error(
        load_idx, write_idx(tmp_path / "big", np.full((4, 2, 2), 300, dtype=np.int16)), tmp_path / "lab"
    )


# --- Fashion-MNIST from Debian's dataset-fashion-mnist ---------------------------------------------------

needs_fashion = needs_package("dataset-fashion-mnist")


@needs_fashion
def test_fashion_mnist_from_the_debian_package_has_the_official_sizes_classes_and_labels():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert (len(train.data), len(test.data)) == (60000, 10000)
    assert train.names == test.names == FASHION_MNIST_CLASSES
    assert train.counts.tolist() == [6000] * 10 and test.counts.tolist() == [1000] * 10
    assert train.example_shape == test.example_shape == (1, 28, 28) and train.data.dtype == torch.uint8
    raw = read_idx(idx_files(FASHION_MNIST_DIR, "train")[1])
    assert raw[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the first training item is an ankle boot
    assert read_idx(idx_files(FASHION_MNIST_DIR, "test")[1])[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert int(train.data.sum(dtype=torch.int64)) == 3431114169


def test_fashion_mnist_missing_is_a_one_line_error_saying_how_to_install_it(tmp_path):
    msg = one_line_error(load_fashion_mnist, "train", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path) in msg and "root=" in msg
    assert "choose one of train, test" in one_line_error(load_fashion_mnist, "val", root=tmp_path)


@needs_fashion
def test_fashion_mnist_task_source_gives_5_way_tasks_of_28x28_grey_images():
    cfg = fastadapt.load_config(
        "protonet-quick",
        [
            "data.dataset=fashion-mnist",
            "data.train_part=train",
            "data.test_part=test",
            'data.val_part=""',
            "data.ways=5",
            "data.test_ways=5",
            *QUICK,
        ],
    )
    sources = task_sources(cfg)
    assert sources.val is None and list(sources.tests) == ["5w1s"]
    batch = sources.train.sample_tasks(0, 0, 2)
    assert tuple(batch.support_x.shape) == (2, 5, 1, 28, 28) and tuple(batch.query_x.shape) == (2, 10, 1, 28, 28)
    assert sources.tests["5w1s"].dataset.name == "fashion-mnist-test"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["data.val_part=val", "data.ways=5", "data.test_ways=5"], 'no val: set data.val_part=""'),
        (
            ['data.val_part=""', "data.ways=20", "data.test_ways=5"],
            "20-way tasks on Fashion-MNIST's train part: it has 10 classes",
        ),
    ],
)
@needs_fashion
def test_fashion_mnist_task_source_refuses_a_val_part_and_too_many_ways_in_one_line(overrides, expected):
    cfg = fastadapt.load_config("protonet-quick", ["data.dataset=fashion-mnist", *overrides, *QUICK])
    msg = one_line_error(task_sources, cfg)
    assert expected in msg


def idx_folder(root: Path) -> Path:
    """An MNIST-style folder: 6 classes of 4 random 8x8 images in train (gzipped), 4 classes in t10k (plain)."""
    rng = np.random.default_rng(2)
    root.mkdir()
    for prefix, classes, gz in (("train", 6, ".gz"), ("t10k", 4, "")):
        y = np.repeat(np.arange(classes, dtype=np.uint8), 4)
        write_idx(root / f"{prefix}-images-idx3-ubyte{gz}", rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{gz}", rng.permutation(y))
    return root


def test_idx_task_source_reads_train_and_t10k_files_of_a_folder(tmp_path):
    root = idx_folder(tmp_path / "digits")
    cfg = fastadapt.load_config(
        "protonet-quick",
        [
            f"data.dataset=idx:{root}",
            'data.val_part=""',
            "data.ways=3",
            "data.test_ways=4",
            "data.image_size=8",
            *QUICK,
        ],
    )
    sources = task_sources(cfg)
    assert sources.train.dataset.num_classes == 6 and sources.train.dataset.name == "digits-train"
    assert sources.tests["4w1s"].dataset.num_classes == 4
    batch = sources.train.sample_tasks(0, 0, 1)
    assert tuple(batch.support_x.shape) == (1, 3, 1, 8, 8)


def test_idx_task_source_without_a_folder_or_with_an_unknown_part_is_a_one_line_error(tmp_path):
    root = idx_folder(tmp_path / "digits")
    base = ["data.ways=3", "data.test_ways=3", "data.image_size=8", *QUICK]
    msg = one_line_error(task_sources, fastadapt.load_config("protonet-quick", ["data.dataset=idx:", *base]))
    assert "names no folder" in msg and "idx:<dir>" in msg
    msg = one_line_error(
        task_sources, fastadapt.load_config("protonet-quick", [f"data.dataset=idx:{root}", "data.val_part=val", *base])
    )
    assert f"IDX folder {root} has no part 'val'; it has train, test" in msg
    msg = one_line_error(
        task_sources, fastadapt.load_config("protonet-quick", [f"data.dataset=idx:{tmp_path / 'none'}", *base])
    )
    assert "does not exist" in msg
