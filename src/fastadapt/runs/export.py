"""``fastadapt export RUN``: a run's trained weights as a file other tools read, with its config beside it.

``fastadapt.load_run(EXPORT_DIR)`` loads a safetensors export back (the same outputs as the run:
``tests/test_weights.py``), without torch pickles; ``model.weights = "EXPORT_DIR/weights.safetensors"``
starts another run from its encoder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fastadapt.core.errors import ConfigError
from fastadapt.core.version import __version__
from fastadapt.nn.weights import EXPORT_FORMAT, exported_payload, save_safetensors
from fastadapt.runs.checkpoint import load_checkpoint
from fastadapt.runs.folder import CONFIG, EXPORTED, RunFolder

FORMATS = ("safetensors", "torch")


def export_run(run_dir: str | Path, out: str | Path | None = None, fmt: str = "safetensors") -> list[Path]:
    """Write the run's trained weights (``fmt``: ``safetensors`` or ``torch``) and ``config.json`` to ``out``; returns
    the files.

    The export folder (default ``RUN/export``) holds

    * ``weights.safetensors`` (``--format safetensors``, the default): the trained algorithm's state dict
      (``best.pt``, else ``checkpoint.pt``), the model's tensors under ``model.``; its metadata says
      ``format = fastadapt-weights/1``, the step, the algorithm and the fastadapt version. Or
      ``weights.pt`` (``--format torch``): the same state dict saved with ``torch.save``.
    * ``config.json``: the run's config and provenance, as in the run folder.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    folder = RunFolder(run_dir)
    folder.require()
    cfg = folder.read_config()
    weights = folder.weights_file()
    payload = exported_payload(weights) if weights.name == EXPORTED else load_checkpoint(weights, "cpu")
    state = payload["algorithm"]
    target = Path(out) if out is not None else folder.path / "export"
    target.mkdir(parents=True, exist_ok=True)
    step = payload.get("step")
    if fmt == "safetensors":
        metadata = {
            "format": EXPORT_FORMAT,
            "algorithm": cfg.algorithm,
            "step": "" if step is None else str(int(step)),
            "source": weights.name,
            "fastadapt": __version__,
        }
        written = save_safetensors(state, target / EXPORTED, metadata)
    else:
        written = target / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in state.items()}, written)
    config = target / CONFIG
    if config.resolve() != folder.config_file.resolve():
        shutil.copyfile(folder.config_file, config)
    return [written, config]


__all__ = ["FORMATS", "export_run"]
