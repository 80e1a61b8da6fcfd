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
=================  ==========================================================================

"The trained weights" are ``best.pt`` when the run validated, else ``checkpoint.pt``
(:meth:`RunFolder.weights_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.checkpoint import CheckpointError, load_checkpoint
from fastadapt.config import Config, apply_overrides, config_from_dict
from fastadapt.episodes import TaskBatch
from fastadapt.errors import FastAdaptError
from fastadapt.version import __version__

CONFIG, CHECKPOINT, BEST, METRICS, RESULTS, EVALS = "config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "results.json", "evals"


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

    def test_file(self, key: str) -> Path:
        """The training's own test of setting ``key`` (``eval_5w1s.json``)."""
        return self.path / f"eval_{key}.json"

    # -- config ---------------------------------------------------------------------------

    def require(self) -> None:
        """One-line error unless this is a run folder (it has config.json)."""
        if not self.config_file.is_file():
            raise FastAdaptError(f"{self.path} is not a run folder (no {CONFIG}); pass a folder written by fastadapt train")

    def _read_json_config(self) -> dict[str, Any]:
        self.require()
        try:
            raw = json.loads(self.config_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FastAdaptError(f"{self.config_file} is not valid JSON ({e}); restore it or train the run again") from None
        if not isinstance(raw, dict):
            raise FastAdaptError(f"{self.config_file} holds a JSON {type(raw).__name__}, not a config table; restore it or train the run again")
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
        raise CheckpointError(f"{self.path} holds no {BEST} or {CHECKPOINT}; train the run first (fastadapt train ... run.out={self.path})")

    # -- records --------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            raise FastAdaptError(f"{self.path} has no {METRICS}; pass a run folder written by fastadapt train")
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def clear_metrics(self) -> None:
        self.metrics_file.unlink(missing_ok=True)

    def read_results(self) -> dict[str, Any]:
        if not self.results_file.is_file():
            raise FastAdaptError(f"{self.path} has no {RESULTS}; train it to the end (or run fastadapt eval) first")
        return json.loads(self.results_file.read_text())

    def write_results(self, summary: dict[str, Any]) -> Path:
        write_json(self.results_file, summary)
        return self.results_file

    def eval_file(self, key: str, overrides: list[str] | tuple[str, ...] = ()) -> Path:
        """``evals/<key>[__<override>...].json``: named after the setting, so evaluations never overwrite each other."""
        parts = [key, *sorted(re.sub(r"[^A-Za-z0-9._=+-]", "-", o) for o in overrides)]
        name = "__".join(parts)
        if len(name) > 120:
            name = name[:100] + "__" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
        return self.evals_dir / f"{name}.json"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout fastadapt runs from ("<sha>+dirty" with local changes), else None."""
    here = (start or Path(__file__)).resolve()
    if not any((p / ".git").exists() for p in here.parents):
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here.parent, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here.parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(batch: TaskBatch | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, the git commit and (from one training task) the shapes the model was built for."""
    out: dict[str, Any] = {"fastadapt": __version__, "torch": torch.__version__, "python": platform.python_version(), "git_commit": git_commit()}
    if batch is not None:
        out["task_shapes"] = {k: list(getattr(batch, k).shape[1:]) for k in ("support_x", "support_y", "query_x", "query_y")}
        out["task_shapes"]["ways"] = batch.ways
        out["task_shapes"]["labels"] = "classes" if not batch.support_y.is_floating_point() else "float"
    out.update(extra)
    return out


def batch_from_shapes(shapes: dict[str, Any]) -> TaskBatch:
    """A one-task zero batch of recorded shapes (labels 0..N-1): enough to rebuild a model."""
    ways = int(shapes["ways"])
    classes = shapes.get("labels") == "classes"

    def labels(key: str) -> torch.Tensor:
        n = shapes[key][0]
        if classes:
            return (torch.arange(n) * ways // max(n, 1)).unsqueeze(0)
        return torch.zeros(1, *shapes[key])

    return TaskBatch(torch.zeros(1, *shapes["support_x"]), labels("support_y"), torch.zeros(1, *shapes["query_x"]), labels("query_y"),
                     torch.arange(ways).unsqueeze(0) if classes else None)


@dataclass
class Run:
    """A trained run, ready for ``run.algorithm.adapt(support_x, support_y)``."""

    folder: RunFolder
    config: Config
    algorithm: nn.Module
    weights: str  # "best.pt" or "checkpoint.pt"
    step: int | None  # the training step the weights are from (None if not recorded)
    provenance: dict[str, Any] = field(default_factory=dict)


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, model: nn.Module | None = None,
             device: str | torch.device = "cpu") -> Run:
    """The config of the run in ``path`` (with ``overrides``) and its trained algorithm (best, else last weights), in eval mode.

    ``model``: the run's ``nn.Module``, needed again when the run was trained with a model given in
    Python (``fastadapt.train(cfg, model=...)``); its weights are replaced by the run's.
    """
    from fastadapt.build import build_algorithm, probe_batch, task_sources, train_classes

    folder = RunFolder(path)
    cfg = folder.read_config(overrides)
    prov = folder.provenance()
    given = prov.get("model_given")
    if given and model is None:
        raise FastAdaptError(f"{folder.path} was trained with a model given in Python ({given}); pass it again: load_run(path, model=...)")
    shapes = prov.get("task_shapes")
    if shapes:
        batch, classes = batch_from_shapes(shapes), prov.get("train_classes")
    else:  # runs written before provenance: look at the data
        sources = task_sources(cfg)
        batch, classes = probe_batch(sources, cfg), train_classes(sources)
    algo = build_algorithm(cfg, batch, model=model, num_classes=classes)
    weights = folder.weights_file()
    payload = load_checkpoint(weights, "cpu")
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
        raise CheckpointError(f"{path} does not fit the run's {type(algo).__name__} ({reason}); it is from another config or algorithm") from None
