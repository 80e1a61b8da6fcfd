"""Full-resolution Omniglot (same splits, parts, names and order as the bundled 28x28 data; resized by the engine's
one rule; verified cache) and Lake's drawer-paired trials (EpisodeSampler(drawers="paired"), data.options.drawers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastadapt.config.build import SourceRequest
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data import omniglot_full as full
from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.domains.cache import CACHE_ENV
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.sampler import EpisodeSampler, class_groups
from helpers import one_line_error

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
needs_originals = pytest.mark.skipif(
    not all((SHARED / f).is_file() for f in full.PACKED_SHA256),
    reason="the packed originals are not beside this checkout",
)

# --- drawer-paired episodes on a synthetic dataset: pixel 0 = class, pixel 1 = drawer ----------------------------


def _coded(alphabets: int = 2, per_alphabet: int = 5, drawers: int = 20) -> ClassDataset:
    classes = alphabets * per_alphabet
    x = torch.zeros(classes * drawers, 1, 1, 2, dtype=torch.uint8)
    for c in range(classes):
        for k in range(drawers):
            x[c * drawers + k, 0, 0] = torch.tensor([c, k], dtype=torch.uint8)
    names = tuple(f"A{c // per_alphabet}/character{c % per_alphabet + 1:02d}" for c in range(classes))
    return ClassDataset(x, torch.arange(0, classes * drawers + 1, drawers), names, "coded")


def _codes(x: torch.Tensor) -> torch.Tensor:
    """[T, N, 2]: (class, drawer) of each example of ``x [T, N, 1, 1, 2]`` (uint8 scaled to [0, 1] when sampled)."""
    return (x[..., 0, 0, :] * 255).round().long()


def test_paired_drawers_give_each_task_one_support_drawer_and_another_query_drawer_within_an_alphabet():
    data = _coded()
    sampler = EpisodeSampler(
        data, 4, 1, 1, seed=3, strict=True, groups=class_groups(data, "alphabet"), drawers="paired"
    )
    batch = sampler.sample_tasks(7, 0, 50)
    s, q = _codes(batch.support_x), _codes(batch.query_x)
    pairs = set()
    for t in range(50):
        assert len(set(s[t, :, 1].tolist())) == 1 and len(set(q[t, :, 1].tolist())) == 1  # one drawer each
        assert s[t, 0, 1] != q[t, 0, 1]
        assert s[t, :, 0].tolist() == q[t, :, 0].tolist() == batch.classes[t].tolist()  # query c is class c
        assert len({data.names[c].split("/")[0] for c in s[t, :, 0].tolist()}) == 1  # one alphabet
        pairs.add((int(s[t, 0, 1]), int(q[t, 0, 1])))
    assert len(pairs) > 30  # the drawers vary from task to task
    one = sampler.sample_tasks(7, 13, 1)  # task 13 alone: the same as in the batch (seeded by seed, step, index)
    torch.testing.assert_close(one.support_x[0], batch.support_x[13], rtol=0, atol=0)
    other = EpisodeSampler(data, 4, 1, 1, seed=4, groups=class_groups(data, "alphabet"), drawers="paired")
    assert not torch.equal(other.sample_tasks(7, 0, 50).support_x, batch.support_x)


def test_paired_drawers_with_several_shots_and_queries_use_distinct_drawers_shared_by_every_class():
    data = _coded()
    batch = EpisodeSampler(data, 3, 2, 3, seed=1, drawers="paired").sample_tasks(0, 0, 20)
    s, q = _codes(batch.support_x), _codes(batch.query_x)
    for t in range(20):
        sd, qd = s[t, :, 1].view(3, 2), q[t, :, 1].view(3, 3)  # class-major
        assert (sd == sd[0]).all() and (qd == qd[0]).all()
        assert len(set(sd[0].tolist()) | set(qd[0].tolist())) == 5


def test_random_drawers_stay_the_default_and_draw_the_same_episodes_as_before():
    x = torch.arange(6 * 20).view(120, 1, 1, 1).to(torch.uint8)
    names = tuple(f"{'AB'[c // 3]}/c{c}" for c in range(6))
    data = ClassDataset(x, torch.arange(0, 121, 20), names, "syn")
    batch = EpisodeSampler(data, 3, 1, 1, seed=7, groups=[n.split("/")[0] for n in names]).sample_tasks(5, 2, 2)
    # pinned from the sampler before drawers existed
    assert (batch.support_x * 255).round().flatten().tolist() == [41, 13, 30, 113, 91, 60]
    assert (batch.query_x * 255).round().flatten().tolist() == [53, 12, 37, 119, 89, 78]
    coded = EpisodeSampler(_coded(), 4, 1, 1, seed=3).sample_tasks(0, 0, 20)
    assert any(len(set(_codes(coded.support_x)[t, :, 1].tolist())) > 1 for t in range(20))  # drawers mixed
    assert "drawers='same'" in one_line_error(EpisodeSampler, _coded(), 4, 1, 1, drawers="same")


def _request(**kw) -> SourceRequest:
    fields = dict(part="evaluation", ways=20, shots=1, queries=1, seed=5, split="lake", role="test")
    fields.update(kw)
    return SourceRequest(**fields)


def test_the_omniglot_source_draws_lakes_trials_from_the_bundled_evaluation_alphabets():
    build = TASK_SOURCES.get("omniglot")
    source = build(_request(options={"drawers": "paired"}))
    data = load_omniglot("lake", "evaluation")
    assert isinstance(source, EpisodeSampler) and source.drawers == "paired"
    assert torch.equal(source.dataset.data, data.data) and source.dataset.names == data.names
    where: dict[bytes, set[int]] = {}  # image -> the drawers it is (a few drawings are exact duplicates)
    for row in range(len(data.data)):
        where.setdefault(data.data[row].numpy().tobytes(), set()).add(row % 20)
    batch = source.sample_tasks(-1, 0, 10)
    for part in (batch.support_x, batch.query_x):
        assert part.shape == (10, 20, 1, 28, 28)
    for t in range(10):
        sup = [where[(batch.support_x[t, c] * 255).round().to(torch.uint8).numpy().tobytes()] for c in range(20)]
        qry = [where[(batch.query_x[t, c] * 255).round().to(torch.uint8).numpy().tobytes()] for c in range(20)]
        ds, dq = set.intersection(*sup), set.intersection(*qry)
        assert ds and dq and not ds & dq
        assert len({data.names[c].split("/")[0] for c in batch.classes[t].tolist()}) == 1
    assert isinstance(build(_request(options={})), ClassDataset)  # random drawers: the engine samples, as before
    mixed = {"drawers": "paired", "train_drawers": "random"}
    assert isinstance(build(_request(part="background_train", role="train", options=mixed)), ClassDataset)
    assert isinstance(build(_request(options=mixed)), EpisodeSampler)
    assert "drawers" in one_line_error(build, _request(options={"drawer": "paired"}))
    assert "random, paired" in one_line_error(build, _request(options={"drawers": "same"}))


# --- full resolution --------------------------------------------------------------------------------------------


def test_resizing_is_the_engines_one_conversion_rule_and_105_is_left_alone():
    rng = np.random.default_rng(0)
    x = (rng.random((3, 20, 105, 105)) < 0.1).astype(np.uint8) * 255
    assert full._resized(x, 105) is x
    got = full._resized(x, 40)
    want = conform_images(ClassDataset(torch.from_numpy(x.reshape(60, 1, 105, 105)), torch.tensor([0, 60]), ("c",)), 40)
    assert got.shape == (3, 20, 40, 40) and np.array_equal(got.reshape(60, 1, 40, 40), want.data.numpy())


@pytest.mark.parametrize("size", [27, 106, True, 84.0])
def test_a_size_outside_28_to_105_is_a_one_line_error(size):
    assert "from 28 to 105" in one_line_error(full.full_images, size)


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    full.full_images.cache_clear()
    yield tmp_path
    full.full_images.cache_clear()


def test_missing_or_unverified_originals_are_one_line_errors(empty_cache):
    msg = one_line_error(full.full_images, 28, str(empty_cache / "nothing"))
    assert "data.options.root" in msg and "download" in msg
    fake = empty_cache / "packed"
    fake.mkdir()
    for name in full.PACKED_SHA256:
        (fake / name).write_bytes(b"not the originals")
    assert full.PACKED_SHA256["images_background.npz"] in one_line_error(full.full_images, 28, str(fake))
    assert not list((empty_cache / "cache").glob("*.npz"))  # nothing cached


@pytest.fixture(scope="module")
def full28(tmp_path_factory):
    """omniglot-full at 28 built once from the packed originals into a fresh cache (about 6 s)."""
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    full.full_images.cache_clear()
    images = full.full_images(28, str(SHARED))
    yield images
    full.full_images.cache_clear()
    if old is None:
        os.environ.pop(CACHE_ENV)
    else:
        os.environ[CACHE_ENV] = old


@needs_originals
def test_every_split_and_part_has_the_bundled_names_counts_and_rotations(full28):
    for split, parts in SPLITS.items():
        for part in parts:
            for rotations in (None, True, False):
                a = full.load_omniglot_full(split, part, rotations, size=28)
                b = load_omniglot(split, part, rotations)
                assert a.names == b.names and torch.equal(a.offsets, b.offsets), (split, part, rotations)
                assert a.data.shape == b.data.shape and a.name == b.name.replace("omniglot", "omniglot-full28", 1)


@needs_originals
def test_the_drawings_match_the_bundled_ones_in_order_and_differ_only_by_the_resampling_filter(full28):
    bundled = load_omniglot("vinyals", "test", rotations=True).data.numpy().astype(int)
    ours = full.load_omniglot_full("vinyals", "test", rotations=True, size=28).data.numpy().astype(int)
    diff = np.abs(ours - bundled)
    assert diff.mean() < 4  # Lanczos (bundled) vs antialiased bilinear; 3.0 grey levels measured
    shifted = np.abs(np.roll(ours, 1, axis=0) - bundled).mean()  # the next drawing: ~10x further
    assert shifted > 5 * diff.mean()


@needs_originals
def test_the_cache_is_used_once_built(full28, monkeypatch):
    full.full_images.cache_clear()

    def refuse(*a):
        raise AssertionError("the originals were read again")

    monkeypatch.setattr(full, "_originals", refuse)
    assert np.array_equal(full.full_images(28, str(SHARED)), full28)
    cached = list(Path(os.environ[CACHE_ENV]).glob("omniglot-full-28px-*.npz"))
    assert len(cached) == 1


@needs_originals
def test_the_omniglot_full_source_takes_the_bundled_options_and_paired_drawers(full28):
    build = TASK_SOURCES.get("omniglot-full")
    opts = {"size": 28, "root": str(SHARED)}
    data = build(_request(split="vinyals", part="train", role="train", options={**opts, "train_rotations": False}))
    assert data.names == load_omniglot("vinyals", "train", rotations=False).names
    paired = build(_request(image_size=28, options={**opts, "drawers": "paired"}))
    assert isinstance(paired, EpisodeSampler) and paired.drawers == "paired" and paired.ways == 20
    assert "omniglot-full" in one_line_error(build, _request(options={**opts, "colour": True}))
