"""``fastadapt serve RUN``: a local web app to teach a trained run new classes, with a person in the loop.

The page (``static/index.html``) lets a person create classes, draw (canvas) or upload a few examples
of each, see the prediction for a new drawing live (confidences, latency, the explanation of
:func:`fastadapt.eval.explanations.explain`), label the pool examples the model is least sure about
(:mod:`fastadapt.apps.teach`), compare with random labelling round by round, and export or import the
adapted task (:mod:`fastadapt.apps.export`). State lives in SQLite (:mod:`fastadapt.apps.store`).
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from fastadapt.apps import api_models as m
from fastadapt.apps import export as exporting
from fastadapt.apps.access import COOKIE, DENIED, allowed, new_token
from fastadapt.apps.api_models import binary, errors
from fastadapt.apps.inputs import MAX_BYTES, decode_image, encode_png
from fastadapt.apps.server import stoppable_server
from fastadapt.apps.store import Conflict, InvalidName, NotFound, Store
from fastadapt.apps.teach import Learner, Pool, load_pool, propose, score_rounds
from fastadapt.core.cancel import Interrupted
from fastadapt.core.episodes import Episode
from fastadapt.core.errors import ConfigError, DataError, FastAdaptError
from fastadapt.core.version import __version__
from fastadapt.eval.explanations import explain

try:
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
except ImportError:  # pragma: no cover - the extra is installed wherever the app runs
    raise FastAdaptError("fastadapt serve needs the app extra: pip install 'fastadapt[app]'") from None

MAX_BODY = MAX_BYTES + 64 * 1024  # an image plus the multipart envelope
MAX_IMPORT = 64 * 1024 * 1024  # an exported task
STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
Id = Annotated[int, PathParam(ge=0, le=m.MAX_ID)]  # a class, example, round or pool index in a path


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
        ``fresh``): ``(adapted, examples, images, classes)``, read in one snapshot of the store."""
        examples, pngs, rev, classes = self.store.task_snapshot()
        cached = self.learner.cached
        images = (
            list(cached.support_x)
            if cached is not None and cached.revision == rev
            else [decode_image(p, self.shape, "never") for p in pngs]
        )
        a = self.learner.adapt(examples, images, rev, [c["id"] for c in classes], fresh)
        self.last["adapt_ms"] = a.adapt_ms
        return a, examples, images, classes


