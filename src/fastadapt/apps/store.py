"""The web app's state in SQLite: classes, examples, labels, rounds. What the app acknowledged is on disk.

One file, ``<app folder>/app.sqlite``, in WAL mode with ``synchronous=FULL``: a write is committed
(and durable) before its request is answered, so a restart or a killed process loses nothing that
was acknowledged. Every request opens its own connection; writers take the database's write lock
at the start of their transaction (``BEGIN IMMEDIATE``), so two tabs that write at once are
serialised, and every write bumps ``revision``, which the page polls to redraw what another tab did.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastadapt.core.errors import FastAdaptError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    png BLOB NOT NULL,
    source TEXT NOT NULL,
    pool_index INTEGER,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS examples_pool_once ON examples(pool_index) WHERE pool_index IS NOT NULL;
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proposed TEXT NOT NULL,
    labelled INTEGER,
    acc_uncertainty REAL,
    acc_random REAL,
    evaluated INTEGER,
    closed REAL,
    created REAL NOT NULL
);
"""
MAX_NAME = 64
SOURCES = ("draw", "upload", "pool", "import")


class NotFound(FastAdaptError):
    """A class, example, round or pool example that does not exist (HTTP 404)."""


class Conflict(FastAdaptError):
    """A request that contradicts the state (a duplicate name, a pool example labelled twice): HTTP 409."""


class InvalidName(FastAdaptError):
    """A class name that is empty, too long or not printable (HTTP 422)."""


@dataclass(frozen=True)
class Example:
    id: int
    class_id: int
    source: str
    pool_index: int | None


