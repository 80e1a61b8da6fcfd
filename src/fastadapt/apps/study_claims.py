"""The cells of one study shared by many workers through a database: ``fastadapt study FILE --storage URL``.

Two tables in the database at ``URL`` (created on first use): ``fastadapt_studies`` (a study's name and its grid:
the cells' presets, overrides and run folders, and the evaluations) and ``fastadapt_cells`` (one row a cell: its
state ``waiting``, ``running``, ``done`` or ``failed``, the worker that holds it, that worker's last heartbeat by the
database's clock, and, once done, the cell's record). A worker claims a waiting cell by one conditional ``UPDATE``
(so two workers never hold one cell), beats while it trains and evaluates it, and stores its record. A cell whose
worker stops beating for ``3 x heartbeat`` seconds, or whose worker on this host is gone, goes back to ``waiting``
and is resumed from its checkpoint by the next free worker; a cell that raised is ``failed`` (the worker stops
with the error) and is tried again when a worker starts anew. After each cell a worker rewrites ``results.json``
from every stored record, in the study's cell order, under the study's lock: workers merge, never clobber, and the
study ends with the same ``results.json`` as on one worker.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastadapt.apps.storage import StorageError, beating, connect, gone, normalize, shown, study_lock, worker_id

GRACE = 3  # a claim is stale after this many heartbeat intervals without a beat
TABLES = (
    "CREATE TABLE IF NOT EXISTS fastadapt_studies (name VARCHAR(512) PRIMARY KEY, grid TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fastadapt_cells (study VARCHAR(512) NOT NULL, label VARCHAR(512) NOT NULL, "
    "position INTEGER NOT NULL, state VARCHAR(16) NOT NULL, worker VARCHAR(300), beat DOUBLE PRECISION, "
    "attempts INTEGER NOT NULL DEFAULT 0, record TEXT, error TEXT, PRIMARY KEY (study, label))",
)


def _now(engine: Any) -> str:
    """SQL for the database's clock in seconds since the epoch (one clock for every worker's heartbeat)."""
    if engine.dialect.name == "postgresql":
        return "EXTRACT(EPOCH FROM clock_timestamp())"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def grid(study: Any) -> str:
    """The study's grid as canonical JSON: what two workers must agree on to share the study."""
    cells = [[c.label, c.preset, list(c.overrides), str(c.run)] for c in study.cells]
    evals = [[e.name, list(e.overrides), e.test, e.episodes] for e in study.evals]
    return json.dumps({"cells": cells, "evals": evals, "evaluate": study.evaluate}, sort_keys=True)


def _sql(con: Any, query: str, **params: Any) -> Any:
    from sqlalchemy import text

    return con.execute(text(query), params)


def register(engine: Any, study: Any) -> None:
    """Create the tables and the study's rows (under the study's lock); refuse a study of the same name with another
    grid (one line); put the failed cells back to waiting (a worker that starts retries them)."""
    with study_lock(engine, study.name), engine.begin() as con:
        for statement in TABLES:
            _sql(con, statement)
        found = _sql(con, "SELECT grid FROM fastadapt_studies WHERE name = :n", n=study.name).scalar()
        if found is None:
            _sql(con, "INSERT INTO fastadapt_studies (name, grid) VALUES (:n, :g)", n=study.name, g=grid(study))
        elif found != grid(study):
            raise StorageError(
                f"the database {shown(str(engine.url))} holds a study {study.name!r} with another grid (other presets, "
                f"overrides, runs or evaluations); rename {study.file} or use another database"
            )
        for position, cell in enumerate(study.cells):
            _sql(
                con,
                "INSERT INTO fastadapt_cells (study, label, position, state) VALUES (:s, :l, :p, 'waiting') "
                "ON CONFLICT (study, label) DO NOTHING",
                s=study.name,
                l=cell.label,
                p=position,
            )
        _sql(con, "UPDATE fastadapt_cells SET state = 'waiting' WHERE study = :s AND state = 'failed'", s=study.name)


def reap(engine: Any, name: str, heartbeat: int) -> list[str]:
    """Put the cells whose workers are dead back to waiting: no beat for ``GRACE x heartbeat`` seconds, or a worker
    on this host whose process is gone. Returns their labels."""
    with engine.begin() as con:
        running = _sql(
            con,
            f"SELECT label, worker, {_now(engine)} - beat FROM fastadapt_cells WHERE study = :s AND state = 'running'",
            s=name,
        ).all()
        dead = [(label, w) for label, w, age in running if age is None or age > GRACE * heartbeat or gone(w)]
        for label, w in dead:
            _sql(
                con,
                "UPDATE fastadapt_cells SET state = 'waiting' WHERE study = :s AND label = :l AND worker = :w "
                "AND state = 'running'",
                s=name,
                l=label,
                w=w,
            )
    return [label for label, _ in dead]