def create_app(run: Any, folder: str | Path, pool: Pool, invert: str = "auto", token: str | None = None) -> Any:
    """The FastAPI application for ``run`` (from :func:`fastadapt.load_run`) with its state in ``folder``.

    Endpoints (their request and response models are in :mod:`fastadapt.apps.api_models`, the OpenAPI schema at
    ``/openapi.json``; every error is ``{"detail": "<one line>"}`` with a 4xx status)::

        GET    /                          the page
        GET    /api/state                 run, classes with example ids, pool, open round, rounds, revision
        POST   /api/classes               {"name"} -> 201 {"id", "name"}; 409 a duplicate, 422 an invalid name
        DELETE /api/classes/{id}          204; its examples go with it
        POST   /api/classes/{id}/examples multipart "file" (PNG/JPEG; "source": draw | upload) -> 201 {"id"}
        GET    /api/examples/{id}.png     the stored model-input image
        PATCH  /api/examples/{id}         {"class_id"}: correct a label
        DELETE /api/examples/{id}         204
        POST   /api/predict               multipart "file" -> probabilities, prediction, latency, explanation
                                          (?attribution=gradient|integrated_gradients|auto|none; ?fresh=true adapts
                                          again)
        POST   /api/rounds                open a round: the k most uncertain pool examples (?k=4); the open round if any
        POST   /api/rounds/{id}/close     score both arms on the held-out pool now
        GET    /api/pool/{index}.png      a pool image
        POST   /api/pool/{index}/label    {"class_id"} -> the example; a round closes when all its examples are labelled
        GET    /api/export                the adapted task (torch.save file, see export.py)
        POST   /api/import                multipart "file": an exported task replaces the classes and examples
        GET    /api/export/torchscript    the adapted predictor as TorchScript

    Security: with ``token`` (``--allow-remote``) a request from another machine needs it, else 401
    (:mod:`fastadapt.apps.access`); request bodies over :data:`MAX_BODY` bytes are refused (413) before they are
    read; images are checked and decoded by :mod:`fastadapt.apps.inputs`; an imported task is checked member by
    member before it is read (:func:`fastadapt.apps.export.read_task_record`); nothing is written under a name a
    client chooses (images live in SQLite); class names are shown with ``textContent`` (never parsed as HTML).
    A request the app refuses changes nothing (each write is one SQLite transaction, rolled back on an error).
    """
    shape = run.input_shape
    store = Store(folder)
    if store.get_meta("run") is None:
        store.set_meta("run", str(run.folder.path.resolve()))
    state = App(run, store, pool, Learner(run.algorithm, shape), shape, invert)
    # /docs and /redoc are off: FastAPI's pages load their scripts from a CDN, which a local app cannot count on
    api = FastAPI(title="fastadapt serve", version=__version__, docs_url=None, redoc_url=None)
    api.state.app = state

    @api.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if not allowed(request, token):
            return JSONResponse({"detail": DENIED}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        limit = MAX_IMPORT if request.url.path == "/api/import" else MAX_BODY
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(
                {"detail": f"the request has {length} bytes; at most {limit} are accepted"}, status_code=413
            )
        if length is None and request.method in ("POST", "PATCH", "PUT"):
            return JSONResponse({"detail": "a request body needs a Content-Length"}, status_code=411)
        response = await call_next(request)
        if token is not None and secrets.compare_digest(request.query_params.get("token", "").encode(), token.encode()):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")  # the page's later requests
        return response

    for exc, status in (
        (NotFound, 404),
        (Conflict, 409),
        (InvalidName, 422),
        (DataError, 422),
        (ConfigError, 422),
        (FastAdaptError, 400),
    ):
        api.add_exception_handler(exc, _handler(status))
    api.add_exception_handler(RequestValidationError, _invalid)

    async def read_image(file: UploadFile) -> torch.Tensor:
        data = await file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise DataError(f"the image has more than {MAX_BYTES} bytes")
        return decode_image(data, shape, invert)

    body = (400, 401, 411, 413, 422)  # any request with a body may get these (400: a malformed multipart body)

    @api.get("/", response_class=Response, responses={**binary("text/html", "the page"), **errors(401)})
    def index() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/api/state", response_model=m.State, responses=errors(401))
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

    @api.post("/api/classes", status_code=201, response_model=m.ClassCreated, responses=errors(*body, 409))
    def add_class(new: m.NewClass) -> dict[str, Any]:
        return store.create_class(new.name)

    @api.delete("/api/classes/{class_id}", status_code=204, response_class=Response, responses=errors(401, 404, 422))
    def delete_class(class_id: Id) -> Response:
        store.delete_class(class_id)
        return Response(status_code=204)

    @api.post(
        "/api/classes/{class_id}/examples",
        status_code=201,
        response_model=m.ExampleCreated,
        responses=errors(*body, 404),
    )
    async def add_example(
        class_id: Id, file: Annotated[UploadFile, File()], source: Annotated[m.Source, Form()] = "upload"
    ) -> dict[str, Any]:
        x = await read_image(file)
        return {"id": await run_in_threadpool(store.add_example, class_id, encode_png(x), source)}

    png = {**binary("image/png", "a PNG image"), **errors(401, 404, 422)}

    @api.get("/api/examples/{example_id}.png", response_class=Response, responses=png)
    def example_png(example_id: Id) -> Response:
        return Response(store.example_png(example_id), media_type="image/png")

    @api.patch("/api/examples/{example_id}", response_model=m.Relabelled, responses=errors(*body, 404))
    def relabel(example_id: Id, choice: m.ClassChoice) -> dict[str, Any]:
        store.relabel_example(example_id, choice.class_id)
        return {"id": example_id, "class_id": choice.class_id}

    @api.delete("/api/examples/{example_id}", status_code=204, response_class=Response, responses=errors(401, 404, 422))
    def delete_example(example_id: Id) -> Response:
        store.delete_example(example_id)
        return Response(status_code=204)

    @api.post(
        "/api/predict", response_model=m.Prediction, response_model_exclude_unset=True, responses=errors(*body, 409)
    )
    async def predict(
        file: Annotated[UploadFile, File()], attribution: m.Attribution = "gradient", fresh: bool = False
    ) -> dict[str, Any]:
        x = await read_image(file)
        return await run_in_threadpool(_predict, state, x, attribution, fresh)

    @api.post("/api/rounds", response_model=m.RoundView, responses=errors(*body, 409))
    def open_round(k: Annotated[int, Query(ge=1, le=m.MAX_K, description="pool examples to propose")] = 4) -> Any:
        current = store.open_round_now()
        a, examples, _, _ = state.adapted()
        labelled = {e.pool_index for e in examples if e.pool_index is not None}
        if current is None:
            proposals = propose(state.learner, a, pool, labelled, k)
            if not proposals:
                raise Conflict("every proposable pool example is labelled")
            current = store.open_round([p["pool_index"] for p in proposals])
        return _round_view(state, current, a, labelled)

    @api.post("/api/rounds/{round_id}/close", response_model=m.RoundScores, responses=errors(*body, 404, 409))
    def close_round(round_id: Id) -> dict[str, Any]:
        return _close(state, round_id)

    @api.get("/api/pool/{index}.png", response_class=Response, responses=png)
    def pool_png(index: Id) -> Response:
        pool.check(index)
        return Response(encode_png(pool.x[index]), media_type="image/png")

    @api.post(
        "/api/pool/{index}/label",
        status_code=201,
        response_model=m.PoolLabelled,
        response_model_exclude_unset=True,
        responses=errors(*body, 404, 409),
    )
    def label_pool(index: Id, choice: m.ClassChoice) -> dict[str, Any]:
        pool.check(index)
        if bool(pool.held_out[index]):
            raise Conflict(f"pool example {index} is held out for scoring; it is never labelled")
        example = store.add_example(choice.class_id, encode_png(pool.x[index]), "pool", index)
        out: dict[str, Any] = {"id": example}
        a, examples, _, _ = state.adapted()
        out["adapt_ms"] = a.adapt_ms
        current = store.open_round_now()
        if current is not None:
            done = {e.pool_index for e in examples if e.pool_index is not None}
            if all(i in done for i in current["proposed"]):
                out["round"] = _close(state, current["id"])
        return out

    task_file = {**binary("application/octet-stream", "a file to save"), **errors(401, 409, 422)}

    @api.get("/api/export", response_class=Response, responses=task_file)
    def export_task() -> Response:
        a, examples, images, classes = state.adapted()
        names = [c["name"] for c in classes if c["id"] in set(a.class_ids)]
        record = exporting.task_record(
            run, names, torch.stack(images), a.support_y, [e.source for e in examples], a.predictor
        )
        return _download(exporting.write_task_record(record), "adapted-task.pt")

    @api.post("/api/import", response_model=m.Imported, responses=errors(*body, 409))
    async def import_task(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        data = await file.read(MAX_IMPORT + 1)
        if len(data) > MAX_IMPORT:
            raise DataError(f"the file has more than {MAX_IMPORT} bytes")
        record = exporting.read_task_record(data, shape)
        x = record["x"].float().div(255.0)
        rows = [(int(y), encode_png(xi), s, None) for xi, y, s in zip(x, record["y"], record["sources"])]
        await run_in_threadpool(store.replace_all, record["classes"], rows)
        return {"classes": len(record["classes"]), "examples": len(x), "from_run": record["run"]}

    @api.get("/api/export/torchscript", response_class=Response, responses=task_file)
    def export_torchscript() -> Response:
        a, _, _, _ = state.adapted()
        return _download(exporting.torchscript_predictor(a.predictor, a.support_x[:2]), "predictor.pt")

    return api


def _download(data: bytes, name: str) -> Response:
    return Response(
        data, media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


async def _invalid(request: Any, exc: Exception) -> Any:
    errs = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": m.validation_message(list(errs))}, status_code=422)


def _handler(status: int) -> Any:
    async def handle(request: Any, exc: Exception) -> Any:
        return JSONResponse({"detail": " ".join(str(exc).splitlines())}, status_code=status)

    return handle


def _predict(state: App, x: torch.Tensor, attribution: str, fresh: bool = False) -> dict[str, Any]:
    """Probabilities, prediction, latency and explanation of one drawing (the page calls this live).
    ``fresh``: adapt again even if the task is unchanged (to measure adaptation under load)."""
    a, _, _, snapshot = state.adapted(fresh)
    probs, ms = state.learner.probabilities(a, x.unsqueeze(0))
    state.last["predict_ms"] = ms
    classes = {c["id"]: c["name"] for c in snapshot}
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
    examples, pngs, _, classes = state.store.task_snapshot()
    images = [decode_image(p, state.shape, "never") for p in pngs]
    scores = score_rounds(state.learner, state.pool, examples, images, classes)
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

    The app is bound to 127.0.0.1 unless ``allow_remote`` (``--allow-remote``), which makes a random token and
    prints it on the second line: other machines must send it (:mod:`fastadapt.apps.access`); this machine needs
    none. The command sets torch to one thread and says so.
    """
    import uvicorn

    from fastadapt.runs import load_run

    if host not in LOCAL_HOSTS and not allow_remote:
        raise ConfigError(
            f"--host {host} would let other machines reach the app; pass --allow-remote to mean it (they then need the "
            "token it prints)"
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
    token = new_token() if allow_remote else None
    pooled = load_pool(pool, shape, ways=min(max(ways, 2), 5), invert=invert)
    app = create_app(run, folder or Path(run_dir) / "app", pooled, invert, token)
    port = port or free_port(host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(
        f"fastadapt serve: {url} (state in {app.state.app.store.path}; torch uses 1 thread; Ctrl-C stops)", flush=True
    )
    if token is not None:
        print(
            f"fastadapt serve: token {token} (other machines: open {url}?token={token} or send Authorization: Bearer "
            "<token>; this machine needs none)",
            flush=True,
        )
    sys.stdout.flush()
    server = stoppable_server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    )
    server.run()
    if server.stopped_by is not None:  # the exit status a signal gives every command: 128 + it
        raise Interrupted(server.stopped_by)
    return 0


__all__ = ["MAX_BODY", "App", "create_app", "free_port", "serve_command"]
