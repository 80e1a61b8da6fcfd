"""The animals domain (PyPI ``animal-mnist``, read without importing it or running its pickles)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.config.build import task_sources
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.domains import animals as mod
from fastadapt.data.domains.animals import ANIMAL_CLASSES, IMAGES, LABELS, animals, load_animals, read_pickled_array
from helpers import QUICK, needs_package, one_line_error

needs_animals = needs_package("animal-mnist")
REFUSED = "not a plain numpy array pickle; refusing to unpickle it"


def request(part: str = "test", ways: int = 5, **options) -> SimpleNamespace:
    return SimpleNamespace(part=part, ways=ways, options=options)


def package_copy(tmp_path: Path) -> Path:
    """The package's two data files, copied into ``tmp_path/copy``."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in (IMAGES, LABELS):
        shutil.copyfile(mod.package_folder() / name, folder / name)
    return folder


@needs_animals
def test_the_test_part_has_10_animals_of_1000_grey_28x28_silhouettes_and_the_package_is_never_imported():
    data = load_animals()
    assert data.names == ANIMAL_CLASSES and data.name == "animals-test"
    assert data.counts.tolist() == [1000] * 10
    assert data.example_shape == (1, 28, 28) and data.data.dtype == torch.uint8 and len(data.data) == 10000
    assert int(data.data.sum(dtype=torch.int64)) == 545386226  # the package's 0.4 files, as read on 2025-06
    assert float(data.data[:, :, 0].float().mean()) < 10 < float(data.data[:, :, 10:18, 10:18].float().mean())
    assert "animal_mnist" not in sys.modules and "tensorflow" not in sys.modules


@needs_animals
def test_two_loads_give_identical_bytes():
    a, b = load_animals(), load_animals()
    assert torch.equal(a.data, b.data) and torch.equal(a.offsets, b.offsets)
    assert hashlib.sha256(a.data.numpy().tobytes()).digest() == hashlib.sha256(b.data.numpy().tobytes()).digest()


@pytest.mark.parametrize("part", ["train", "val", "nope"])
def test_only_the_test_part_exists_and_other_parts_are_refused_in_one_line(part):
    assert f"animals has no part {part!r}" in one_line_error(load_animals, part)
    assert "it has test only" in one_line_error(animals, request(part))


def test_more_ways_than_classes_are_refused_in_one_line():
    assert "11-way tasks on animals: it has 10 classes" in one_line_error(animals, request(ways=11))


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch):
    monkeypatch.setattr(mod, "MODULE", "animal_mnist_not_installed_here")
    msg = one_line_error(load_animals)
    assert "PyPI package animal-mnist is not installed; pip install --no-deps animal-mnist" in msg
    assert "pip install --no-deps animal-mnist" in one_line_error(animals, request())


def test_a_root_without_the_files_is_one_line(tmp_path):
    msg = one_line_error(load_animals, root=tmp_path)
    assert str(tmp_path / IMAGES) in msg and "is missing" in msg


@needs_animals
def test_a_root_with_a_copy_of_the_files_is_read_and_a_changed_byte_is_refused_by_its_checksum(tmp_path):
    folder = package_copy(tmp_path)
    assert torch.equal(load_animals(root=folder).data, load_animals().data)
    assert torch.equal(animals(request(animals_root=str(folder))).data, load_animals().data)
    raw = bytearray((folder / LABELS).read_bytes())
    raw[-12] ^= 0xFF
    (folder / LABELS).write_bytes(bytes(raw))
    assert "is not animal-mnist 0.4's" in one_line_error(load_animals, root=folder)
    (folder / IMAGES).write_bytes((folder / IMAGES).read_bytes()[:1000])  # a partial file
    assert f"{folder / IMAGES} is not animal-mnist 0.4's (1000 bytes" in one_line_error(load_animals, root=folder)


# --- the opcode walk: numpy's ndarray pickle is read, anything else refused without running it ------------------


