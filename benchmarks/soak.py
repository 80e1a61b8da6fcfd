"""Soak test of ``fastadapt serve``: concurrent clients, mixed traffic, a ``kill -9`` of the server in the middle.

    python benchmarks/soak.py RUN_DIR [--clients 16] [--seconds 300] [--kill-at 0.5] [--dir FOLDER]

A real server (``fastadapt serve RUN_DIR`` in a subprocess, uvicorn on a free port of 127.0.0.1) gets ``--clients``
threads for ``--seconds`` seconds, each on its own keep-alive connection, each sending a mix of reads (the state, a
stored example, a pool image, a prediction), writes (a new class, a relabel, a deleted example or class) and uploads
(a PNG to one of its classes). At ``--kill-at`` of the time the server gets SIGKILL and is started again on the same
folder and port; the clients reconnect. Each client works on its own classes and examples, so it knows what each
acknowledged (2xx) request left behind; a request that got no answer (the kill) leaves its object undecided.

At the end every acknowledged write is checked against the restarted server's state: a class or example whose
creation was acknowledged is there (with its last acknowledged class), unless its deletion was sent; one whose
deletion was acknowledged is gone. Prints the counts, p50/p99 latency per kind and the losses; exits 1 on a loss or
a 5xx. ``soak()`` is what ``tests/test_serve_soak.py`` runs for 10 s with 4 clients.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fastadapt.apps.loadtest import multipart
from fastadapt.apps.serve import free_port

MIX = (  # (kind, operation, weight)
    ("read", "state", 20),
    ("read", "example_png", 15),
    ("read", "pool_png", 10),
    ("read", "predict", 3),
    ("write", "new_class", 10),
    ("write", "relabel", 12),
    ("write", "delete_example", 5),
    ("write", "delete_class", 2),
    ("upload", "upload", 23),
)


@dataclass
class Ledger:
    """What one client knows: its classes and examples as the server acknowledged them, and the undecided ones."""

    classes: dict[int, str] = field(default_factory=dict)  # id -> name, acknowledged and not deleted
    examples: dict[int, int] = field(default_factory=dict)  # id -> class id, acknowledged and not deleted
    deleted_classes: set[int] = field(default_factory=set)  # acknowledged deletions
    deleted_examples: set[int] = field(default_factory=set)
    undecided: set[tuple[str, int]] = field(default_factory=set)  # ("class" | "example", id) with a request unanswered
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> ms of answered requests
    counts: dict[str, int] = field(default_factory=dict)  # "<operation> <status>" or "<operation> no answer"


@dataclass(frozen=True)
class SoakResult:
    clients: int
    seconds: float
    answered: int
    unanswered: int  # requests cut by the kill (no answer): their outcome is undecided, never counted as acknowledged
    refused: int  # requests sent while the server was down (connection refused): they changed nothing
    server_errors: int  # 5xx answers
    acknowledged_writes: int
    checked: int  # acknowledged objects checked after the restart
    lost: tuple[str, ...]  # acknowledged writes missing (or wrong) after the restart
    latency_ms: dict[str, tuple[float, float]]  # kind -> (p50, p99)
    downtime_s: float
    counts: dict[str, int]
    log: str  # the end of the server's output (tracebacks of 5xx answers)

    def summary(self) -> str:
        lat = ", ".join(f"{k} p50 {a:.1f} ms p99 {b:.1f} ms" for k, (a, b) in sorted(self.latency_ms.items()))
        return (
            f"{self.clients} clients, {self.seconds:.0f} s, one kill -9 ({self.downtime_s:.1f} s down): "
            f"{self.answered} answered, {self.unanswered} cut by the kill, {self.refused} refused while down, "
            f"{self.server_errors} 5xx; "
            f"{self.acknowledged_writes} acknowledged writes, {self.checked} objects checked after the restart, "
            f"{len(self.lost)} lost; {lat}"
        )


class Server:
    """``fastadapt serve`` in a subprocess on ``port``; :meth:`kill` sends SIGKILL, :meth:`start` starts it again."""

    def __init__(self, run_dir: str, folder: str, port: int) -> None:
        self.run_dir, self.folder, self.port = run_dir, folder, port
        self.proc: subprocess.Popen[str] | None = None
        self.log = Path(folder).parent / "serve.log"  # the server's output (a pipe nobody reads would block it)

    def start(self, timeout: float = 120.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastadapt.cli", "serve", self.run_dir, "--port", str(self.port)]
                + ["--dir", self.folder],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                status, _ = request("GET", self.port, "/api/state")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(method: str, port: int, path: str, body: bytes | None = None, ctype: str = "application/json"):
    """One request on a fresh connection: (status, body bytes)."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        con.request(method, path, body=body, headers={"Content-Type": ctype, "Content-Length": str(len(body or b""))})
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


