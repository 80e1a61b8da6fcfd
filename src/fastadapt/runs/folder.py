"""The run folder: the one module that knows its files, and :func:`load_run`.

A run folder (``runs/<name>`` by default) holds:

=================  ==========================================================================
``config.json``    the run's config, plus ``provenance``: fastadapt / torch / Python versions,
                   the git commit (when fastadapt runs from a checkout) and the task shapes
``metrics.jsonl``  one JSON line per logged training step and per validation
``checkpoint.pt``  the last state: weights, optimizer, scheduler, RNGs, step (atomic, resumable)
``best.pt``        the weights with the best validation score
``eval_<k>.json``  the training's own test of setting ``k``: per-episode scores and settings
``results.json``   the training's summary: steps, minutes, best validation, every test's mean +- CI
``evals/``         ``fastadapt eval`` results, one file per setting, named after it; they never
                   touch the training's own ``results.json`` or ``eval_<k>.json``
``.lock``          while a training writes the folder: ``{"pid", "host", "started"}`` of its process
=================  ==========================================================================

"The trained weights" are ``best.pt`` when the run validated, else ``checkpoint.pt``
(:meth:`RunFolder.weights_file`).

Nothing lost or mixed up on a crash:

* every file but ``metrics.jsonl`` is written atomically (a temporary ``.<name>.<random>.tmp`` renamed
  into place, :func:`fastadapt.runs.checkpoint.atomic_write`); the training's test files and
  ``results.json`` change together or not at all (:func:`write_test_records`);
* ``metrics.jsonl`` is appended to; on resume it is cut back to the checkpoint's step
  (:meth:`RunFolder.truncate_metrics`), so steps logged after the last checkpoint are not repeated,
  and a torn last line (a process killed mid-append) is dropped;
* one writer per folder: a training holds ``.lock`` (:meth:`RunFolder.lock`); a second one refuses
  in one line naming the holder's pid and host; a lock whose process is gone (same host) is taken
  over. Only the lock's holder removes temporary files a killed process left behind.
  ``fastadapt eval`` takes no lock: it only reads the weights (replaced atomically by a training)
  and writes ``evals/<setting>.json`` atomically, so two evaluations of the same setting both write
  a complete file of the same fixed episodes and the last one stays;
* a full disk, a read-only file system or missing permissions are one-line errors naming the path
  and the fix (:class:`fastadapt.runs.checkpoint.WriteError`); the previous files stay intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config, apply_overrides, config_from_dict
from fastadapt.core.episodes import EnvTasks, TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.core.version import __version__
from fastadapt.nn.weights import exported_payload
from fastadapt.runs.checkpoint import (
    TEMP_PATTERN,
    CheckpointError,
    atomic_write,
    atomic_write_many,
    load_checkpoint,
    stale_temps,
    write_error,
)

CONFIG, CHECKPOINT, BEST, METRICS, RESULTS, EVALS = (
    "config.json",
    "checkpoint.pt",
    "best.pt",
    "metrics.jsonl",
    "results.json",
    "evals",
)
LOCK = ".lock"
EXPORTED = "weights.safetensors"  # the weights of an exported run (fastadapt/runs/export.py); load_run reads them too
UNREADABLE_LOCK_STALE_S = (
    30.0  # a lock file that is not JSON (its writer was killed between creating and filling it) is stale after this
)


class RunFolderLocked(FastAdaptError):
    """Another process is writing the run folder."""


class RunFolder:
    """Paths and records of one run folder (nothing is read or created until asked)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    config_file = property(lambda self: self.path / CONFIG)
    checkpoint_file = property(lambda self: self.path / CHECKPOINT)
    best_file = property(lambda self: self.path / BEST)
    metrics_file = property(lambda self: self.path / METRICS)
    results_file = property(lambda self: self.path / RESULTS)
    evals_dir = property(lambda self: self.path / EVALS)
    lock_file = property(lambda self: self.path / LOCK)

    def test_file(self, key: str) -> Path:
        """The training's own test of setting ``key`` (``eval_5w1s.json``)."""
        return self.path / f"eval_{key}.json"

    # -- config ---------------------------------------------------------------------------

    def require(self) -> None:
        """One-line error unless this is a run folder (it has config.json)."""
        if not self.config_file.is_file():
            raise FastAdaptError(
                f"{self.path} is not a run folder (no {CONFIG}); pass a folder written by fastadapt train"
            )

    def _read_json_config(self) -> dict[str, Any]:
        self.require()
        try:
            raw = json.loads(self.config_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FastAdaptError(
                f"{self.config_file} is not valid JSON ({e}); restore it or train the run again"
            ) from None
        if not isinstance(raw, dict):
            raise FastAdaptError(
                f"{self.config_file} holds a JSON {type(raw).__name__}, not a config table; restore it or train the run again"
            )
        return raw

    def raw_config(self) -> dict[str, Any]:
        """config.json without its provenance."""
        raw = self._read_json_config()
        raw.pop("provenance", None)
        return raw

    def provenance(self) -> dict[str, Any]:
        """What config.json records of the software and the data shapes ({} for older runs)."""
        value = self._read_json_config().get("provenance", {})
        return value if isinstance(value, dict) else {}

    def read_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The config the run was trained with, with ``section.key=value`` overrides applied."""
        return config_from_dict(apply_overrides(self.raw_config(), overrides))

    def write_config(self, cfg: Config, provenance: dict[str, Any]) -> None:
        write_json(self.config_file, {**cfg.to_dict(), "provenance": provenance})

    # -- weights --------------------------------------------------------------------------

    def weights_file(self) -> Path:
        """``best.pt`` if the run validated, else ``checkpoint.pt``."""
        if self.best_file.is_file():
            return self.best_file
        if self.checkpoint_file.is_file():
            return self.checkpoint_file
        if (self.path / EXPORTED).is_file():  # a folder written by `fastadapt export RUN --format safetensors`
            return self.path / EXPORTED
        raise CheckpointError(
            f"{self.path} holds no {BEST} or {CHECKPOINT}; train the run first (fastadapt train ... run.out={self.path})"
        )

    # -- records --------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl; a torn last line (a process killed mid-append) is left out."""
        if not self.metrics_file.is_file():
            raise FastAdaptError(f"{self.path} has no {METRICS}; pass a run folder written by fastadapt train")
        text = self.metrics_file.read_text()
        lines = text.split("\n")
        rows = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # no newline after it: cut short by a crash
                    break
                raise FastAdaptError(
                    f"{self.metrics_file} line {i + 1} is not JSON; restore the file or train the run again"
                ) from None
        return rows

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            err = write_error(self.metrics_file, e)
            if err is e:
                raise
            raise err from None

    def clear_metrics(self) -> None:
        self.metrics_file.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> int:
        """Cut metrics.jsonl back to the rows of steps ``<= step`` (a resumed run's checkpoint step), atomically.

        Rows logged after the last checkpoint by a process that died are logged again by the resumed
        run; they are removed first so that every step appears once, in order. A torn last line
        (no newline after it) and lines that are not JSON rows with a step are removed too.
        Returns the number of lines removed (the file is rewritten only when that is not 0).
        """
        if not self.metrics_file.is_file():
            return 0
        lines = self.metrics_file.read_bytes().split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        kept, dropped = [], int(bool(torn.strip()))
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line + b"\n")
            else:
                dropped += 1
        if dropped:
            atomic_write(self.metrics_file, lambda f: f.write(b"".join(kept)))
        return dropped

    def read_results(self) -> dict[str, Any]:
        if not self.results_file.is_file():
            raise FastAdaptError(f"{self.path} has no {RESULTS}; train it to the end (or run fastadapt eval) first")
        return json.loads(self.results_file.read_text())

    def write_results(self, summary: dict[str, Any]) -> Path:
        write_json(self.results_file, summary)
        return self.results_file

    def write_test_records(self, tests: dict[str, dict[str, Any]], summary: dict[str, Any]) -> Path:
        """The training's ``eval_<key>.json`` of every test setting and ``results.json``: all of them
        or none (each written to a temporary file first, renamed into place when all are on disk)."""
        files = {self.test_file(k): (json.dumps(v) + "\n").encode() for k, v in tests.items()}
        files[self.results_file] = (json.dumps(summary, indent=2) + "\n").encode()
        atomic_write_many(files)
        return self.results_file

    # -- one writer -------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[dict[str, Any]]:
        """Hold ``.lock`` while writing the folder (created if needed); released on leaving, also on errors and signals
        that raise (a kill -9 leaves a stale lock, taken over by the next training).

        The lock is a file created atomically (``O_CREAT | O_EXCL``) holding ``{"pid", "host", "started"}``.
        Another live holder: :class:`RunFolderLocked` in one line naming its pid and host. A lock
        whose process is gone (same host, the pid is not alive) is taken over with one line on
        stderr; a lock of another host cannot be checked and is refused (delete it if that process
        is gone). Entering also removes the temporary files of killed writers (:meth:`remove_stale_temps`).
        Yields the lock's record. A folder this call created is removed again if nothing else was
        written into it (a run refused for bad input leaves no trace).
        """
        created = not self.path.exists()
        record = self._take_lock()
        try:
            self.remove_stale_temps()
            yield record
        finally:
            self._release_lock(record)
            if created:
                try:
                    self.path.rmdir()  # only if empty
                except OSError:
                    pass

    def _take_lock(self) -> dict[str, Any]:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(record).encode()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            err = write_error(self.path, e)
            if err is e:
                raise
            raise err from None
        for _ in range(5):
            try:
                fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                held = self._read_lock()
                if held is None:  # released in between
                    continue
                raw, holder = held
                stale = self._stale_reason(holder, self.lock_file)
                if stale is None:
                    raise RunFolderLocked(self._locked_message(holder)) from None
                if self._break_lock(raw):
                    print(f"fastadapt: taking over the lock of {self.path}: {stale}", file=sys.stderr, flush=True)
                continue
            except OSError as e:
                err = write_error(self.lock_file, e)
                if err is e:
                    raise
                raise err from None
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as e:
                self.lock_file.unlink(missing_ok=True)
                err = write_error(self.lock_file, e)
                if err is e:
                    raise
                raise err from None
            return record
        raise RunFolderLocked(
            f"{self.path} is locked by processes starting at the same time ({self.lock_file}); start one training at a time"
        )

    def _read_lock(self) -> tuple[bytes, dict[str, Any] | None] | None:
        """The lock's bytes and record (None if not a JSON record); None when there is no lock file."""
        try:
            raw = self.lock_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        return raw, holder if isinstance(holder, dict) else None

    @staticmethod
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
        gone = (
            f"pid {holder['pid']} on {holder['host']}, which took it at {holder.get('started')}, is no longer running"
        )
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return gone
        except PermissionError:  # alive, another user's
            pass
        began, took = _process_start(holder["pid"]), _timestamp(holder.get("started"))
        if (
            began is not None and took is not None and began > took + 2
        ):  # the pid now names a process started after the lock was taken
            return gone + " (its pid was reused)"
        return None

    def _locked_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            return (
                f"{self.path} is being locked by another process ({self.lock_file} is being written); "
                f"wait for it or choose another run.out"
            )
        who = f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"
        if holder.get("host") != socket.gethostname():
            return (
                f"{self.path} is being written by {who}; wait for that training to end or choose another run.out "
                f"(it runs on another host: if it is gone, delete {self.lock_file})"
            )
        return f"{self.path} is being written by {who}; wait for that training to end or stop it, or choose another run.out"

    def _break_lock(self, raw: bytes) -> bool:
        """Remove the stale lock whose bytes are ``raw``; False if another process changed it meanwhile."""
        aside = self.path / f"{LOCK}.{os.getpid()}.stale"
        try:
            os.replace(self.lock_file, aside)  # atomic: of two processes taking over, one gets the file
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == raw:
                return True
            try:  # we took a fresh lock of a third process: put it back
                os.link(aside, self.lock_file)
            except OSError:
                pass
            return False
        finally:
            aside.unlink(missing_ok=True)

    def _release_lock(self, record: dict[str, Any]) -> None:
        held = self._read_lock()
        if held is not None and held[1] == record:  # ours (not taken over by another process)
            self.lock_file.unlink(missing_ok=True)

    def remove_stale_temps(self) -> list[Path]:
        """Remove the temporary files of the folder's records that a killed writer left (``.checkpoint.pt.<random>.tmp``, ...).

        Call only while holding :meth:`lock`: a live writer's temporary file looks the same.
        Returns the files removed.
        """
        ours = re.compile(r"^(config\.json|checkpoint\.pt|best\.pt|metrics\.jsonl|results\.json|eval_.+\.json)$")
        removed = []
        for p in stale_temps(self.path):
            m = TEMP_PATTERN.match(p.name)
            if m and ours.match(m["name"]):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def eval_file(self, key: str, overrides: list[str] | tuple[str, ...] = ()) -> Path:
        """``evals/<key>[__<override>...].json``: named after the setting, so evaluations never overwrite each other."""
        parts = [key, *sorted(re.sub(r"[^A-Za-z0-9._=+-]", "-", o) for o in overrides)]
        name = "__".join(parts)
        if len(name) > 120:
            name = name[:100] + "__" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
        return self.evals_dir / f"{name}.json"


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


