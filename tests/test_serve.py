"""``fastadapt serve``: the API (FastAPI's TestClient), its SQLite state, bad input, two tabs, export, and a real
server on 127.0.0.1 that is killed and restarted (fastadapt/apps/)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the app extra: pip install 'fastadapt[app]' (CI installs it with [test])")
pytest.importorskip("httpx2", reason="FastAPI's TestClient needs httpx2 (CI installs it with [test])")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import fastadapt  # noqa: E402
from fastadapt.apps import export as exporting  # noqa: E402
from fastadapt.apps.inputs import MAX_BYTES, decode_image, encode_png  # noqa: E402
from fastadapt.apps.loadtest import load_test, multipart  # noqa: E402
from fastadapt.apps.serve import STATIC, create_app, free_port  # noqa: E402
from fastadapt.apps.teach import entropy, load_pool  # noqa: E402
from fastadapt.core.errors import DataError  # noqa: E402
from helpers import EXIT, STOP_WITHIN_S, signal_and_time, smoke_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return smoke_run(tmp_path_factory.mktemp("runs") / "proto")


@pytest.fixture(scope="module")
def run(run_dir):
    return fastadapt.load_run(run_dir)


@pytest.fixture(scope="module")
def pool():
    return load_pool("omniglot", (1, 28, 28))


@pytest.fixture
def client(run, pool, tmp_path):
    with TestClient(create_app(run, tmp_path / "app", pool)) as c:
        yield c


def png_of(pool, i):
    return encode_png(pool.x[int(i)])


def upload(client, class_id, png, source="draw", content_type="image/png"):
    return client.post(
        f"/api/classes/{class_id}/examples", files={"file": ("x.png", png, content_type)}, data={"source": source}
    )


def three_classes(client, pool):
    """Classes a, b, c with one example each (the first proposable pool image of three pool classes)."""
    ids = []
    for k, name in enumerate("abc"):
        cid = client.post("/api/classes", json={"name": name}).json()["id"]
        first = next(int(i) for i in pool.proposable() if int(pool.y[i]) == k)
        assert upload(client, cid, png_of(pool, first)).status_code == 201
        ids.append(cid)
    return ids


def test_classes_examples_and_a_live_prediction_with_its_explanation(client, pool):
    ids = three_classes(client, pool)
    state = client.get("/api/state").json()
    assert [c["name"] for c in state["classes"]] == ["a", "b", "c"] and all(
        len(c["examples"]) == 1 for c in state["classes"]
    )
    r = client.post("/api/predict", files={"file": ("q.png", png_of(pool, 5), "image/png")})
    assert r.status_code == 200
    d = r.json()
    probs = [p["probability"] for p in d["probabilities"]]
    assert [p["id"] for p in d["probabilities"]] == ids and sum(probs) == pytest.approx(1, abs=1e-5)
    assert d["predicted"]["id"] == ids[max(range(3), key=probs.__getitem__)]
    x = d["explanation"]
    assert x["kind"] == "prototypes" and min(range(3), key=x["distances"].__getitem__) == ids.index(
        d["predicted"]["id"]
    )
    assert x["attribution"]["method"] == "gradient" and len(x["attribution"]["map"][0]) == 28
    assert d["latency_ms"]["adapt"] > 0 and d["latency_ms"]["predict"] > 0
    stored = client.get(f"/api/examples/{state['classes'][0]['examples'][0]['id']}.png")
    assert stored.headers["content-type"] == "image/png" and decode_image(
        stored.content, (1, 28, 28), "never"
    ).shape == (1, 28, 28)


def test_a_class_or_example_that_does_not_exist_is_a_4xx_json_error(client, pool):
    cid = client.post("/api/classes", json={"name": "only"}).json()["id"]
    cases = [
        client.post("/api/classes/999/examples", files={"file": ("x.png", png_of(pool, 0), "image/png")}),
        client.get("/api/examples/999.png"),
        client.delete("/api/examples/999"),
        client.delete("/api/classes/999"),
        client.patch("/api/examples/999", json={"class_id": cid}),
        client.get("/api/pool/100000.png"),
        client.post("/api/pool/100000/label", json={"class_id": cid}),
        client.post(f"/api/pool/{int(pool.proposable()[0])}/label", json={"class_id": 999}),
        client.post("/api/rounds/999/close"),
    ]
    for r in cases:
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/json" and r.json()["detail"]
    assert (
        client.post("/api/predict", files={"file": ("q.png", png_of(pool, 0), "image/png")}).status_code == 409
    )  # no example yet
    assert client.post("/api/classes", json={"name": "only"}).status_code == 409
    assert client.post("/api/classes", json={"name": "  "}).status_code == 422
    assert client.post("/api/classes", json={"name": "x" * 65}).status_code == 422
    assert client.patch(f"/api/examples/{1}", json={"class_id": "1"}).status_code == 422


def bomb_png(width, height):
    """A valid PNG header claiming ``width x height`` (what a decompression bomb looks like before decoding)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_uploads_are_limited_in_size_and_type_and_decoded_safely(client, pool, tmp_path):
    cid = client.post("/api/classes", json={"name": "a"}).json()["id"]
    gif = io.BytesIO()
    Image.new("L", (28, 28)).save(gif, format="GIF")
    jpeg = io.BytesIO()
    Image.new("RGB", (50, 40), "white").save(jpeg, format="JPEG")
    assert upload(client, cid, gif.getvalue(), content_type="image/gif").status_code == 422
    assert upload(client, cid, b"not an image").status_code == 422
    assert upload(client, cid, png_of(pool, 0)[:40]).status_code == 422  # truncated
    r = upload(client, cid, bomb_png(30000, 30000))
    assert r.status_code == 422 and "pixels" in r.json()["detail"]
    r = upload(client, cid, b"\0" * (MAX_BYTES + 100_000))
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = upload(client, cid, jpeg.getvalue(), source="upload", content_type="image/jpeg")
    assert r.status_code == 201  # a white JPEG: converted to grey, resized, inverted (ink on paper -> bright on dark)
    stored = decode_image(client.get(f"/api/examples/{r.json()['id']}.png").content, (1, 28, 28), "never")
    assert float(stored.max()) == 0.0
    r = client.post(
        f"/api/classes/{cid}/examples",
        files={"file": ("../../evil.png", png_of(pool, 0), "image/png")},
        data={"source": "draw"},
    )
    assert r.status_code == 201  # the client's file name is ignored: images live in SQLite only
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) <= ["app.sqlite", "app.sqlite-shm", "app.sqlite-wal"]
    assert not (tmp_path / "evil.png").exists() and not Path("evil.png").exists()
    with pytest.raises(DataError, match="PNG or a JPEG"):
        decode_image(gif.getvalue(), (1, 28, 28))