def drawings(count: int = 16, seed: int = 0) -> list[bytes]:
    """Random 28x28 grey PNGs (bright strokes on dark) to upload."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        a = (rng.random((28, 28)) > 0.8).astype(np.uint8) * 255
        buf = io.BytesIO()
        Image.fromarray(a, "L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def client(i: int, port: int, stop: float, ledger: Ledger, pngs: list[bytes], seed: int) -> None:
    """Client ``i``: weighted random operations on its own classes and examples until ``stop``."""
    rng = random.Random(seed * 1000 + i)
    ops = [(k, o) for k, o, _ in MIX]
    weights = [w for _, _, w in MIX]
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    made = 0

    def send(method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        """(status, body, ms); status None: no answer (the server was killed mid-request), "refused": the server
        was down, so the request was never sent and changed nothing."""
        nonlocal con
        start = time.perf_counter()
        try:
            con.request(
                method, path, body=body, headers={"Content-Type": ctype, "Content-Length": str(len(body or b""))}
            )
            r = con.getresponse()
            data = r.read()
            return r.status, data, (time.perf_counter() - start) * 1e3
        except ConnectionRefusedError:  # raised by connect: nothing was sent
            con.close()
            return "refused", b"", 0.0
        except (OSError, http.client.HTTPException):
            con.close()
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            return None, b"", 0.0

    while time.perf_counter() < stop:
        kind, op = rng.choices(ops, weights)[0]
        live_classes = [c for c in ledger.classes if ("class", c) not in ledger.undecided]
        live_examples = [e for e in ledger.examples if ("example", e) not in ledger.undecided]
        if (op in ("upload", "relabel") and not live_classes) or (op == "delete_class" and len(live_classes) < 2):
            kind, op = "write", "new_class"
        if op in ("example_png", "relabel", "delete_example") and not live_examples:
            kind, op = "read", "state"
        target: tuple[str, int] | None = None
        if op == "state":
            status, data, ms = send("GET", "/api/state")
        elif op == "example_png":
            e = rng.choice(live_examples)
            status, data, ms = send("GET", f"/api/examples/{e}.png")
        elif op == "pool_png":
            status, data, ms = send("GET", f"/api/pool/{rng.randrange(20)}.png")
        elif op == "predict":
            body, ctype = multipart("file", "q.png", rng.choice(pngs))
            status, data, ms = send("POST", "/api/predict?attribution=none", body, ctype)
        elif op == "new_class":
            made += 1
            name = f"c{i}-{made}"
            status, data, ms = send("POST", "/api/classes", json.dumps({"name": name}).encode())
            if status == 201:
                ledger.classes[json.loads(data)["id"]] = name
        elif op == "upload":
            c = rng.choice(live_classes)  # an unanswered upload leaves the class as it was (and no known example)
            body, ctype = multipart("file", "x.png", rng.choice(pngs))
            status, data, ms = send("POST", f"/api/classes/{c}/examples", body, ctype)
            if status == 201:
                ledger.examples[json.loads(data)["id"]] = c
        elif op == "relabel":
            e, c = rng.choice(live_examples), rng.choice(live_classes)
            target = ("example", e)
            status, data, ms = send("PATCH", f"/api/examples/{e}", json.dumps({"class_id": c}).encode())
            if status == 200:
                ledger.examples[e] = c
        elif op == "delete_example":
            e = rng.choice(live_examples)
            target = ("example", e)
            status, data, ms = send("DELETE", f"/api/examples/{e}")
            if status == 204:
                del ledger.examples[e]
                ledger.deleted_examples.add(e)
        else:  # delete_class: its examples go with it
            c = rng.choice(live_classes)
            target = ("class", c)
            status, data, ms = send("DELETE", f"/api/classes/{c}")
            if status == 204:
                del ledger.classes[c]
                ledger.deleted_classes.add(c)
                for e in [e for e, k in ledger.examples.items() if k == c]:
                    del ledger.examples[e]
                    if ("example", e) not in ledger.undecided:  # an unanswered relabel may have moved it away
                        ledger.deleted_examples.add(e)
        key = f"{op} {status if status is not None else 'no answer'}"
        ledger.counts[key] = ledger.counts.get(key, 0) + 1
        if status == "refused":
            time.sleep(0.05)
        elif status is None:
            if target is not None:
                ledger.undecided.add(target)
                if target[0] == "class":  # a delete_class cut by the kill may have taken its examples
                    ledger.undecided.update(("example", e) for e, k in ledger.examples.items() if k == target[1])
            time.sleep(0.05)
        else:
            ledger.latencies.setdefault(kind, []).append(ms)
    con.close()


def verify(ledgers: list[Ledger], state: dict) -> tuple[int, list[str]]:
    """Compare what each client was told with the restarted server's ``state``: (objects checked, losses)."""
    classes = {c["id"]: c["name"] for c in state["classes"]}
    examples = {e["id"]: c["id"] for c in state["classes"] for e in c["examples"]}
    checked, lost = 0, []
    for ledger in ledgers:
        for c, name in ledger.classes.items():
            if ("class", c) not in ledger.undecided:
                checked += 1
                if classes.get(c) != name:
                    lost.append(f"class {c} ({name}) acknowledged, found {classes.get(c)!r}")
        for c in ledger.deleted_classes:
            checked += 1
            if c in classes:
                lost.append(f"class {c} deleted (acknowledged), still there")
        for e, c in ledger.examples.items():
            if ("example", e) not in ledger.undecided and ("class", c) not in ledger.undecided:
                checked += 1
                if examples.get(e) != c:
                    lost.append(f"example {e} in class {c} acknowledged, found class {examples.get(e)!r}")
        for e in ledger.deleted_examples:
            checked += 1
            if e in examples:
                lost.append(f"example {e} deleted (acknowledged), still there")
    return checked, lost