@pytest.mark.parametrize("array", [np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.arange(-3, 5, dtype="<i8")])
def test_a_numpy_pickle_of_uint8_or_int64_is_read_back_exactly(array):
    got = read_pickled_array(pickle.dumps(array, protocol=4))
    assert got.dtype == array.dtype and got.shape == array.shape and (got == array).all() and got.flags.writeable


@pytest.mark.parametrize(
    "obj",
    [
        np.arange(4, dtype=np.float32),  # another dtype
        np.arange(4, dtype=">i8"),  # big-endian
        np.array([1, "a"], dtype=object),  # an object array
        np.asfortranarray(np.ones((2, 3), dtype=np.uint8)),  # Fortran order
        [1, 2, 3],  # not an array
        {"a": np.arange(3, dtype=np.uint8)},  # an array inside a dict
    ],
)
def test_anything_but_a_plain_uint8_or_int64_array_is_refused_in_one_line(obj):
    assert REFUSED in one_line_error(read_pickled_array, pickle.dumps(obj, protocol=4))


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_other_pickle_protocols_are_refused(protocol):
    raw = pickle.dumps(np.arange(3, dtype=np.uint8), protocol=protocol)
    assert REFUSED in one_line_error(read_pickled_array, raw)


def test_a_truncated_or_garbage_stream_is_refused_in_one_line():
    raw = pickle.dumps(np.arange(300, dtype=np.uint8), protocol=4)
    assert REFUSED in one_line_error(read_pickled_array, raw[:-20])
    assert REFUSED in one_line_error(read_pickled_array, b"\x00not a pickle at all")


class Exploit:
    """Unpickling this would run ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_calling_os_system_is_refused_without_being_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    raw = pickle.dumps(Exploit(f"touch {marker}"), protocol=4)  # names os.system (posix.system) as its global
    assert b"system" in raw
    calls: list[str] = []
    named = sys.modules[os.system.__module__]  # posix: what the pickle names
    monkeypatch.setattr(named, "system", lambda cmd: calls.append(cmd) or 0)  # a run would be seen, not executed
    msg = one_line_error(read_pickled_array, raw, "evil.gz")
    assert msg.startswith(f"evil.gz: {REFUSED}") and "global" in msg and "system" in msg
    # through the loader too: a folder whose image file is that pickle, its size and checksum taken as the expected
    blob = gzip.compress(raw, mtime=0)
    (tmp_path / IMAGES).write_bytes(blob)
    expected = (len(blob), hashlib.sha256(blob).hexdigest(), (10000, 28, 28), "u1")
    monkeypatch.setitem(mod.FILES, IMAGES, expected)
    assert REFUSED in one_line_error(load_animals, root=tmp_path)
    assert calls == [] and not marker.exists()
    pickle.loads(raw)  # the exploit is live: unpickling it calls (the stand-in for) os.system
    assert calls == [f"touch {marker}"] and not marker.exists()


# --- the task source ----------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    """``animals`` as a task source (the lead registers it for good; here only for this test)."""
    added = "animals" not in TASK_SOURCES
    if added:
        fastadapt.register_task_source("animals", animals)
    yield
    if added:
        TASK_SOURCES.unregister("animals")


@needs_animals
def test_a_5_way_1_shot_episode_from_the_task_source(registered):
    cfg = fastadapt.load_config(
        "protonet-quick",
        ["data.dataset=omniglot", "data.test_dataset=animals", "data.test_ways=5", "data.test_shots=1", *QUICK],
    )
    sources = task_sources(cfg, tests_only=True, input_shape=(1, 28, 28))
    test = sources.tests["5w1s"]
    assert test.dataset.name == "animals-test"
    batch = test.sample_tasks(0, 0, 2)
    assert tuple(batch.support_x.shape) == (2, 5, 1, 28, 28) and tuple(batch.query_x.shape) == (2, 10, 1, 28, 28)
    again = task_sources(cfg, tests_only=True, input_shape=(1, 28, 28)).tests["5w1s"].sample_tasks(0, 0, 2)
    assert torch.equal(batch.support_x, again.support_x) and torch.equal(batch.query_y, again.query_y)
