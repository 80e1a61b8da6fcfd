"""``fastadapt serve`` under load with a ``kill -9`` in the middle: nothing it acknowledged is lost (the short
version of ``benchmarks/soak.py``: 4 clients for 10 s; the full one is 16 clients for 5 minutes)."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the app extra: pip install 'fastadapt[app]' (CI installs it with [test])")
pytest.importorskip("uvicorn", reason="the app extra: pip install 'fastadapt[app]' (CI installs it with [test])")

from helpers import smoke_run  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("fastadapt_soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_server_killed_under_mixed_load_loses_nothing_it_acknowledged(tmp_path):
    soak = load_soak()
    result = soak.soak(str(smoke_run(tmp_path / "proto")), clients=4, seconds=10, kill_at=0.5)
    assert result.lost == (), result.lost[:5]
    assert result.server_errors == 0, result.counts
    # the load really was mixed and the kill really cut requests: the check had something to check
    assert result.acknowledged_writes >= 20 and result.checked >= 10, result.summary()
    ops = {k.split()[0] for k, v in result.counts.items() if k.split()[1][:1] == "2"}
    assert ops >= {"state", "example_png", "new_class", "upload", "relabel", "delete_example"}, result.counts
    assert result.unanswered + result.refused > 0, result.counts  # requests met the kill
    p50, p99 = result.latency_ms["all"]
    assert 0 < p50 <= p99


def test_the_ledger_check_finds_a_lost_write_and_a_deleted_one_that_came_back():
    soak = load_soak()
    ledger = soak.Ledger(classes={1: "c0-1", 2: "c0-2"}, examples={10: 1, 11: 2}, deleted_examples={12})
    ledger.undecided.add(("example", 11))  # its relabel got no answer: either class is right
    state = {
        "classes": [{"id": 1, "name": "c0-1", "examples": [{"id": 12}]}, {"id": 2, "name": "c0-2", "examples": []}]
    }
    checked, lost = soak.verify([ledger], state)
    assert checked == 4 and len(lost) == 2
    assert "example 10 in class 1 acknowledged" in lost[0] and "example 12 deleted" in lost[1]
    state["classes"][0]["examples"] = [{"id": 10}]
    assert soak.verify([ledger], state) == (4, [])


def test_a_class_deleted_between_two_reads_of_a_request_never_breaks_it(tmp_path):
    """A request reads the labelled set and the classes in one snapshot: under the soak, a class deleted by another
    request between two separate reads gave a KeyError (a 500). Here a deletion runs right after the first read of
    each request, deterministically."""
    from fastapi.testclient import TestClient

    import fastadapt
    from fastadapt.apps.inputs import encode_png
    from fastadapt.apps.serve import create_app
    from fastadapt.apps.teach import load_pool

    pytest.importorskip("httpx2", reason="FastAPI's TestClient needs httpx2 (CI installs it with [test])")
    pool = load_pool("omniglot", (1, 28, 28))
    app = create_app(fastadapt.load_run(smoke_run(tmp_path / "proto")), tmp_path / "app", pool)
    store = app.state.app.store
    png = encode_png(pool.x[0])
    plain_read = store.read
    doomed: list[int] = []

    @contextmanager
    def read_then_delete():
        with plain_read() as con:
            yield con
        while doomed:  # another request deletes a class between this read and the next
            store.delete_class(doomed.pop())

    store.read = read_then_delete
    keep = store.create_class("kept")["id"]
    store.add_example(keep, png, "draw")
    with TestClient(app, raise_server_exceptions=False) as c:
        for path in ("/api/predict?attribution=none", "/api/export", "/api/rounds?k=2", "/api/export/torchscript"):
            gone = store.create_class(f"gone before {path}")["id"]
            store.add_example(gone, png, "draw")
            doomed.append(gone)
            files = {"file": ("q.png", png, "image/png")} if "predict" in path else None
            r = c.post(path, files=files) if path.startswith(("/api/predict", "/api/rounds")) else c.get(path)
            assert r.status_code == 200 and not doomed, (path, r.status_code, r.text[:200])
            assert gone not in {cl["id"] for cl in store.classes()}
        rid = c.get("/api/state").json()["round"]["id"]
        doomed.append(store.create_class("gone before close")["id"])
        store.add_example(doomed[0], png, "draw")
        assert c.post(f"/api/rounds/{rid}/close").status_code == 200 and not doomed
