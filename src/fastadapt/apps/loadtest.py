"""A bounded load test of a running ``fastadapt serve``: concurrent clients posting one drawing to ``/api/predict``.

Standard library only (``http.client`` over one keep-alive connection per client), so the load runs
anywhere the server does. Each request adapts (cached while the task is unchanged) and predicts;
:func:`load_test` reports requests per second, latency percentiles and every error. Traffic goes to
the URL given, which should be on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    """``requests`` answered 200 in ``seconds``; ``errors``: the others (status or exception, in words)."""

    clients: int
    seconds: float
    requests: int
    errors: tuple[str, ...]
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.clients} clients, {self.seconds:.1f} s: {self.requests} requests "
            f"({self.requests_per_second:.1f}/s), "
            f"latency p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"{len(self.errors)} errors"
        )


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def load_test(
    url: str, png: bytes, seconds: float = 60.0, clients: int = 4, path: str = "/api/predict?attribution=none"
) -> LoadResult:
    """``clients`` threads post ``png`` to ``url + path`` for ``seconds`` (each finishes its last request)."""
    parts = urlsplit(url)
    body, ctype = multipart("file", "drawing.png", png)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        con = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
        try:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    con.request(
                        "POST", path, body=body, headers={"Content-Type": ctype, "Content-Length": str(len(body))}
                    )
                    r = con.getresponse()
                    r.read()
                    if r.status == 200:
                        latencies[i].append((time.perf_counter() - start) * 1e3)
                    else:
                        errors.append(f"HTTP {r.status}")
                except (OSError, http.client.HTTPException) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    con.close()
                    con = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
        finally:
            con.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    lat = np.array([v for per in latencies for v in per]) if any(latencies) else np.array([float("nan")])
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return LoadResult(clients, elapsed, int(sum(len(per) for per in latencies)), tuple(errors), p50, p95, p99)


__all__ = ["LoadResult", "load_test", "multipart"]