def test_class_names_are_kept_verbatim_and_the_page_never_parses_them_as_html(client):
    name = '<img src=x onerror="alert(1)"> & Ω'
    assert client.post("/api/classes", json={"name": name}).status_code == 201
    assert client.get("/api/state").json()["classes"][0]["name"] == name
    page = client.get("/").text
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    assert "textContent" in page and page == (STATIC / "index.html").read_text()


def test_two_tabs_editing_the_same_task_stay_consistent(run, pool, tmp_path):
    app = create_app(run, tmp_path / "app", pool)
    with TestClient(app) as tab1, TestClient(app) as tab2:
        rev = tab2.get("/api/state").json()["revision"]
        cid = tab1.post("/api/classes", json={"name": "shared"}).json()["id"]
        seen = tab2.get("/api/state").json()
        assert seen["revision"] > rev and [c["name"] for c in seen["classes"]] == ["shared"]
        assert tab2.delete(f"/api/classes/{cid}").status_code == 204
        assert upload(tab1, cid, png_of(pool, 0)).status_code == 404  # tab 1 still shows the class: a clear 404
        ids = three_classes(tab1, pool)
        r1, r2 = tab1.post("/api/rounds?k=3").json(), tab2.post("/api/rounds?k=3").json()
        assert r1["id"] == r2["id"] and r1["proposed"] == r2["proposed"]  # one open round, whoever asks
        target = r1["proposed"][0]
        results = []

        def label(tab):
            results.append(tab.post(f"/api/pool/{target}/label", json={"class_id": ids[0]}).status_code)

        threads = [threading.Thread(target=label, args=(t,)) for t in (tab1, tab2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [201, 409]  # labelled once
        pooled = [e for c in tab2.get("/api/state").json()["classes"] for e in c["examples"] if e["source"] == "pool"]
        assert len(pooled) == 1
    # a second server process on the same folder (a restart) reads the same state
    with TestClient(create_app(run, tmp_path / "app", pool)) as again:
        assert [c["name"] for c in again.get("/api/state").json()["classes"]] == ["a", "b", "c"]


def test_uncertainty_sampling_proposes_the_least_sure_and_each_round_scores_both_arms(client, run, pool):
    ids = three_classes(client, pool)
    r = client.post("/api/rounds?k=4").json()
    assert len(r["todo"]) == 4 and not any(bool(pool.held_out[i]) for i in r["proposed"])
    # the proposals are the 4 highest entropies among every unlabelled proposable example (an independent recomputation)
    state = client.get("/api/state").json()
    sx = torch.stack(
        [
            decode_image(client.get(f"/api/examples/{c['examples'][0]['id']}.png").content, (1, 28, 28), "never")
            for c in state["classes"]
        ]
    )
    predictor = run.algorithm.adapt(sx, torch.arange(3))
    candidates = [int(i) for i in pool.proposable() if int(i) not in state["pool"]["labelled"]]
    with torch.no_grad():
        h = entropy(torch.softmax(predictor(pool.x[candidates]).double(), -1))
    assert sorted(r["proposed"]) == sorted(candidates[int(j)] for j in h.argsort(descending=True)[:4])
    held = int(pool.held_out.nonzero()[0])
    assert client.post(f"/api/pool/{held}/label", json={"class_id": ids[0]}).status_code == 409
    for k, p in enumerate(r["todo"]):
        out = client.post(
            f"/api/pool/{p['pool_index']}/label", json={"class_id": ids[int(pool.y[p["pool_index"]]) % 3]}
        )
        assert out.status_code == 201 and out.json()["adapt_ms"] > 0
        assert ("round" in out.json()) == (k == 3)  # the round closes itself with its last label
    closed = out.json()["round"]
    assert closed["labelled"] == 4 and closed["evaluated"] > 0
    assert 0 <= closed["acc_uncertainty"] <= 1 and 0 <= closed["acc_random"] <= 1
    assert client.post(f"/api/pool/{r['proposed'][0]}/label", json={"class_id": ids[0]}).status_code == 409
    rounds = client.get("/api/state").json()["rounds"]
    assert rounds[0]["closed"] and rounds[0]["acc_uncertainty"] == closed["acc_uncertainty"]
    nxt = client.post("/api/rounds?k=2").json()
    assert nxt["id"] == r["id"] + 1 and not set(nxt["proposed"]) & set(r["proposed"])


def test_export_and_import_round_trip_restores_the_task_and_its_prototypes(client, run, pool, tmp_path):
    three_classes(client, pool)
    blob = client.get("/api/export").content
    record = exporting.read_task_record(blob, (1, 28, 28))
    assert record["run"] == str(Path(run.folder.path).resolve()) and record["classes"] == ["a", "b", "c"]
    with TestClient(create_app(run, tmp_path / "other", pool)) as other:
        r = other.post("/api/import", files={"file": ("task.pt", blob, "application/octet-stream")})
        assert r.status_code == 200 and r.json()["examples"] == 3
        assert [c["name"] for c in other.get("/api/state").json()["classes"]] == ["a", "b", "c"]
        again = exporting.read_task_record(other.get("/api/export").content)
        torch.testing.assert_close(again["state"]["prototypes"], record["state"]["prototypes"])
        assert torch.equal(again["x"], record["x"])
        bad = other.post("/api/import", files={"file": ("task.pt", b"garbage", "application/octet-stream")})
        assert bad.status_code == 422 and "not an exported fastadapt task" in bad.json()["detail"]


def test_the_torchscript_predictor_reloads_and_gives_the_same_outputs(client, run, pool):
    three_classes(client, pool)
    module = exporting.load_torchscript(client.get("/api/export/torchscript").content)
    state = client.get("/api/state").json()
    sx = torch.stack(
        [
            decode_image(client.get(f"/api/examples/{c['examples'][0]['id']}.png").content, (1, 28, 28), "never")
            for c in state["classes"]
        ]
    )
    predictor = run.algorithm.adapt(sx, torch.arange(3))
    x = pool.x[:7]
    torch.testing.assert_close(module(x), predictor(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module(x[:1]), predictor(x[:1]), rtol=1e-5, atol=1e-5)  # another batch size than traced


def test_a_gradient_based_predictor_exports_to_torchscript_too():
    torch.manual_seed(0)
    algo = fastadapt.MAML(fastadapt.nn.Conv4(out_features=3, hidden=4, image_size=16), inner_steps=2).eval()
    sx, sy = torch.rand(6, 1, 16, 16), torch.arange(3).repeat_interleave(2)
    predictor = algo.adapt(sx, sy)
    module = exporting.load_torchscript(exporting.torchscript_predictor(predictor, sx[:2]))
    x = torch.rand(5, 1, 16, 16)
    torch.testing.assert_close(module(x), predictor(x), rtol=1e-5, atol=1e-5)


# --- a real server --------------------------------------------------------------------------------------


def start_server(run_dir, folder, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastadapt.cli", "serve", str(run_dir), "--port", str(port), "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            return proc, http_json("GET", port, "/api/state")
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not answer")


def http_json(method, port, path, body=None, content_type="application/json"):
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        con.request(
            method, path, body=data, headers={"Content-Type": content_type, "Content-Length": str(len(data or b""))}
        )
        r = con.getresponse()
        text = r.read()
        assert r.status < 400, (r.status, text)
        return json.loads(text) if text else None
    finally:
        con.close()


def two_classes(port, pool):
    """Two classes of one example each through the running server's API; its state after."""
    for name in ("a", "b"):
        cid = http_json("POST", port, "/api/classes", {"name": name})["id"]
        body, ctype = multipart("file", "x.png", png_of(pool, int(pool.proposable()[cid])))
        http_json("POST", port, f"/api/classes/{cid}/examples", body, ctype)
    return http_json("GET", port, "/api/state")


def assert_restart_keeps(run_dir, folder, port, before):
    """A server started again on ``folder`` has ``before``'s classes and revision."""
    proc, after = start_server(run_dir, folder, port)
    try:
        assert after["classes"] == before["classes"] and after["revision"] == before["revision"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_a_killed_server_loses_nothing_it_acknowledged_and_answers_a_bounded_load(run_dir, pool, tmp_path):
    port = free_port()
    proc, state = start_server(run_dir, tmp_path / "app", port)
    try:
        assert state["classes"] == []
        before = two_classes(port, pool)
        result = load_test(
            f"http://127.0.0.1:{port}/",
            png_of(pool, 3),
            seconds=2,
            clients=4,
            path="/api/predict?attribution=none&fresh=true",
        )
        assert result.requests > 0 and result.errors == () and result.p95_ms >= result.p50_ms > 0
        assert "requests" in result.summary() and "p95" in result.summary()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert_restart_keeps(run_dir, tmp_path / "app", port, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_within_5_s_with_128_plus_it_during_a_prediction_and_keeps_the_state(
    sig, run_dir, pool, tmp_path
):
    """SIGTERM (what systemd, Slurm and Kubernetes send) or Ctrl-C while clients wait on predictions: the server stops
    within 5 s (a request still running after 3 s is cut), exits 143 / 130, and a restart has every class it
    acknowledged."""
    port = free_port()
    proc, _ = start_server(run_dir, tmp_path / "app", port)
    try:
        before = two_classes(port, pool)
        load = threading.Thread(
            target=load_test,
            args=(f"http://127.0.0.1:{port}/", png_of(pool, 3)),
            kwargs={"seconds": 4, "clients": 4, "path": "/api/predict?attribution=none&fresh=true"},
            daemon=True,
        )
        load.start()
        time.sleep(1.0)
        took = signal_and_time(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        output = proc.stdout.read()
        proc.stdout.close()
    assert proc.returncode == EXIT[sig], output[-2000:]
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the server"
    assert "Traceback" not in output, output[-2000:]
    assert_restart_keeps(run_dir, tmp_path / "app", port, before)


def test_serve_refuses_a_remote_bind_without_allow_remote(run_dir, capsys):
    from fastadapt import cli

    assert cli.main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
