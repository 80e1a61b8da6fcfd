"""One writer per run folder: ``.lock``, a file created atomically and holding ``{"pid", "host", "started"}``.

Another live holder is a :class:`RunFolderLocked` error in one line naming its pid and host. A lock whose
process is gone (same host, the pid is not alive or was reused) is taken over with one line on stderr; a
lock of another host cannot be checked and is refused (delete it if that process is gone).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastadapt.core.errors import FastAdaptError
from fastadapt.runs.checkpoint import raise_write_error

LOCK = ".lock"
UNREADABLE_LOCK_STALE_S = 30.0  # a lock file that is not JSON (its writer was killed filling it) is stale after this


class RunFolderLocked(FastAdaptError):
    """Another process is writing the run folder."""


@contextmanager
def hold(path: Path) -> Iterator[dict[str, Any]]:
    """Hold ``path/.lock`` (the folder is created if needed); released on leaving, also on errors. Yields the record.

    A folder this call created is removed again if nothing else was written into it.
    """
    created = not path.exists()
    record = _take(path)
    try:
        yield record
    finally:
        _release(path, record)
        if created:
            try:
                path.rmdir()  # only if empty
            except OSError:
                pass


def _take(path: Path) -> dict[str, Any]:
    lock_file = path / LOCK
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = json.dumps(record).encode()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise_write_error(path, e)
    for _ in range(5):
        try:
            fd = os.open(lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = _read(lock_file)
            if held is None:  # released in between
                continue
            raw, holder = held
            stale = _stale_reason(holder, lock_file)
            if stale is None:
                raise RunFolderLocked(_locked_message(path, holder)) from None
            if _break(path, raw):
                print(f"fastadapt: taking over the lock of {path}: {stale}", file=sys.stderr, flush=True)
            continue
        except OSError as e:
            raise_write_error(lock_file, e)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            lock_file.unlink(missing_ok=True)
            raise_write_error(lock_file, e)
        return record
    raise RunFolderLocked(
        f"{path} is locked by processes starting at the same time ({lock_file}); start one training at a time"
    )


def _read(lock_file: Path) -> tuple[bytes, dict[str, Any] | None] | None:
    """The lock's bytes and record (None if not a JSON record); None when there is no lock file."""
    try:
        raw = lock_file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw)
    except ValueError:
        holder = None
    return raw, holder if isinstance(holder, dict) else None


def _stale_reason(holder: dict[str, Any] | None, lock_file: Path) -> str | None:
    """Why the lock of ``holder`` is stale, or None when its process may still run."""
    if holder is None:
        try:
            age = time.time() - lock_file.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        return f"its file is not a lock record and {age:.0f} s old" if age > UNREADABLE_LOCK_STALE_S else None
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None  # another machine's process: it cannot be checked from here
    gone = f"pid {holder['pid']} on {holder['host']}, which took it at {holder.get('started')}, is no longer running"
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return gone
    except PermissionError:  # alive, another user's
        pass
    began, took = _process_start(holder["pid"]), _timestamp(holder.get("started"))
    if began is not None and took is not None and began > took + 2:  # the pid names a process started later
        return gone + " (its pid was reused)"
    return None


def _locked_message(path: Path, holder: dict[str, Any] | None) -> str:
    lock_file = path / LOCK
    if holder is None:
        return (
            f"{path} is being locked by another process ({lock_file} is being written); "
            f"wait for it or choose another run.out"
        )
    who = f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"
    if holder.get("host") != socket.gethostname():
        return (
            f"{path} is being written by {who}; wait for that training to end or choose another run.out "
            f"(it runs on another host: if it is gone, delete {lock_file})"
        )
    return f"{path} is being written by {who}; wait for that training to end or stop it, or choose another run.out"


def _break(path: Path, raw: bytes) -> bool:
    """Remove the stale lock whose bytes are ``raw``; False if another process changed it meanwhile."""
    lock_file, aside = path / LOCK, path / f"{LOCK}.{os.getpid()}.stale"
    try:
        os.replace(lock_file, aside)  # atomic: of two processes taking over, one gets the file
    except FileNotFoundError:
        return False
    try:
        if aside.read_bytes() == raw:
            return True
        try:  # we took a fresh lock of a third process: put it back
            os.link(aside, lock_file)
        except OSError:
            pass
        return False
    finally:
        aside.unlink(missing_ok=True)


def _release(path: Path, record: dict[str, Any]) -> None:
    held = _read(path / LOCK)
    if held is not None and held[1] == record:  # ours (not taken over by another process)
        (path / LOCK).unlink(missing_ok=True)


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where Linux's /proc says; else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime, counted after "pid (comm) "
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None
