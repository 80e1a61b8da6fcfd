"""``fastadapt serve RUN``: a local web app to teach a trained run new classes, with a person in the loop.

The page (``static/index.html``) lets a person create classes, draw (canvas) or upload a few examples
of each, see the prediction for a new drawing live (confidences, latency, the explanation of
:func:`fastadapt.eval.explanations.explain`), label the pool examples the model is least sure about
(:mod:`fastadapt.apps.teach`), compare with random labelling round by round, and export or import the
adapted task (:mod:`fastadapt.apps.export`). State lives in SQLite (:mod:`fastadapt.apps.store`).
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from fastadapt.apps import export as exporting
from fastadapt.apps.inputs import MAX_BYTES, decode_image, encode_png
from fastadapt.apps.store import Conflict, InvalidName, NotFound, Store
from fastadapt.apps.teach import Learner, Pool, load_pool, propose, score_rounds
from fastadapt.core.episodes import Episode
from fastadapt.core.errors import ConfigError, DataError, FastAdaptError
from fastadapt.eval.explanations import explain

try:
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
except ImportError:  # pragma: no cover - the extra is installed wherever the app runs
    raise FastAdaptError("fastadapt serve needs the app extra: pip install 'fastadapt[app]'") from None

MAX_BODY = MAX_BYTES + 64 * 1024  # an image plus the multipart envelope
MAX_IMPORT = 64 * 1024 * 1024  # an exported task
STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class App:
    """What the endpoints share: the run, its learner, the pool and the store."""

    run: Any
    store: Store
    pool: Pool
    learner: Learner
    shape: tuple[int, ...]
    invert: str = "auto"
    last: dict[str, float] = field(default_factory=dict)  # latencies of the last adaptation and prediction (ms)

    def adapted(self, fresh: bool = False) -> Any:
        """The task adapted at the store's current revision (decoded and adapted again only when it changed, or
        ``fresh``)."""
        examples, pngs, rev = self.store.labelled_set()
        cached = self.learner.cached
        images = (
            list(cached.support_x)
            if cached is not None and cached.revision == rev
            else [decode_image(p, self.shape, "never") for p in pngs]
        )
        order = [c["id"] for c in self.store.classes()]
        a = self.learner.adapt(examples, images, rev, order, fresh)
        self.last["adapt_ms"] = a.adapt_ms
        return a, examples, images


def create_app(run: Any, folder: str | Path, pool: Pool, invert: str = "auto") -> Any:
    """The FastAPI application for ``run`` (from :func:`fastadapt.load_run`) with its state in ``folder``.

    Endpoints (JSON unless said; every error is ``{"detail": "<one line>"}`` with a 4xx status)::

        GET    /                          the page
        GET    /api/state                 run, classes with example ids, pool, open round, rounds, revision
        POST   /api/classes               {"name"} -> 201 {"id", "name"}; 409 a duplicate, 422 an invalid name
        DELETE /api/classes/{id}          204; its examples go with it
        POST   /api/classes/{id}/examples multipart "file" (PNG/JPEG; "source": draw | upload) -> 201 {"id", "adapt_ms"}
        GET    /api/examples/{id}.png     the stored model-input image
        PATCH  /api/examples/{id}         {"class_id"}: correct a label
        DELETE /api/examples/{id}         204
        POST   /api/predict               multipart "file" -> probabilities, prediction, latency, explanation
                                          (?attribution=gradient|integrated_gradients|none; ?fresh=true adapts again)
        POST   /api/rounds                open a round: the k most uncertain pool examples (?k=4); the open round if any
        POST   /api/rounds/{id}/close     score both arms on the held-out pool now
        GET    /api/pool/{index}.png      a pool image
        POST   /api/pool/{index}/label    {"class_id"} -> the example; a round closes when all its examples are labelled
        GET    /api/export                the adapted task (torch.save file, see export.py)
        POST   /api/import                multipart "file": an exported task replaces the classes and examples
        GET    /api/export/torchscript    the adapted predictor as TorchScript

    Security: request bodies over :data:`MAX_BODY` bytes are refused (413) before they are read; images are
    checked and decoded by :mod:`fastadapt.apps.inputs`; nothing is written under a name a client chooses
    (images live in SQLite); class names are shown with ``textContent`` (never parsed as HTML).
    """
    shape = run.input_shape
    store = Store(folder)
    if store.get_meta("run") is None:
        store.set_meta("run", str(run.folder.path.resolve()))
    state = App(run, store, pool, Learner(run.algorithm, shape), shape, invert)
    api = FastAPI(title="fastadapt serve", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.app = state

    @api.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        limit = MAX_IMPORT if request.url.path == "/api/import" else MAX_BODY
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(
                {"detail": f"the request has {length} bytes; at most {limit} are accepted"}, status_code=413
            )
        if length is None and request.method in ("POST", "PATCH", "PUT"):
            return JSONResponse({"detail": "a request body needs a Content-Length"}, status_code=411)
        return await call_next(request)

    for exc, status in (
        (NotFound, 404),
        (Conflict, 409),
        (InvalidName, 422),
        (DataError, 422),
        (ConfigError, 422),
        (FastAdaptError, 400),
    ):
        api.add_exception_handler(exc, _handler(status))

    async def read_image(file: UploadFile) -> torch.Tensor:
        data = await file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise DataError(f"the image has more than {MAX_BYTES} bytes")
        return decode_image(data, shape, invert)

    @api.get("/")
    def index() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/api/state")
    def get_state() -> dict[str, Any]:
        examples, _, rev = store.labelled_set()
        labelled = sorted(e.pool_index for e in examples if e.pool_index is not None)
        cfg = run.config
        return {
            "revision": rev,
            "run": {
                "path": str(run.folder.path),
                "algorithm": cfg.algorithm,
                "weights": run.weights,
                "step": run.step,
                "input_shape": list(shape),
            },
            "classes": store.classes(),
            "pool": {
                "source": pool.source,
                "size": len(pool.y),
                "held_out": int(pool.held_out.sum()),
                "labelled": labelled,
            },
            "round": store.open_round_now(),
            "rounds": store.rounds(),
            "latency_ms": state.last,
        }

    @api.post("/api/classes", status_code=201)
    def add_class(body: dict[str, Any]) -> dict[str, Any]:
        return store.create_class(body.get("name"))

    @api.delete("/api/classes/{class_id}", status_code=204)
    def delete_class(class_id: int) -> Response:
        store.delete_class(class_id)
        return Response(status_code=204)

    @api.post("/api/classes/{class_id}/examples", status_code=201)
    async def add_example(
        class_id: int, file: Annotated[UploadFile, File()], source: Annotated[str, Form()] = "upload"
    ) -> dict[str, Any]:
        if source not in ("draw", "upload"):
            raise DataError(f"source={source!r}; use draw or upload")
        x = await read_image(file)
        return {"id": await run_in_threadpool(store.add_example, class_id, encode_png(x), source)}

    @api.get("/api/examples/{example_id}.png")
    def example_png(example_id: int) -> Response:
        return Response(store.example_png(example_id), media_type="image/png")

    @api.patch("/api/examples/{example_id}")
    def relabel(example_id: int, body: dict[str, Any]) -> dict[str, Any]:
        store.relabel_example(example_id, _int(body, "class_id"))
        return {"id": example_id, "class_id": body["class_id"]}

    @api.delete("/api/examples/{example_id}", status_code=204)
    def delete_example(example_id: int) -> Response:
        store.delete_example(example_id)
        return Response(status_code=204)

    @api.post("/api/predict")
    async def predict(
        file: Annotated[UploadFile, File()], attribution: str = "gradient", fresh: bool = False
    ) -> dict[str, Any]:
        x = await read_image(file)
        return await run_in_threadpool(_predict, state, x, attribution, fresh)

    @api.post("/api/rounds")
    def open_round(k: int = 4) -> dict[str, Any]:
        if not 1 <= k <= 50:
            raise DataError(f"k={k}; propose 1 to 50 examples a round")
        current = store.open_round_now()
        a, examples, _ = state.adapted()
        labelled = {e.pool_index for e in examples if e.pool_index is not None}
        if current is None:
            proposals = propose(state.learner, a, pool, labelled, k)
            if not proposals:
                raise Conflict("every proposable pool example is labelled")
            current = store.open_round([p["pool_index"] for p in proposals])
        return _round_view(state, current, a, labelled)

    @api.post("/api/rounds/{round_id}/close")
    def close_round(round_id: int) -> dict[str, Any]:
        return _close(state, round_id)

    @api.get("/api/pool/{index}.png")
    def pool_png(index: int) -> Response:
        pool.check(index)
        return Response(encode_png(pool.x[index]), media_type="image/png")

    @api.post("/api/pool/{index}/label", status_code=201)
    def label_pool(index: int, body: dict[str, Any]) -> dict[str, Any]:
        pool.check(index)
        if bool(pool.held_out[index]):
            raise Conflict(f"pool example {index} is held out for scoring; it is never labelled")
        example = store.add_example(_int(body, "class_id"), encode_png(pool.x[index]), "pool", index)
        out: dict[str, Any] = {"id": example}
        a, examples, _ = state.adapted()
        out["adapt_ms"] = a.adapt_ms
        current = store.open_round_now()
        if current is not None:
            done = {e.pool_index for e in examples if e.pool_index is not None}
            if all(i in done for i in current["proposed"]):
                out["round"] = _close(state, current["id"])
        return out

    @api.get("/api/export")
    def export_task() -> Response:
        a, examples, images = state.adapted()
        classes = store.classes()
        names = [c["name"] for c in classes if c["id"] in set(a.class_ids)]
        record = exporting.task_record(
            run, names, torch.stack(images), a.support_y, [e.source for e in examples], a.predictor
        )
        return Response(
            exporting.write_task_record(record),
            media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="adapted-task.pt"'},
        )

    @api.post("/api/import")
    async def import_task(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        data = await file.read(MAX_IMPORT + 1)
        if len(data) > MAX_IMPORT:
            raise DataError(f"the file has more than {MAX_IMPORT} bytes")
        record = exporting.read_task_record(data, shape)
        x = record["x"].float().div(255.0)
        rows = [(int(y), encode_png(xi), s, None) for xi, y, s in zip(x, record["y"], record["sources"])]
        await run_in_threadpool(store.replace_all, record["classes"], rows)
        return {"classes": len(record["classes"]), "examples": len(x), "from_run": record["run"]}

    @api.get("/api/export/torchscript")
    def export_torchscript() -> Response:
        a, _, _ = state.adapted()
        data = exporting.torchscript_predictor(a.predictor, a.support_x[:2])
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="predictor.pt"'},
        )

    return api


def _handler(status: int) -> Any:
    async def handle(request: Any, exc: Exception) -> Any:
        return JSONResponse({"detail": " ".join(str(exc).splitlines())}, status_code=status)

    return handle


def _int(body: dict[str, Any], key: str) -> int:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"{key} must be an integer, found {v!r}")
    return v


def _predict(state: App, x: torch.Tensor, attribution: str, fresh: bool = False) -> dict[str, Any]:
    """Probabilities, prediction, latency and explanation of one drawing (the page calls this live).
    ``fresh``: adapt again even if the task is unchanged (to measure adaptation under load)."""
    a, _, _ = state.adapted(fresh)
    probs, ms = state.learner.probabilities(a, x.unsqueeze(0))
    state.last["predict_ms"] = ms
    classes = {c["id"]: c["name"] for c in state.store.classes()}
    task = Episode(a.support_x, a.support_y, x.unsqueeze(0), torch.zeros(1, dtype=torch.long))
    start = time.perf_counter()
    with state.learner.lock:
        expl = explain(
            state.learner.algorithm, task, predictor=a.predictor, attribution=attribution, classes=len(a.class_ids)
        )
    record = expl.to_dict()
    q = record["queries"][0]
    best = int(probs[0].argmax())
    return {
        "probabilities": [
            {"id": c, "name": classes.get(c, "?"), "probability": float(p)} for c, p in zip(a.class_ids, probs[0])
        ],
        "predicted": {"id": a.class_ids[best], "name": classes.get(a.class_ids[best], "?")},
        "latency_ms": {"adapt": a.adapt_ms, "predict": ms, "explain": (time.perf_counter() - start) * 1e3},
        "explanation": {
            "kind": record["kind"],
            "algorithm": record["algorithm"],
            "notes": record["notes"],
            "support": [{"class_id": a.class_ids[int(y)]} for y in a.support_y],
            **{k: q[k] for k in ("distances", "attention", "attribution") if k in q},
            **({"layers": record["layers"]} if "layers" in record else {}),
        },
    }


def _round_view(state: App, current: dict[str, Any], a: Any, labelled: set[int]) -> dict[str, Any]:
    todo = [i for i in current["proposed"] if i not in labelled]
    out = []
    if todo:
        p, _ = state.learner.probabilities(a, state.pool.x[todo])
        out = [
            {"pool_index": i, "guess": a.class_ids[int(p[j].argmax())], "probabilities": [float(v) for v in p[j]]}
            for j, i in enumerate(todo)
        ]
    return {"id": current["id"], "proposed": current["proposed"], "todo": out, "class_ids": a.class_ids}


def _close(state: App, round_id: int) -> dict[str, Any]:
    examples, pngs, _ = state.store.labelled_set()
    images = [decode_image(p, state.shape, "never") for p in pngs]
    scores = score_rounds(state.learner, state.pool, examples, images, state.store.classes())
    state.store.close_round(
        round_id, scores["labelled"], scores["acc_uncertainty"], scores["acc_random"], scores["evaluated"]
    )
    return {"id": round_id, **scores}


# --- the command ---------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_command(
    run_dir: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    folder: str | None = None,
    pool: str = "omniglot",
    invert: str = "auto",
    allow_remote: bool = False,
) -> int:
    """What ``fastadapt serve`` does: load the run, open (or create) the app's folder, print the URL, serve until
    interrupted.

    The app is bound to 127.0.0.1 unless ``allow_remote`` (``--allow-remote``); the command sets torch to one
    thread and says so.
    """
    import uvicorn

    from fastadapt.runs import load_run

    if host not in LOCAL_HOSTS and not allow_remote:
        raise ConfigError(
            f"--host {host} would let other machines reach an app without authentication; pass --allow-remote to mean "
            "it"
        )
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is invalid; use 1..65535 (0: any free port)")
    torch.set_num_threads(1)
    run = load_run(run_dir)
    if run.on_environments:
        raise FastAdaptError(
            f"{run_dir} is a reinforcement-learning run (its tasks are environments): fastadapt serve teaches image "
            f"classes; adapt its policy from Python (fastadapt.load_run(path).algorithm.adapt(tasks))"
        )
    shape = run.input_shape
    ways = int(run.provenance["task_shapes"].get("ways") or 5)
    app = create_app(
        run, folder or Path(run_dir) / "app", load_pool(pool, shape, ways=min(max(ways, 2), 5), invert=invert), invert
    )
    port = port or free_port(host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(
        f"fastadapt serve: {url} (state in {app.state.app.store.path}; torch uses 1 thread; Ctrl-C stops)", flush=True
    )
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


__all__ = ["MAX_BODY", "App", "create_app", "free_port", "serve_command"]
