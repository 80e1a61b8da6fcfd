"""A database that several workers share: ``--storage URL`` of ``fastadapt tune`` and ``fastadapt study``.

Two kinds of URL are understood: ``postgresql://user:password@host:port/database`` (any number of workers on any
number of machines; ``postgresql+psycopg://`` is the same, through psycopg 3) and ``sqlite:///path/to/file.db``
(workers on one machine). Everything a URL can get wrong is one line (exit 2 on the command line): an unknown
scheme, a missing database name or path, an unreachable server. A worker is ``host:pid``; a worker's work is
kept alive by a heartbeat (:func:`beating`), and what several workers must do one at a time (take the next trial,
write the merged results) is done under :func:`study_lock`.
"""

from __future__ import annotations

import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastadapt.core.errors import ConfigError, FastAdaptError

SCHEMES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "postgresql+psycopg": None,
           "sqlite": None}  # fmt: skip
CONNECT_TIMEOUT_S = 10  # an unreachable server is reported after this long, not after the driver's minutes
SQLITE_BUSY_S = 60  # a worker waits this long for another worker's SQLite write before giving up
INSTALL = "pip install 'fastadapt[cluster]'"


class StorageError(FastAdaptError):
    """A storage URL that cannot be used (one line: the URL without its password, the cause, the fix)."""


def add_arguments(parser: Any, what: str) -> None:
    """``--storage URL`` and ``--heartbeat SECONDS`` on the parser of a command whose ``what`` (trials, cells)
    workers share."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="a database that several workers share: postgresql://USER:PASSWORD@HOST:PORT/DB or sqlite:///FILE; start "
        f"the command on many machines, each of its {what} runs once (docs/CLUSTER.md)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="SECONDS",
        help=f"a worker's beat with --storage; {what} of a worker silent for 3 beats go to others (default 30)",
    )


def shown(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and records)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (a URL that does not parse is shown as given, less anything after '@')
        return url.split("@")[-1] if "@" in url else url


def normalize(url: str) -> str:
    """The SQLAlchemy URL for ``url``: ``postgresql://`` goes through psycopg 3; refused in one line: an unknown
    scheme, a PostgreSQL URL without a database, SQLite in memory or without a file name.

    Example:
        >>> normalize("postgresql://tuner@db.example:5432/studies")
        'postgresql+psycopg://tuner@db.example:5432/studies'
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"--storage {url!r} is not a database URL; write postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "or sqlite:///path/to/file.db"
        )
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        raise StorageError(f"--storage needs SQLAlchemy (with Optuna); install it with: {INSTALL}") from None
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(
            f"--storage {shown(url)} does not parse ({e}); write postgresql://USER@HOST:PORT/DB"
        ) from None
    if parsed.drivername not in SCHEMES:
        raise ConfigError(
            f"--storage {shown(url)}: the scheme {parsed.drivername!r} is not supported; use postgresql:// (several "
            "machines) or sqlite:/// (one machine)"
        )
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(
                f"--storage {url}: an SQLite storage needs a file that every worker opens, e.g. sqlite:///runs/tune.db"
            )
        return parsed.render_as_string(hide_password=False)
    if not parsed.database:
        raise ConfigError(f"--storage {shown(url)} names no database; end it with /DATABASE (e.g. .../studies)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StorageError(f"--storage {shown(url)} needs psycopg 3; install it with: {INSTALL}") from None
    return parsed.set(drivername=SCHEMES[parsed.drivername] or parsed.drivername).render_as_string(hide_password=False)


def engine_options(url: str) -> dict[str, Any]:
    """The SQLAlchemy engine options every connection to ``url`` uses: a connect timeout for a server, a busy timeout
    for SQLite, a liveness check of pooled connections."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}


def connect(url: str) -> Any:
    """A SQLAlchemy engine for the normalized ``url``, checked by connecting once: an unreachable server, a wrong
    password or a missing database is one line naming the URL (without its password) and the cause."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("sqlite"):
        folder = Path(url.split("///", 1)[1]).parent
        if not folder.is_dir():
            raise StorageError(f"--storage {url}: the folder {folder} does not exist; create it or name another file")
    engine = create_engine(url, **engine_options(url))
    try:
        with engine.connect() as con:
            con.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        engine.dispose()
        cause = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
        raise StorageError(
            f"cannot reach the database {shown(url)} ({cause}); is the server running, and are the host, port, user, "
            "password and database right?"
        ) from None
    return engine


def worker_id() -> str:
    """This process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(worker: str | None) -> bool:
    """True when ``worker`` (``host:pid``) ran on this host and its process no longer exists; a worker of another
    host is never declared gone here (its heartbeat decides)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextmanager
def beating(beat: Callable[[], Any], interval: float) -> Iterator[None]:
    """Call ``beat()`` now and every ``interval`` seconds in a daemon thread until the block ends; a beat that raises
    is skipped (the next one tries again: a database that hiccups does not kill the work)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception:  # noqa: BLE001 (a missed beat is retried; the grace period covers several)
                pass

    beat()
    thread = threading.Thread(target=loop, name="fastadapt-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


@contextmanager
def study_lock(engine: Any, name: str) -> Iterator[None]:
    """Hold the lock of study ``name`` in the database of ``engine`` (one holder at a time, on any machine):
    PostgreSQL's advisory lock, or for SQLite an exclusive ``flock`` on ``<file>.lock`` beside the database."""
    from sqlalchemy import text

    key = zlib.crc32(f"fastadapt:{name}".encode())  # a 32-bit key: pg_advisory_lock(int, int) names the pair
    if engine.dialect.name == "postgresql":
        with engine.connect() as con:
            con.execute(text("SELECT pg_advisory_lock(:a, :b)"), {"a": 20260, "b": key - 2**31})
            try:
                yield
            finally:
                con.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": 20260, "b": key - 2**31})
                con.commit()
        return
    import fcntl

    path = Path(str(engine.url.database) + ".lock")
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


__all__ = [
    "StorageError",
    "add_arguments",
    "beating",
    "connect",
    "gone",
    "normalize",
    "shown",
    "study_lock",
    "worker_id",
]
