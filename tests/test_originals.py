"""The full-resolution Omniglot loader: local archives, downloads (against a server on 127.0.0.1),
checksums, per-image verification and safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt import DataError, load_omniglot_originals
from fastadapt.data.omniglot import bundled_png_digests
from fastadapt.data.originals import download_file, safe_extract


def _png(value: int) -> bytes:
    img = np.full((105, 105), True)
    img[10 : 10 + value, 20:40] = False  # some ink
    buf = io.BytesIO()
    Image.fromarray(img).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _archive(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _small_split():
    entries = {}
    for a, alphabet in enumerate(("Alpha", "Beta")):
        for c in range(2):
            for k in range(3):
                entries[f"images_background/{alphabet}/character{c + 1:02d}/{a * 2 + c + 1:04d}_{k + 1:02d}.png"] = (
                    _png(5 + 10 * c + k)
                )
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    return entries, manifest


@pytest.fixture()
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving files from a folder (stopped after the test)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_sha256_and_loads_the_images(tmp_path, server):
    root, url = server
    entries, manifest = _small_split()
    blob = _archive(entries)
    (root / "images_background.zip").write_bytes(blob)
    data = load_omniglot_originals(
        tmp_path / "data",
        download=True,
        url=url + "/{name}.zip",
        sha256=hashlib.sha256(blob).hexdigest(),
        manifest=manifest,
    )
    assert data.num_classes == 4 and data.names[0] == "Alpha/character01"
    assert data.data.shape == (12, 1, 105, 105) and int(data.counts.min()) == 3
    assert int(data.data[0].max()) == 255  # ink is bright
    # a second call uses the extracted folder, no network needed
    again = load_omniglot_originals(tmp_path / "data", download=False, manifest=manifest)
    assert again.names == data.names
    small = load_omniglot_originals(tmp_path / "data", manifest=manifest, size=28)
    assert small.data.shape == (12, 1, 28, 28)


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, server):
    root, url = server
    entries, manifest = _small_split()
    (root / "images_background.zip").write_bytes(_archive(entries))
    target = tmp_path / "data"
    with pytest.raises(DataError, match="SHA-256 of .* is [0-9a-f]{64}, expected 00+; the file is corrupted") as e:
        load_omniglot_originals(target, download=True, url=url + "/{name}.zip", sha256="0" * 64, manifest=manifest)
    assert "\n" not in str(e.value)
    assert list(target.iterdir()) == []  # no archive, no partial download, no extracted folder


def test_missing_archive_without_download_and_unreachable_server(tmp_path):
    with pytest.raises(DataError, match="not found; put the official archive there or pass download=True"):
        load_omniglot_originals(tmp_path)
    with pytest.raises(DataError, match="download of http://127.0.0.1:9/x.zip failed"):
        download_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", progress=False)
    assert not any(tmp_path.iterdir())


def test_a_tampered_image_is_rejected_and_nothing_is_extracted(tmp_path):
    entries, manifest = _small_split()
    name = next(iter(entries))
    entries[name] = _png(30)  # differs from the manifest
    (tmp_path / "images_background.zip").write_bytes(_archive(entries))
    with pytest.raises(DataError, match="the archive is corrupted"):
        load_omniglot_originals(
            tmp_path,
            manifest=manifest,
            sha256=hashlib.sha256((tmp_path / "images_background.zip").read_bytes()).hexdigest(),
        )
    assert not (tmp_path / "images_background").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["images_background.zip"]


def test_local_archive_md5_is_checked_when_no_sha256_is_given(tmp_path):
    entries, manifest = _small_split()
    (tmp_path / "images_background.zip").write_bytes(_archive(entries))
    with pytest.raises(DataError, match="MD5 of .* expected 68d2efa1b9178cc56df9314c21c6e718"):
        load_omniglot_originals(tmp_path, manifest=manifest)


@pytest.mark.parametrize(
    "bad", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "C:\\evil.png", "a\\..\\..\\evil.png"]
)
def test_extraction_refuses_entries_outside_the_target(tmp_path, bad):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_archive({"ok/fine.txt": b"x", bad: b"y"}))
    with pytest.raises(DataError, match="refusing the archive"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_extraction_refuses_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_bundled_manifest_covers_every_original_image():
    m = bundled_png_digests()
    assert len(m) == 32460
    assert "images_background/Alphabet_of_the_Magi/character01/0709_01.png" in m
    assert "images_evaluation/Tibetan/character14/1569_12.png" in m
    assert all(len(v) == 64 for v in list(m.values())[:10])


def test_bundled_manifest_matches_the_shared_originals_when_present():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot" / "images_evaluation.npz"
    if not shared.exists():
        pytest.skip("the packed originals are not beside this checkout")
    z = np.load(shared)
    m = bundled_png_digests()
    off, png, names, ids = z["png_offsets"], z["png"], z["characters"], z["char_ids"]
    for row in (0, 100, len(names) - 1):
        for k in (0, 19):
            blob = png[off[row * 20 + k] : off[row * 20 + k + 1]].tobytes()
            assert (
                m[f"images_evaluation/{names[row]}/{int(ids[row]):04d}_{k + 1:02d}.png"]
                == hashlib.sha256(blob).hexdigest()
            )