def write_json(path: Path, obj: Any, elsewhere: str = "choose another run.out") -> None:
    """Write JSON atomically (temporary file in the same folder, then rename); a full or read-only
    disk is a one-line error (``elsewhere``: how to write somewhere else)."""
    data = (json.dumps(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(data), elsewhere=elsewhere)


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout fastadapt runs from ("<sha>+dirty" with local changes), else None."""
    here = (start or Path(__file__)).resolve()
    if not any((p / ".git").exists() for p in here.parents):
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here.parent, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(batch: TaskBatch | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, the git commit and (from one training task) the shapes the model was built for."""
    out: dict[str, Any] = {
        "fastadapt": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    if isinstance(batch, EnvTasks):  # reinforcement learning: the policy's input and output
        out["task_shapes"] = {
            "observation": list(batch.observation_shape),
            "action_size": batch.action_size,
            "labels": "environment",
        }
    elif batch is not None:
        out["task_shapes"] = {
            k: list(getattr(batch, k).shape[1:]) for k in ("support_x", "support_y", "query_x", "query_y")
        }
        out["task_shapes"]["ways"] = batch.ways
        out["task_shapes"]["labels"] = "classes" if not batch.support_y.is_floating_point() else "float"
    out.update(extra)
    return out


def batch_from_shapes(shapes: dict[str, Any]) -> TaskBatch | EnvTasks:
    """A one-task zero batch of recorded shapes (labels 0..N-1): enough to rebuild a model."""
    if shapes.get("labels") == "environment":  # shapes only: no family, so it cannot be rolled out
        return EnvTasks(
            torch.zeros(1, 0, dtype=torch.float64),
            torch.zeros(1, dtype=torch.int64),
            tuple(shapes["observation"]),
            int(shapes["action_size"]),
        )
    ways = int(shapes["ways"])
    classes = shapes.get("labels") == "classes"

    def labels(key: str) -> torch.Tensor:
        n = shapes[key][0]
        if classes:
            return (torch.arange(n) * ways // max(n, 1)).unsqueeze(0)
        return torch.zeros(1, *shapes[key])

    return TaskBatch(
        torch.zeros(1, *shapes["support_x"]),
        labels("support_y"),
        torch.zeros(1, *shapes["query_x"]),
        labels("query_y"),
        torch.arange(ways).unsqueeze(0) if classes else None,
    )


@dataclass
class Run:
    """A trained run, ready for ``run.algorithm.adapt(support_x, support_y)``."""

    folder: RunFolder
    config: Config
    algorithm: nn.Module
    weights: str  # "best.pt" or "checkpoint.pt"
    step: int | None  # the training step the weights are from (None if not recorded)
    provenance: dict[str, Any] = field(default_factory=dict)


def load_run(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> Run:
    """The config of the run in ``path`` (with ``overrides``) and its trained algorithm (best, else last weights), in eval mode.

    ``model``: the run's ``nn.Module``, needed again when the run was trained with a model given in
    Python (``fastadapt.train(cfg, model=...)``); its weights are replaced by the run's.
    """
    from fastadapt.config.build import build_algorithm, probe_batch, task_sources, train_classes

    folder = RunFolder(path)
    cfg = folder.read_config(overrides)
    prov = folder.provenance()
    given = prov.get("model_given")
    if given and model is None:
        raise FastAdaptError(
            f"{folder.path} was trained with a model given in Python ({given}); pass it again: load_run(path, model=...)"
        )
    shapes = prov.get("task_shapes")
    if shapes:
        batch, classes = batch_from_shapes(shapes), prov.get("train_classes")
    else:  # runs written before provenance: look at the data
        sources = task_sources(cfg)
        batch, classes = probe_batch(sources, cfg), train_classes(sources)
    algo = build_algorithm(
        cfg, batch, model=model, num_classes=classes, check_memory=False, pretrained=False
    )  # its training fitted
    weights = folder.weights_file()
    payload = exported_payload(weights) if weights.name == EXPORTED else load_checkpoint(weights, "cpu")
    load_weights(algo, payload, weights)
    algo.to(device).eval()
    step = payload.get("step")
    return Run(folder, cfg, algo, weights.name, None if step is None else int(step), prov)


def load_weights(algo: nn.Module, payload: dict[str, Any], path: Path) -> None:
    """``algo.load_state_dict(payload["algorithm"])`` with a one-line error when they do not match."""
    state = payload.get("algorithm")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no algorithm weights; use a checkpoint written by fastadapt train")
    try:
        algo.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        reason = " ".join(x.strip() for x in first[:2])[:200]
        raise CheckpointError(
            f"{path} does not fit the run's {type(algo).__name__} ({reason}); it is from another config or algorithm"
        ) from None
