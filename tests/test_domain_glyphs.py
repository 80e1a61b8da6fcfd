"""The glyphs domain: letters of many scripts rendered from fonts-noto-core, verified, deterministic, split by class."""

from __future__ import annotations

import shutil
import unicodedata

import numpy as np
import pytest

import fastadapt
from fastadapt.config.build import task_sources
from fastadapt.core.errors import DataError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.domains import glyphs as g
from helpers import needs_package

pytestmark = needs_package("fonts-noto-core")
PARTS = ("train", "val", "test")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full build at 28 px (about 10 s on one core), rendered once into a cache for this module."""
    cache = tmp_path_factory.mktemp("glyphs-cache")
    return cache, {part: g.load_glyphs(part, cache=cache) for part in PARTS}


def test_every_part_loads_disjoint_classes_of_at_least_min_fonts_renders(full):
    cache, parts = full
    names = {part: set(d.names) for part, d in parts.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    total = sum(len(n) for n in names.values())
    assert total > 1000 and len(names["train"]) == round(0.7 * total) and len(names["val"]) == round(0.15 * total)
    for d in parts.values():
        assert tuple(d.example_shape) == (1, 28, 28) and str(d.data.dtype) == "torch.uint8"
        assert int(d.counts.min()) >= g.MIN_FONTS and int(d.data.amax()) == 255
    every = set().union(*names.values())
    scripts = {n.split()[1] for n in every}
    assert {"GREEK", "CYRILLIC", "ARABIC", "HEBREW", "THAI", "TAMIL"} <= scripts
    assert not any("LATIN" in n for n in every)
    assert all(unicodedata.category(chr(int(n.split()[0][2:], 16))) in g.LETTERS for n in every)  # no digit
    assert len(list(cache.glob("glyphs-1-s28-*.npz"))) == 1


def test_two_builds_give_the_same_bytes():
    fonts = {p.name: g.read_font(p) for p in g.font_files()}
    first = g.build_glyphs(fonts, 20, g.MIN_FONTS, limit=40)
    again = g.build_glyphs(fonts, 20, g.MIN_FONTS, limit=40)
    assert first[0].tobytes() == again[0].tobytes() and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert len(first[2]) == 40 and first[0].shape[1:] == (1, 20, 20)


def test_a_corrupt_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    first = g.load_glyphs("train", cache=tmp_path, size=16, limit=30)
    (npz,) = tmp_path.glob("glyphs-*.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    calls = []
    build = g.build_glyphs
    monkeypatch.setattr(g, "build_glyphs", lambda *a, **k: calls.append(1) or build(*a, **k))
    again = g.load_glyphs("train", cache=tmp_path, size=16, limit=30)
    assert calls == [1] and again.names == first.names and bool((again.data == first.data).all())
    g.load_glyphs("train", cache=tmp_path, size=16, limit=30)
    assert calls == [1]  # the rebuilt cache verifies and is used


def test_without_the_package_one_line_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(g, "NOTO_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match=r"no fonts \(\*\.ttf\) in .*absent; apt-get install fonts-noto-core") as e:
        g.load_glyphs("train", cache=tmp_path)
    assert "\n" not in str(e.value)


def test_a_corrupt_font_is_named_and_an_unrenderable_glyph_is_skipped_and_counted(tmp_path, monkeypatch):
    font = tmp_path / "fonts" / "NotoSans-Regular.ttf"
    font.parent.mkdir()
    shutil.copy(g.NOTO_DIR / font.name, font)
    data = bytearray(font.read_bytes())
    data[len(data) // 2] ^= 0x01
    font.write_bytes(bytes(data))
    with pytest.raises(DataError, match="NotoSans-Regular.ttf fails its sfnt checksum.*--reinstall fonts-noto-core"):
        g.load_glyphs("train", root=font.parent, cache=tmp_path)
    fonts = {p.name: g.read_font(p) for p in g.font_files()}
    names = g.build_glyphs(fonts, 16, g.MIN_FONTS, limit=5)[2]
    bad = chr(int(names[1].split()[0][2:], 16))  # the second class: FreeType fails on it in every font
    render = g.render

    def failing(font, ch, size):
        if ch == bad:
            raise OSError("raster overflow")
        return render(font, ch, size)

    monkeypatch.setattr(g, "render", failing)
    skipped: dict[str, int] = {}
    images, labels, kept = g.build_glyphs(fonts, 16, g.MIN_FONTS, limit=5, skipped=skipped)
    assert skipped["renders"] >= g.MIN_FONTS and skipped["classes"] == 1
    assert kept == names[:1] + names[2:] and len(images) == len(labels)


def test_a_5_way_1_shot_episode_through_the_config(full):
    cache, parts = full
    registered = "glyphs" not in TASK_SOURCES
    if registered:
        fastadapt.register_task_source("glyphs", g.glyphs)
    try:
        cfg = fastadapt.load_config(
            "protonet-quick",
            [
                "data.dataset=glyphs",
                f"data.options={{cache='{cache}'}}",
                "data.ways=5",
                "data.shots=1",
                "data.queries=2",
                "data.test_queries=3",
            ],
        )
        sources = task_sources(cfg)
    finally:
        if registered:
            TASK_SOURCES.unregister("glyphs")
    batch = sources.train.sample_tasks(0, 0, 2)
    assert tuple(batch.support_x.shape) == (2, 5, 1, 28, 28) and tuple(batch.query_x.shape) == (2, 10, 1, 28, 28)
    test = sources.tests["5w1s"]
    assert test.dataset.name == "glyphs-test" and test.dataset.names == parts["test"].names
    with pytest.raises(DataError, match="data.options.style is not an option of glyphs"):
        g.glyphs(type("R", (), {"options": {"style": 1}, "part": "train", "image_size": 28})())
