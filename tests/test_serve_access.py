"""``fastadapt serve``: who may use it (the token of ``--allow-remote``) and what it reads from files a person names
(imported task archives, pool folders with links); fastadapt/apps/access.py, export.py, teach.py."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

import pytest
import torch

pytest.importorskip("fastapi", reason="the app extra: pip install 'fastadapt[app]' (CI installs it with [test])")
pytest.importorskip("httpx2", reason="FastAPI's TestClient needs httpx2 (CI installs it with [test])")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import fastadapt  # noqa: E402
from fastadapt.apps import export as exporting  # noqa: E402
from fastadapt.apps.access import COOKIE, is_local, new_token  # noqa: E402
from fastadapt.apps.inputs import encode_png  # noqa: E402
from fastadapt.apps.serve import create_app, free_port  # noqa: E402
from fastadapt.apps.teach import load_pool  # noqa: E402
from fastadapt.core.errors import DataError  # noqa: E402
from helpers import smoke_run  # noqa: E402

REMOTE = ("203.0.113.7", 40000)  # a documentation address (RFC 5737): another machine


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return smoke_run(tmp_path_factory.mktemp("runs") / "proto")


@pytest.fixture(scope="module")
def run(run_dir):
    return fastadapt.load_run(run_dir)


@pytest.fixture(scope="module")
def pool():
    return load_pool("omniglot", (1, 28, 28))


def test_loopback_addresses_are_local_and_nothing_else_is():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert is_local(host), host
    for host in ("203.0.113.7", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "0.0.0.0", "testclient", "", None):
        assert not is_local(host), host
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43


def test_other_machines_need_the_token_and_this_one_does_not(run, pool, tmp_path):
    token = new_token()
    app = create_app(run, tmp_path / "app", pool, token=token)
    store = app.state.app.store
    with TestClient(app, client=REMOTE) as remote:
        for method, path in (("GET", "/"), ("GET", "/api/state"), ("GET", "/openapi.json"), ("GET", "/api/pool/0.png")):
            r = remote.request(method, path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
            assert "token" in r.json()["detail"] and "\n" not in r.json()["detail"]
        rev = store.revision()
        r = remote.post("/api/classes", json={"name": "intruder"})
        assert r.status_code == 401 and store.classes() == [] and store.revision() == rev  # refused before any write
        assert remote.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert remote.get("/api/state", headers={"Authorization": f"Bearer {token[:-1]}"}).status_code == 401
        ok = remote.post("/api/classes", json={"name": "a"}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 201 and [c["name"] for c in store.classes()] == ["a"]
        page = remote.get(f"/?token={token}")  # the page opened with ?token= sets a cookie for its later requests
        assert page.status_code == 200 and "<html" in page.text.lower()
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={token}") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert remote.get("/api/state").status_code == 200  # the client sends the cookie back
        remote.cookies.clear()
        assert remote.get("/api/state").status_code == 401
    for local in (("127.0.0.1", 5000), ("::1", 5000)):
        with TestClient(app, client=local) as c:
            r = c.get("/api/state")
            assert r.status_code == 200 and "set-cookie" not in r.headers
            assert c.post("/api/classes", json={"name": f"from {local[0]}"}).status_code == 201


def test_without_allow_remote_no_token_is_asked(run, pool, tmp_path):
    """Without a token the app is bound to a loopback address (serve_command refuses another --host), and every
    request it receives is served as before."""
    with TestClient(create_app(run, tmp_path / "app", pool), client=REMOTE) as c:
        assert c.get("/api/state").status_code == 200


def start(run_dir, folder, *extra):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastadapt.cli",
            "serve",
            str(run_dir),
            "--port",
            str(port),
            "--dir",
            str(folder),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, port


def get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:  # not listening yet
        return None


def outside_address():
    """This machine's address on its default route (not loopback), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
            host = s.getsockname()[0]
        except OSError:
            return None
    return None if is_local(host) or host == "0.0.0.0" else host