def claim(engine: Any, name: str, labels: Sequence[str]) -> tuple[str, str | None] | None:
    """Take the first waiting cell among ``labels`` (the study's order): ``(label, its previous worker)``, or None."""
    me, wanted = worker_id(), set(labels)
    with engine.begin() as con:
        waiting = _sql(
            con,
            "SELECT label, worker FROM fastadapt_cells WHERE study = :s AND state = 'waiting' ORDER BY position",
            s=name,
        ).all()
        for label, previous in waiting:
            if label not in wanted:
                continue
            taken = _sql(
                con,
                f"UPDATE fastadapt_cells SET state = 'running', worker = :w, beat = {_now(engine)}, "
                "attempts = attempts + 1 WHERE study = :s AND label = :l AND state = 'waiting'",
                w=me,
                s=name,
                l=label,
            ).rowcount
            if taken == 1:
                return label, previous
    return None


def _set(engine: Any, name: str, label: str, state: str, **fields: Any) -> None:
    """Move a cell this worker holds to ``state`` (with ``record`` or ``error``)."""
    extra = "".join(f", {k} = :{k}" for k in fields)
    with engine.begin() as con:
        _sql(
            con,
            f"UPDATE fastadapt_cells SET state = :state{extra} WHERE study = :s AND label = :l AND worker = :w",
            state=state,
            s=name,
            l=label,
            w=worker_id(),
            **fields,
        )


def records(engine: Any, name: str) -> dict[str, Any]:
    """The record of every done cell, by label."""
    with engine.begin() as con:
        rows = _sql(con, "SELECT label, record FROM fastadapt_cells WHERE study = :s AND state = 'done'", s=name).all()
    return {label: json.loads(record) for label, record in rows}


def _open(engine: Any, name: str, labels: Sequence[str]) -> int:
    """How many of ``labels`` are waiting or running (0: nothing left for this worker to do or wait for)."""
    with engine.begin() as con:
        rows = _sql(con, "SELECT label, state FROM fastadapt_cells WHERE study = :s", s=name).all()
    wanted = set(labels)
    return sum(1 for label, state in rows if label in wanted and state in ("waiting", "running"))


def _free_run_lock(run: Path, previous: str | None) -> None:
    """Remove ``run/.lock`` when it belongs to ``previous``, a worker of another host whose claim went stale (the
    run-folder lock cannot check another host's process; the database's heartbeat can)."""
    host, _, pid = (previous or "").rpartition(":")
    if not host or host == socket.gethostname():
        return  # this host: the run-folder lock takes over a gone process itself
    lock = run / ".lock"
    try:
        held = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if str(held.get("host")) == host and str(held.get("pid")) == pid:
        print(f"fastadapt: {run}: the lock of {previous} (no heartbeat) is released", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)


def work(
    study: Any,
    chosen: Sequence[Any],
    url: str,
    heartbeat: int,
    run: Callable[[Any, Callable[[str], None]], dict[str, Any]],
    publish: Callable[[dict[str, Any]], Any],
    progress: Callable[[str], None] = print,
) -> Any:
    """Work on ``study``'s cells among ``chosen`` with the other workers of the database at ``url`` until none is
    waiting or running: claim one, ``run(cell, progress)`` it with a heartbeat, store its record, and
    ``publish(records)`` (all done cells, in the study's order) under the study's lock. Returns the last
    ``publish``'s value."""
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise StorageError(f"--heartbeat {heartbeat!r} is invalid; give whole seconds >= 1")
    engine = connect(normalize(url))
    name, labels = study.name, [c.label for c in chosen]
    by_label = {c.label: c for c in study.cells}
    register(engine, study)

    def merged() -> Any:
        with study_lock(engine, name):
            done = records(engine, name)
            return publish({c.label: done[c.label] for c in study.cells if c.label in done})

    try:
        while True:
            for label in reap(engine, name, heartbeat):
                progress(f"{label}: its worker stopped beating; back in the queue")
            got = claim(engine, name, labels)
            if got is None:
                if not _open(engine, name, labels):
                    break
                time.sleep(min(heartbeat, 2.0))  # others' cells are running: one may die and come back
                continue
            label, previous = got
            cell = by_label[label]
            _free_run_lock(cell.run, previous)
            at = f"[{labels.index(label) + 1}/{len(labels)}]"
            beat = f"UPDATE fastadapt_cells SET beat = {_now(engine)} WHERE study = :s AND label = :l AND worker = :w"

            def pulse(label: str = label, beat: str = beat) -> None:
                with engine.begin() as con:
                    _sql(con, beat, s=name, l=label, w=worker_id())

            try:
                with beating(pulse, heartbeat):
                    rec = run(cell, lambda s, at=at: progress(f"{at} {s}"))
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: another worker (or this command again) resumes it
                _set(engine, name, label, "waiting")
                raise
            except BaseException as e:
                _set(engine, name, label, "failed", error=" ".join(str(e).splitlines())[:2000] or type(e).__name__)
                raise
            _set(engine, name, label, "done", record=json.dumps(_plain(rec)))
            merged()
        return merged()
    finally:
        engine.dispose()


def _plain(v: Any) -> Any:
    """JSON-safe: NaN and infinities as null (as results.json writes them)."""
    if isinstance(v, Mapping):
        return {k: _plain(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(w) for w in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


__all__ = ["claim", "grid", "records", "reap", "register", "work"]
