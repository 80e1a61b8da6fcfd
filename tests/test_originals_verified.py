"""The Omniglot originals are verified whenever they load (image by image, against a SHA-256 manifest),
and archives are size-limited before extraction."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

import fastadapt.data.originals as originals_module
from fastadapt import DataError, load_omniglot_originals


def _png(value: int) -> bytes:
    img = np.full((105, 105), True)
    img[10 : 10 + value, 20:40] = False
    buf = io.BytesIO()
    Image.fromarray(img).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _archive(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture()
def originals(tmp_path):
    """An extracted fake images_background split (2 alphabets x 2 characters x 3 drawings) and its manifest."""
    entries = {
        f"images_background/{a}/character{c + 1:02d}/{i * 2 + c + 1:04d}_{k + 1:02d}.png": _png(5 + 10 * c + k)
        for i, a in enumerate(("Alpha", "Beta"))
        for c in range(2)
        for k in range(3)
    }
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    blob = _archive(entries)
    (tmp_path / "images_background.zip").write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    assert load_omniglot_originals(tmp_path, manifest=manifest, sha256=sha).data.shape == (12, 1, 105, 105)
    return tmp_path / "images_background" / "images_background", manifest


def test_an_image_altered_after_extraction_never_loads(originals):
    folder, manifest = originals
    victim = folder / "Alpha" / "character01" / "0001_01.png"
    victim.write_bytes(b"garbage, not a PNG")
    with pytest.raises(
        DataError, match=r"SHA-256 of .*0001_01.png is [0-9a-f]{64}, expected [0-9a-f]{64}; the image was altered"
    ) as e:
        load_omniglot_originals(folder.parent.parent, manifest=manifest)
    assert "\n" not in str(e.value)
    victim.write_bytes(_png(30))  # a valid PNG, but not the original
    with pytest.raises(DataError, match="the image was altered"):
        load_omniglot_originals(folder.parent.parent, manifest=manifest)


def test_an_added_missing_or_oversized_image_never_loads(originals):
    folder, manifest = originals
    root = folder.parent.parent
    extra = folder / "Alpha" / "character01" / "0001_99.png"
    extra.write_bytes(_png(3))
    with pytest.raises(DataError, match="0001_99.png is not an Omniglot original"):
        load_omniglot_originals(root, manifest=manifest)
    extra.unlink()
    big = folder / "Beta" / "character02" / "0004_03.png"
    original = big.read_bytes()
    big.write_bytes(b"\0" * ((1 << 20) + 1))
    with pytest.raises(DataError, match="0004_03.png is 1048577 bytes, more than the 1048576 allowed"):
        load_omniglot_originals(root, manifest=manifest)
    big.unlink()
    with pytest.raises(DataError, match="lacks 1 of its 12 images"):
        load_omniglot_originals(root, manifest=manifest)
    big.write_bytes(original)
    assert load_omniglot_originals(root, manifest=manifest).data.shape == (12, 1, 105, 105)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        (
            {"images_background/A/character01/0001_01.png": b"\0" * ((1 << 20) + 1)},
            "would extract to 1048577 bytes, more than the 1048576",
        ),
        (
            {f"images_background/A/character01/0001_{k:02d}.png": b"\0" * 1000 for k in range(5)},
            "would extract to 5000 bytes, more than the 4096",
        ),
    ],
)
def test_an_archive_extracting_to_too_much_is_refused_before_extraction(tmp_path, monkeypatch, entries, match):
    monkeypatch.setattr(originals_module, "MAX_ARCHIVE_BYTES", 4096)  # the real limit is 256 MiB
    (tmp_path / "images_background.zip").write_bytes(_archive(entries))
    sha = hashlib.sha256((tmp_path / "images_background.zip").read_bytes()).hexdigest()
    with pytest.raises(DataError, match=match) as e:
        load_omniglot_originals(tmp_path, manifest={name: "0" * 64 for name in entries}, sha256=sha)
    assert "\n" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["images_background.zip"]