class Store:
    """The app's state in ``folder/app.sqlite`` (created with its folder when missing).

    Tables::

        meta      key -> value (run, revision, created)
        classes   id, name (unique), created
        examples  id, class_id (-> classes, cascade), png (the model-input image, lossless), source
                  (draw | upload | pool | import), pool_index (unique: a pool example is labelled once), created
        rounds    id, proposed (JSON list of pool indices), labelled (pool labels at close),
                  acc_uncertainty, acc_random, evaluated (held-out examples scored), closed, created

    Errors a client can cause are :class:`NotFound` (-> 404) and :class:`Conflict` (-> 409).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "app.sqlite"
        con = self._connect()
        try:
            con.executescript(SCHEMA)
        finally:
            con.close()
        with self.write(bump=False) as con:
            con.execute("INSERT OR IGNORE INTO meta VALUES ('revision', '0')")
            con.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")
        finally:
            con.close()

    @contextmanager
    def write(self, bump: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed (durably) when the block ends, rolled back on an error; bumps ``revision``
        (unless not ``bump``)."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                if bump:
                    con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    # --- meta ----------------------------------------------------------------------------------------

    def revision(self) -> int:
        with self.read() as con:
            return int(con.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        with self.read() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.write(bump=False) as con:
            con.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
            )

    # --- classes -------------------------------------------------------------------------------------

    def create_class(self, name: str) -> dict[str, Any]:
        name = _check_name(name)
        with self.write() as con:
            try:
                cur = con.execute("INSERT INTO classes (name, created) VALUES (?, ?)", (name, time.time()))
            except sqlite3.IntegrityError:
                raise Conflict(f"a class named {name!r} exists already; choose another name") from None
            return {"id": int(cur.lastrowid or 0), "name": name}

    def delete_class(self, class_id: int) -> None:
        with self.write() as con:
            if con.execute("DELETE FROM classes WHERE id = ?", (class_id,)).rowcount == 0:
                raise NotFound(f"class {class_id} does not exist")

    def classes(self) -> list[dict[str, Any]]:
        """Every class with the ids of its examples, in creation order."""
        with self.read() as con:
            rows = con.execute("SELECT id, name FROM classes ORDER BY id").fetchall()
            ex = con.execute("SELECT id, class_id, source FROM examples ORDER BY id").fetchall()
        out = [{"id": i, "name": n, "examples": []} for i, n in rows]
        by_id = {c["id"]: c for c in out}
        for e, c, s in ex:
            by_id[c]["examples"].append({"id": e, "source": s})
        return out

    # --- examples ------------------------------------------------------------------------------------

    def add_example(self, class_id: int, png: bytes, source: str, pool_index: int | None = None) -> int:
        if source not in SOURCES:
            raise ValueError(f"source {source!r}")
        with self.write() as con:
            if con.execute("SELECT 1 FROM classes WHERE id = ?", (class_id,)).fetchone() is None:
                raise NotFound(f"class {class_id} does not exist")
            try:
                cur = con.execute(
                    "INSERT INTO examples (class_id, png, source, pool_index, created) VALUES (?, ?, ?, ?, ?)",
                    (class_id, png, source, pool_index, time.time()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"pool example {pool_index} is labelled already; correct its label with PATCH /api/examples/<id>"
                ) from None
            return int(cur.lastrowid or 0)

    def relabel_example(self, example_id: int, class_id: int) -> None:
        with self.write() as con:
            if con.execute("SELECT 1 FROM classes WHERE id = ?", (class_id,)).fetchone() is None:
                raise NotFound(f"class {class_id} does not exist")
            if con.execute("UPDATE examples SET class_id = ? WHERE id = ?", (class_id, example_id)).rowcount == 0:
                raise NotFound(f"example {example_id} does not exist")

    def delete_example(self, example_id: int) -> None:
        with self.write() as con:
            if con.execute("DELETE FROM examples WHERE id = ?", (example_id,)).rowcount == 0:
                raise NotFound(f"example {example_id} does not exist")

    def example_png(self, example_id: int) -> bytes:
        with self.read() as con:
            row = con.execute("SELECT png FROM examples WHERE id = ?", (example_id,)).fetchone()
        if row is None:
            raise NotFound(f"example {example_id} does not exist")
        return bytes(row[0])

    def labelled_set(self) -> tuple[list[Example], list[bytes], int]:
        """Every example (with its PNG) and the revision they are read at, in one snapshot."""
        with self.read() as con:
            rows = con.execute("SELECT id, class_id, source, pool_index, png FROM examples ORDER BY id").fetchall()
            rev = int(con.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        return [Example(int(i), int(c), s, p) for i, c, s, p, _ in rows], [bytes(r[4]) for r in rows], rev

    def task_snapshot(self) -> tuple[list[Example], list[bytes], int, list[dict[str, Any]]]:
        """:meth:`labelled_set` and the classes (``id``, ``name``, in creation order) read in one transaction, so every
        example's class is among them even while other requests create and delete classes."""
        with self.read() as con:
            rows = con.execute("SELECT id, class_id, source, pool_index, png FROM examples ORDER BY id").fetchall()
            rev = int(con.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
            classes = con.execute("SELECT id, name FROM classes ORDER BY id").fetchall()
        examples = [Example(int(i), int(c), s, p) for i, c, s, p, _ in rows]
        return examples, [bytes(r[4]) for r in rows], rev, [{"id": int(i), "name": n} for i, n in classes]

    # --- rounds --------------------------------------------------------------------------------------

    def open_round(self, proposed: list[int]) -> dict[str, Any]:
        """A new round proposing ``proposed``; the open round instead when there is one (two tabs ask at once)."""
        with self.write() as con:
            row = con.execute(
                "SELECT id, proposed FROM rounds WHERE closed IS NULL ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if row is not None:
                return {"id": int(row[0]), "proposed": json.loads(row[1]), "new": False}
            cur = con.execute(
                "INSERT INTO rounds (proposed, created) VALUES (?, ?)", (json.dumps(proposed), time.time())
            )
            return {"id": int(cur.lastrowid or 0), "proposed": proposed, "new": True}

    def open_round_now(self) -> dict[str, Any] | None:
        with self.read() as con:
            row = con.execute(
                "SELECT id, proposed FROM rounds WHERE closed IS NULL ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else {"id": int(row[0]), "proposed": json.loads(row[1])}

    def close_round(
        self, round_id: int, labelled: int, acc_uncertainty: float | None, acc_random: float | None, evaluated: int
    ) -> None:
        with self.write() as con:
            row = con.execute("SELECT closed FROM rounds WHERE id = ?", (round_id,)).fetchone()
            if row is None:
                raise NotFound(f"round {round_id} does not exist")
            if row[0] is not None:
                raise Conflict(f"round {round_id} is closed already")
            con.execute(
                "UPDATE rounds SET labelled = ?, acc_uncertainty = ?, acc_random = ?, evaluated = ?, closed = ? WHERE "
                "id = ?",
                (labelled, acc_uncertainty, acc_random, evaluated, time.time(), round_id),
            )

    def rounds(self) -> list[dict[str, Any]]:
        with self.read() as con:
            rows = con.execute(
                "SELECT id, proposed, labelled, acc_uncertainty, acc_random, evaluated, closed FROM rounds ORDER BY id"
            ).fetchall()
        return [
            {
                "id": i,
                "proposed": json.loads(p),
                "labelled": n,
                "acc_uncertainty": u,
                "acc_random": r,
                "evaluated": e,
                "closed": c is not None,
            }
            for i, p, n, u, r, e, c in rows
        ]

    # --- import --------------------------------------------------------------------------------------

    def replace_all(self, classes: list[str], examples: list[tuple[int, bytes, str, int | None]]) -> None:
        """Replace every class and example (an import): ``examples`` are ``(class position, png, source, pool_index)``;
        rounds are kept."""
        names = [_check_name(n) for n in classes]
        if len(set(names)) != len(names):
            raise Conflict("the imported task names a class twice")
        with self.write() as con:
            con.execute("DELETE FROM examples")
            con.execute("DELETE FROM classes")
            ids = [
                int(con.execute("INSERT INTO classes (name, created) VALUES (?, ?)", (n, time.time())).lastrowid or 0)
                for n in names
            ]
            for pos, png, source, pool in examples:
                con.execute(
                    "INSERT INTO examples (class_id, png, source, pool_index, created) VALUES (?, ?, ?, ?, ?)",
                    (ids[pos], png, source if source in SOURCES else "import", pool, time.time()),
                )


def _check_name(name: Any) -> str:
    """A class name: a string of 1 to 64 printable characters after trimming (any script; the page escapes it)."""
    if not isinstance(name, str):
        raise InvalidName("a class name must be a string")
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidName(f"class name {name[:MAX_NAME]!r} is invalid; use 1 to {MAX_NAME} printable characters")
    return name
