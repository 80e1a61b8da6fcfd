"""The domains' render cache: used only when it verifies, rebuilt when partial or corrupt; class splits disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from fastadapt.core.errors import DataError
from fastadapt.data.domains.cache import cached, split_classes


def build_counting(calls: list[int]):
    def build():
        calls.append(1)
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8), np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"]

    return build


def test_a_verified_cache_is_used_and_a_corrupt_or_partial_one_is_rebuilt(tmp_path):
    calls: list[int] = []
    first = cached("toy", "1", build_counting(calls), tmp_path)
    again = cached("toy", "1", build_counting(calls), tmp_path)
    assert len(calls) == 1 and np.array_equal(first[0], again[0]) and again[2] == ["a", "b", "c"]
    npz = tmp_path / "toy-1.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the digest no longer matches
    npz.write_bytes(bytes(data))
    rebuilt = cached("toy", "1", build_counting(calls), tmp_path)
    assert len(calls) == 2 and np.array_equal(rebuilt[0], first[0])
    npz.write_bytes(npz.read_bytes()[:100])  # a partial file
    cached("toy", "1", build_counting(calls), tmp_path)
    (tmp_path / "toy-1.json").write_text("{")  # a torn manifest
    cached("toy", "1", build_counting(calls), tmp_path)
    assert len(calls) == 4
    assert cached("toy", "2", build_counting(calls), tmp_path) and len(calls) == 5  # another version: its own file


def test_what_a_build_returns_is_checked_in_one_line(tmp_path):
    with pytest.raises(DataError, match="images must be uint8"):
        cached("bad", "1", lambda: (np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1]), ["a", "b"]), tmp_path)
    with pytest.raises(DataError, match="3 labels for 2 images"):
        cached("bad", "1", lambda: (np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1, 1]), ["a", "b"]), tmp_path)


def test_class_splits_are_disjoint_cover_every_class_and_ignore_build_order():
    names = [f"class{i}" for i in range(101)]
    parts = {p: split_classes(names, p) for p in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 101 and len(set().union(*map(set, parts.values()))) == 101
    assert len(parts["train"]) == 71 and len(parts["val"]) == 15
    shuffled = list(reversed(names))
    assert {shuffled[i] for i in split_classes(shuffled, "test")} == {names[i] for i in parts["test"]}
    with pytest.raises(DataError, match="part 'dev' is not one of train, val, test"):
        split_classes(names, "dev")
