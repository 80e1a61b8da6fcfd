"""The kanji domain (KanjiVG's stroke files, PyPI kanjivg): the path parser and renderer on made-up strokes, the
checks against a RECORD on a made-up distribution, and the installed package's first kanji (a ``limit``)."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.config.build import task_sources
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.domains import kanji as K
from helpers import QUICK, needs_package, one_line_error

LIMIT, EXAMPLES = 60, 3  # the first 60 kanji, 3 renderings each: a build of under a second
needs_kanjivg = needs_package("kanjivg")


def svg(*paths: str) -> bytes:
    body = "".join(f'<path id="kvg:x-s{i}" kvg:type="&#12752;" d="{d}"/>' for i, d in enumerate(paths, 1))
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 109 109"><g>{body}</g></svg>'.encode()


GOOD = svg("M20,20c10,0 40,2 60,4", "M50,10C52,30 52,60 48,95", "M15,60s30,-4 80,2")


def test_parse_path_reads_every_command_absolute_and_relative():
    (sub,) = K.parse_path("M10,10 L20,10 l0,10 H30 h5 V40 v-5 Z")
    ends = [tuple(seg[3]) for seg in sub]
    assert ends == [(20, 10), (20, 20), (30, 20), (35, 20), (35, 40), (35, 35), (10, 10)]
    (sub,) = K.parse_path("M0,0 C1,2 3,4 5,6 S9,10 11,12 s1,1 2,2 c1,0 1,1 2,2")
    np.testing.assert_allclose(sub[1], [[5, 6], [7, 8], [9, 10], [11, 12]])  # S reflects the last control point
    np.testing.assert_allclose(sub[2], [[11, 12], [13, 14], [12, 13], [13, 14]])
    np.testing.assert_allclose(sub[3][3], [15, 16])
    first, second = K.parse_path("m1,1 2,2 M5,5 6,6 7,7")  # pairs after m / M are line-tos; M starts a subpath
    assert tuple(first[0][3]) == (3, 3) and [tuple(s[3]) for s in second] == [(6, 6), (7, 7)]
    (sub,) = K.parse_path("M1.5.5-2e1,3")  # numbers run together, as SVG allows
    assert tuple(sub[0][3]) == (-20, 3)
    for bad in ("M0,0 Q1,1 2,2", "0,0 L1,1", "M0", "M0,0 C1,1 2"):
        with pytest.raises(ValueError):
            K.parse_path(bad)


def test_render_is_white_on_black_deterministic_and_varied():
    strokes = K.parse_kanji(GOOD)
    a = K.render_kanji(strokes, np.random.default_rng([0x5B57, 0]), 28)
    b = K.render_kanji(strokes, np.random.default_rng([0x5B57, 0]), 28)
    c = K.render_kanji(strokes, np.random.default_rng([0x5B57, 1]), 28)
    assert a.dtype == np.uint8 and a.shape == (28, 28) and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert a.max() > 200 and a[0, 0] == 0 and 0.03 < (a > 127).mean() < 0.5
    assert K.render_kanji(strokes, None, 150).shape == (150, 150)
    with pytest.raises(ValueError):
        K.parse_kanji(svg())


def test_a_class_is_a_cjk_ideograph_file_without_a_variant_suffix():
    assert K.class_code("05b57.svg") == 0x5B57 and K.class_code("20b9f.svg") == 0x20B9F
    assert K.class_code("05b57-Kaisho.svg") is None  # a variant
    assert K.class_code("03042.svg") is None and K.class_code("00021.svg") is None  # hiragana, "!"
    assert K.class_code("05b57.txt") is None and K.class_code("zz.svg") is None


def fake_distribution(tmp_path: Path, files: dict[str, bytes], damage: str = "", drop: str = ""):
    """An installed 'kanjivg' of ``files`` (kanji/<name>) with its RECORD, as importlib.metadata reads it; ``damage``
    is changed after its RECORD is written, ``drop`` removed."""
    site = tmp_path / "site"
    (site / "kanji").mkdir(parents=True)
    info = site / "kanjivg-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kanjivg\nVersion: 0\n")
    rows = []
    for name, data in files.items():
        (site / "kanji" / name).write_bytes(data)
        b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"kanji/{name},sha256={b64},{len(data)}")
    (info / "RECORD").write_text("\n".join([*rows, "kanjivg-0.dist-info/RECORD,,"]) + "\n")
    if damage:
        (site / "kanji" / damage).write_bytes(files[damage] + b" ")
    if drop:
        (site / "kanji" / drop).unlink()
    return metadata.PathDistribution(info)


FILES = {"05b57.svg": GOOD, "05b57-Kaisho.svg": GOOD, "03042.svg": GOOD, "04e00.svg": svg("M10,50L99,50")}


def test_files_are_checked_against_the_record(tmp_path, monkeypatch):
    for case, kwargs in (("ok", {}), ("damaged", {"damage": "04e00.svg"}), ("dropped", {"drop": "03042.svg"})):
        dist = fake_distribution(tmp_path / case, FILES, **kwargs)
        monkeypatch.setattr(metadata, "distribution", lambda name, dist=dist: dist)
        if case == "ok":
            release, digest, sources = K.kanji_sources()
            assert release == "0" and [c for c, _ in sources] == ["一", "字"] and len(digest) == 64
        elif case == "damaged":
            msg = one_line_error(K.kanji_sources)
            assert "kanji/04e00.svg does not match its RECORD" in msg and "--force-reinstall" in msg
        else:
            assert "4 kanji/*.svg files in its RECORD, 3 in" in one_line_error(K.kanji_sources)


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    msg = one_line_error(K.load_kanji, "train", cache=tmp_path)
    assert "PyPI package kanjivg: pip install kanjivg" in msg


def test_a_file_that_cannot_be_rendered_is_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "svg"
    root.mkdir()
    for code in range(0x4E00, 0x4E00 + 20):
        (root / f"{code:05x}.svg").write_bytes(svg("M10,30Q1,1 2,2") if code == 0x4E05 else GOOD)
    images, labels, names = K.render_all(K.kanji_sources(root)[2], size=16, examples=2)
    assert len(names) == 19 and "\u4e05" not in names and images.shape == (38, 1, 16, 16)
    assert "1 of 20 KanjiVG files could not be rendered" in capsys.readouterr().err
    data = K.load_kanji("train", root=root, cache=tmp_path / "cache", size=16, examples=2)
    assert data.num_classes == 13 and set(data.counts.tolist()) == {2}  # 70 % of 19


def test_bad_options_are_one_line():
    assert "examples=0; it must be an integer >= 1" in one_line_error(K.load_kanji, examples=0)
    assert "size=True" in one_line_error(K.load_kanji, size=True)


# --- the installed package ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kanji-cache")


@needs_kanjivg
def test_the_installed_release_has_its_counts_and_checksum():
    release, digest, sources = K.kanji_sources()
    files, classes, known = K.KNOWN.get(release, (None, len(sources), digest))
    assert len(sources) == classes and digest == known and len(sources) > 6000
    assert all(K.is_ideograph(ord(c)) for c, _ in sources)


@needs_kanjivg
def test_parts_are_disjoint_and_counted(cache):
    parts = {p: K.load_kanji(p, cache=cache, examples=EXAMPLES, limit=LIMIT) for p in ("train", "val", "test")}
    names = {p: set(d.names) for p, d in parts.items()}
    assert {p: len(n) for p, n in names.items()} == {"train": 42, "val": 9, "test": 9}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    _, _, sources = K.kanji_sources(limit=LIMIT)
    assert set().union(*names.values()) == {c for c, _ in sources}
    for d in parts.values():
        assert d.data.dtype == torch.uint8
        assert d.example_shape == (1, 28, 28) and set(d.counts.tolist()) == {EXAMPLES}


@needs_kanjivg
def test_two_builds_are_identical_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    a = K.load_kanji("val", cache=tmp_path / "a", examples=EXAMPLES, limit=LIMIT)
    b = K.load_kanji("val", cache=tmp_path / "b", examples=EXAMPLES, limit=LIMIT)
    assert a.names == b.names and a.data.numpy().tobytes() == b.data.numpy().tobytes()
    (npz,) = (tmp_path / "a").glob("kanji-*.npz")
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    calls = []
    render = K.render_all
    monkeypatch.setattr(K, "render_all", lambda *a, **k: calls.append(1) or render(*a, **k))
    c = K.load_kanji("val", cache=tmp_path / "a", examples=EXAMPLES, limit=LIMIT)
    assert calls == [1] and c.data.numpy().tobytes() == a.data.numpy().tobytes()
    meta = json.loads(next((tmp_path / "a").glob("kanji-*.json")).read_text())
    assert meta["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    K.load_kanji("val", cache=tmp_path / "a", examples=EXAMPLES, limit=LIMIT)
    assert calls == [1]  # the rebuilt cache is used


@pytest.fixture
def registered():
    """``kanji`` as a task source (the lead registers it in core/registry.py; until then, here)."""
    mine = "kanji" not in TASK_SOURCES
    if mine:
        fastadapt.register_task_source("kanji", K.kanji)
    yield
    if mine:
        TASK_SOURCES.unregister("kanji")


@needs_kanjivg
def test_a_5_way_1_shot_episode_through_the_config(registered, cache):
    options = f"data.options={{limit={LIMIT}, examples={EXAMPLES}, cache='{cache}'}}"
    cfg = fastadapt.load_config(
        "protonet-quick", ["data.dataset=kanji", options, "data.ways=5", "data.test_ways=5", *QUICK]
    )
    sources = task_sources(cfg)
    batch = sources.train.sample_tasks(0, 0, 2)
    assert tuple(batch.support_x.shape) == (2, 5, 1, 28, 28) and tuple(batch.query_x.shape) == (2, 10, 1, 28, 28)
    task = sources.tests["5w1s"].sample_tasks(0, 0, 1)
    assert tuple(task.support_x.shape) == (1, 5, 1, 28, 28)
    assert sources.tests["5w1s"].dataset.name == "kanji-test"
    bad = fastadapt.load_config("protonet-quick", ["data.dataset=kanji", "data.options={colour=1}", *QUICK])
    assert "data.options.colour is not an option of kanji" in one_line_error(task_sources, bad)
