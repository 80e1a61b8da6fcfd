"""The run folder: the one module that knows its files (:class:`RunFolder`).

Nothing is lost or mixed up on a crash: every file but ``metrics.jsonl`` is written atomically
(:func:`fastadapt.runs.checkpoint.atomic_write`), ``metrics.jsonl`` is cut back on resume
(:meth:`RunFolder.truncate_metrics`), the test records change all together (:meth:`RunFolder.write_test_records`)
and one training writes at a time (:meth:`RunFolder.lock`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fastadapt.config import Config, apply_overrides, config_from_dict
from fastadapt.core.episodes import EnvTasks, TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.core.version import __version__
from fastadapt.runs.checkpoint import (
    TEMP_PATTERN,
    CheckpointError,
    atomic_write,
    atomic_write_many,
    raise_write_error,
    stale_temps,
)
from fastadapt.runs.lock import LOCK, RunFolderLocked, hold

CONFIG, CHECKPOINT, BEST, METRICS, RESULTS, EVALS = (
    "config.json",
    "checkpoint.pt",
    "best.pt",
    "metrics.jsonl",
    "results.json",
    "evals",
)
EXPORTED = "weights.safetensors"  # the weights of an exported run (fastadapt/runs/export.py); load_run reads them too


class RunFolder:
    """Paths and records of one run folder (nothing is read or created until asked).

    =================  ==========================================================================
    ``config.json``    the run's config, plus ``provenance``: fastadapt / torch / Python versions,
                       the git commit (when fastadapt runs from a checkout) and the task shapes
    ``metrics.jsonl``  one JSON line per logged training step and per validation
    ``checkpoint.pt``  the last state: weights, optimizer, scheduler, RNGs, step (atomic, resumable)
    ``best.pt``        the weights with the best validation score
    ``eval_<k>.json``  the training's own test of setting ``k``: per-episode scores and settings
    ``results.json``   the training's summary: steps, minutes, best validation, every test's mean +- CI
    ``evals/``         ``fastadapt eval`` results, one file per setting, named after it
    ``.lock``          while a training writes the folder: ``{"pid", "host", "started"}`` (:mod:`.lock`)
    =================  ==========================================================================
    """

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
                f"{self.config_file} holds a JSON {type(raw).__name__}, not a config table; "
                f"restore it or train the run again"
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
            f"{self.path} holds no {BEST} or {CHECKPOINT}; "
            f"train the run first (fastadapt train ... run.out={self.path})"
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
            raise_write_error(self.metrics_file, e)

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
        """Hold ``.lock`` while writing the folder (:mod:`fastadapt.runs.lock`; created if needed), released on leaving,
        also on errors and signals that raise (a kill -9 leaves a stale lock, taken over by the next training).

        Another live holder: :class:`RunFolderLocked` in one line naming its pid and host. Entering also
        removes the temporary files of killed writers (:meth:`remove_stale_temps`). Yields the lock's record.
        A folder this call created is removed again if nothing else was written into it (a run refused for
        bad input leaves no trace).
        """
        with hold(self.path) as record:
            self.remove_stale_temps()
            yield record

    def remove_stale_temps(self) -> list[Path]:
        """Remove the temporary files of the folder's records a killed writer left (``.checkpoint.pt.<random>.tmp``).

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
        """``evals/<key>[__<override>...].json``: named after the setting, so evaluations never overwrite each other.

        Two evaluations of the same setting both write a complete file of the same fixed episodes; the last stays."""
        parts = [key, *sorted(re.sub(r"[^A-Za-z0-9._=+-]", "-", o) for o in overrides)]
        name = "__".join(parts)
        if len(name) > 120:
            name = name[:100] + "__" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
        return self.evals_dir / f"{name}.json"


def write_json(path: Path, obj: Any, elsewhere: str = "choose another run.out") -> None:
    """Write JSON atomically (temporary file in the same folder, then rename); a full or read-only
    disk is a one-line error (``elsewhere``: how to write somewhere else)."""
    data = (json.dumps(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(data), elsewhere=elsewhere)


def _git_commit(start: Path | None = None) -> str | None:
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
        "git_commit": _git_commit(),
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


__all__ = ["EXPORTED", "RunFolder", "RunFolderLocked", "provenance", "write_json"]
