"""Training metrics, live, to the loggers ``run.loggers`` names (CSV, TensorBoard, offline W&B), beside
``metrics.jsonl``, which stays the record (:class:`Loggers`)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
from pathlib import Path
from typing import Any

from fastadapt.core.errors import ConfigError

CSV_FILE, TENSORBOARD_DIR, WANDB_DIR = "metrics.csv", "tensorboard", "wandb"
CSV_HEADER = ["step", "split", "name", "value"]
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}  # logger -> (module, extra)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row as ``{"<split>/<name>": value}`` (``step``, strings, tables and non-finite
    values left out)."""
    split = str(row.get("split", "train"))
    return {
        f"{split}/{k}": float(v)
        for k, v in row.items()
        if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def check_installed(names: tuple[str, ...] | list[str]) -> None:
    """A one-line :class:`ConfigError` naming the extra to install when a logger's package is missing."""
    for name in names:
        if name in _PACKAGES:
            module, extra = _PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"run.loggers: {name!r} needs the {module} package; pip install 'fastadapt[{extra}]' "
                    f"(or remove {name!r} from run.loggers)"
                )


class CSVLogger:
    """``RUN/metrics.csv``: ``step,split,name,value``, appended line by line (flushed, so it is live)."""

    def __init__(self, out: Path, start: int) -> None:
        self.path = out / CSV_FILE
        kept: list[list[str]] = []
        if start and self.path.is_file():  # resumed: keep the rows up to the checkpoint's step
            with open(self.path, newline="") as f:
                kept = [r for r in csv.reader(f) if len(r) == 4 and r[0].lstrip("-").isdigit() and int(r[0]) <= start]
        self._file = open(self.path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerows([CSV_HEADER, *kept])
        self._file.flush()

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, v in values.items():
            split, name = key.split("/", 1)
            self._writer.writerow([step, split, name, repr(v)])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Event files in ``RUN/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, out: Path, start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = out / TENSORBOARD_DIR
        if not start and folder.is_dir():  # a fresh run: the old run's events go
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step: events at steps >= start + 1 (logged after the checkpoint by a run that died) are dropped
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start + 1 if start else None, flush_secs=10)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, v in values.items():
            self.writer.add_scalar(key, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Weights & Biases, offline (``mode="offline"``), in ``RUN/wandb``; the run's id comes from the run folder's
    path."""

    def __init__(self, out: Path, start: int, config: dict[str, Any], name: str) -> None:
        import wandb

        run_id = "fastadapt-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
        (out / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode="offline",
            dir=str(out),
            project="fastadapt",
            name=name,
            id=run_id,
            config=config,
            resume="allow" if start else None,
            reinit="finish_previous",
        )
        self.last = start

    def log(self, step: int, values: dict[str, float]) -> None:
        if step >= self.last:  # W&B refuses steps below one already logged
            self.run.log(values, step=step)
            self.last = step

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The loggers of ``run.loggers`` for a run folder; ``log(row)`` takes a ``metrics.jsonl`` row.

    The trainer writes every row of ``metrics.jsonl`` (``{"step", "split", <metric>: value, ...}``) and
    hands the same row to :meth:`log`. Each logger gets the row's numbers as scalars named
    ``<split>/<metric>`` (``train/loss``, ``train/acc``, ``val/acc``, ``val/ci``, ...) at the row's step:

    ===============  ===========================================================================
    ``jsonl``        nothing more: ``metrics.jsonl`` is always written (:mod:`fastadapt.runs.folder`)
    ``csv``          ``RUN/metrics.csv``, one line per scalar: ``step,split,name,value`` (long format:
                     ``pandas.read_csv(...).pivot_table(index="step", columns=["split", "name"])``)
    ``tensorboard``  event files in ``RUN/tensorboard`` (``torch.utils.tensorboard``; extra
                     ``[tensorboard]``): ``tensorboard --logdir RUN/tensorboard``
    ``wandb``        Weights & Biases in offline mode only, in ``RUN/wandb`` (extra ``[wandb]``);
                     ``wandb sync`` uploads it if you want to
    ===============  ===========================================================================

    A resumed run appends to the same logs: the CSV is cut back to the checkpoint's step (as
    ``metrics.jsonl`` is), TensorBoard purges the events after it (``purge_step``), and W&B continues the
    run of the same id (derived from the run folder's path; each resumed process writes one more offline
    folder with that id, which ``wandb sync`` appends to the same run; steps below the last one logged
    are skipped). A fresh run (no checkpoint, or ``--restart``) starts them empty. A logger whose package
    is missing is a one-line error naming the extra to install, before the first step.
    """

    def __init__(
        self,
        names: tuple[str, ...] | list[str],
        out: str | Path,
        start: int = 0,
        config: dict[str, Any] | None = None,
        name: str = "run",
    ) -> None:
        check_installed(names)
        out = Path(out)
        self._loggers: list[Any] = []
        try:
            for n in names:
                if n == "csv":
                    self._loggers.append(CSVLogger(out, start))
                elif n == "tensorboard":
                    self._loggers.append(TensorBoardLogger(out, start))
                elif n == "wandb":
                    self._loggers.append(WandbLogger(out, start, config or {}, name))
                elif n != "jsonl":
                    raise ConfigError(f"run.loggers: unknown logger {n!r}; choose from jsonl, csv, tensorboard, wandb")
        except BaseException:
            self.close()
            raise

    def log(self, row: dict[str, Any]) -> None:
        """Send the numbers of one metrics row to every logger."""
        values = scalars(row)
        if values:
            for logger in self._loggers:
                logger.log(int(row.get("step", 0)), values)

    def close(self) -> None:
        for logger in self._loggers:
            logger.close()
        self._loggers = []

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = [
    "CSV_FILE",
    "TENSORBOARD_DIR",
    "WANDB_DIR",
    "CSVLogger",
    "Loggers",
    "TensorBoardLogger",
    "WandbLogger",
    "check_installed",
    "scalars",
]