def soak(
    run_dir: str, clients: int = 16, seconds: float = 300.0, kill_at: float = 0.5, folder: str | None = None
) -> SoakResult:
    """Run the soak (see the module docstring) and return what it measured."""
    tmp = None if folder else tempfile.TemporaryDirectory(prefix="fastadapt-soak-")
    folder = folder or str(Path(tmp.name) / "app")  # type: ignore[union-attr]
    server = Server(str(run_dir), folder, free_port())
    server.start()
    ledgers = [Ledger() for _ in range(clients)]
    pngs = drawings()
    began = time.perf_counter()
    stop = began + seconds
    threads = [
        threading.Thread(target=client, args=(i, server.port, stop, ledgers[i], pngs, 0), daemon=True)
        for i in range(clients)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(max(0.0, began + kill_at * seconds - time.perf_counter()))
        down = time.perf_counter()
        server.kill()
        server.start()
        downtime = time.perf_counter() - down
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        server.kill()  # a second kill -9 after the last acknowledgement: the check reads a server started afresh
        server.start()
        status, data = request("GET", server.port, "/api/state")
        assert status == 200, (status, data)
        checked, lost = verify(ledgers, json.loads(data))
    finally:
        server.stop()
        log = server.log.read_text()[-4000:] if server.log.exists() else ""
        if tmp is not None:
            tmp.cleanup()
    counts: dict[str, int] = {}
    for ledger in ledgers:
        for k, v in ledger.counts.items():
            counts[k] = counts.get(k, 0) + v
    lat: dict[str, list[float]] = {}
    for ledger in ledgers:
        for k, v in ledger.latencies.items():
            lat.setdefault(k, []).extend(v)
    every = [v for vs in lat.values() for v in vs]
    percentiles = {k: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for k, v in lat.items() if v}
    if every:
        percentiles["all"] = (float(np.percentile(every, 50)), float(np.percentile(every, 99)))
    writes = sum(
        v
        for k, v in counts.items()
        if k.split()[0] in ("new_class", "upload", "relabel", "delete_example", "delete_class")
        and k.split()[1][:1] == "2"
    )
    return SoakResult(
        clients=clients,
        seconds=elapsed,
        answered=sum(v for k, v in counts.items() if not k.endswith(("no answer", "refused"))),
        unanswered=sum(v for k, v in counts.items() if k.endswith("no answer")),
        refused=sum(v for k, v in counts.items() if k.endswith("refused")),
        server_errors=sum(v for k, v in counts.items() if k.split()[1][:1] == "5"),
        acknowledged_writes=writes,
        checked=checked,
        lost=tuple(lost),
        latency_ms=percentiles,
        downtime_s=downtime,
        counts=dict(sorted(counts.items())),
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a trained run (fastadapt train ...)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--kill-at", type=float, default=0.5, help="when the server gets SIGKILL, as a fraction of the time")
    p.add_argument("--dir", help="the app's folder (default: a temporary one)")
    args = p.parse_args(argv)
    result = soak(args.run_dir, args.clients, args.seconds, args.kill_at, args.dir)
    print(result.summary())
    print("requests by operation and status:", json.dumps(result.counts))
    for line in result.lost[:20]:
        print("LOST:", line)
    if result.server_errors:
        print("the server's output ends:\n" + result.log)
    return 1 if result.lost or result.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