def test_allow_remote_prints_a_fresh_token_and_the_server_asks_other_machines_for_it(run_dir, tmp_path):
    host = outside_address()
    bind = "0.0.0.0" if host else "127.0.0.1"
    proc, port = start(run_dir, tmp_path / "app", "--host", bind, "--allow-remote")
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert f"http://{bind}:{port}/" in first, first + second
        assert second.startswith("fastadapt serve: token "), second
        token = second.split()[3]
        assert len(token) >= 43 and f"?token={token}" in second
        deadline = time.time() + 60
        while time.time() < deadline and get(f"http://127.0.0.1:{port}/api/state") != 200:
            time.sleep(0.2)
        assert get(f"http://127.0.0.1:{port}/api/state") == 200  # this machine: no token
        if host is not None:  # the same server reached through this machine's outside address: another peer
            assert get(f"http://{host}:{port}/api/state") == 401
            assert get(f"http://{host}:{port}/api/state", {"Authorization": f"Bearer {token}"}) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


# --- files a person names ---------------------------------------------------------------------------------------


def zip_with(members, symlink=None):
    """A zip archive with ``members`` (name -> bytes); ``symlink``: a member stored as a symbolic link."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_an_imported_archive_with_members_outside_it_links_or_too_much_is_refused_before_it_is_read(
    run, pool, tmp_path, monkeypatch
):
    good = io.BytesIO()
    torch.save({"format": exporting.FORMAT}, good)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("storages")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    cases = {
        "outside it": zip_with({"archive/data.pkl": b"x", "../../evil": b"x"}),
        "outside it;": zip_with({"/etc/cron.d/evil": b"x"}),
        "outside": zip_with({"archive\\..\\..\\evil": b"x"}),
        "symbolic link": zip_with({"archive/data.pkl": b"x"}, symlink="archive/data/0"),
        "members": zip_with({f"archive/{i}": b"" for i in range(exporting.MAX_MEMBERS + 1)}),
        "not a zip archive": tar.getvalue(),
    }
    for words, data in cases.items():
        with pytest.raises(DataError, match=words):
            exporting.check_archive(data)
    exporting.check_archive(good.getvalue())  # what torch.save writes passes
    monkeypatch.setattr(exporting, "MAX_UNPACKED", 1000)  # a zip bomb in small
    with pytest.raises(DataError, match="unpacks to 1001 bytes"):
        exporting.check_archive(zip_with({"archive/big": b"\0" * 1001}))
    monkeypatch.undo()
    app = create_app(run, tmp_path / "app", pool)
    store = app.state.app.store
    cid = store.create_class("kept")["id"]
    store.add_example(cid, encode_png(pool.x[0]), "draw")
    before = (store.classes(), store.revision())
    with TestClient(app) as c:
        for data in cases.values():
            r = c.post("/api/import", files={"file": ("task.pt", data, "application/octet-stream")})
            assert r.status_code == 422 and "\n" not in r.json()["detail"], r.text
    assert (store.classes(), store.revision()) == before


def test_a_pool_folder_with_a_link_outside_it_is_refused_and_links_inside_it_are_fine(tmp_path):
    pool_dir = tmp_path / "pool"
    for c in ("a", "b"):
        (pool_dir / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 40 * i + 60 * (c == "b")).save(pool_dir / c / f"{i}.png")
    (pool_dir / "a" / "again.png").symlink_to(pool_dir / "a" / "0.png")  # inside: fine
    loaded = load_pool(str(pool_dir), (1, 28, 28))
    assert loaded.names == ("a", "b") and len(loaded.y) == 7
    secret = tmp_path / "secret.png"
    Image.new("L", (28, 28), 255).save(secret)
    (pool_dir / "b" / "x.png").symlink_to(secret)
    with pytest.raises(DataError, match=r"--pool .*b/x.png is a link to .*secret.png, outside the folder"):
        load_pool(str(pool_dir), (1, 28, 28))
    (pool_dir / "b" / "x.png").unlink()
    (pool_dir / "c").symlink_to(tmp_path, target_is_directory=True)  # a linked class folder outside
    with pytest.raises(DataError, match="outside the folder"):
        load_pool(str(pool_dir), (1, 28, 28))
