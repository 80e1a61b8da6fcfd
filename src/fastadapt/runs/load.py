"""A trained run, loaded: :func:`load_run` gives a :class:`Run`, which holds the config, the trained algorithm
and hands over what the run was trained on (:meth:`Run.tasks`), so that no command rebuilds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fastadapt.config import Config
from fastadapt.core.episodes import EnvTasks, TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.nn.weights import exported_payload
from fastadapt.runs.checkpoint import load_checkpoint, load_weights
from fastadapt.runs.folder import EXPORTED, RunFolder

if TYPE_CHECKING:
    from fastadapt.config.build import TaskSources

PARTS = ("train", "val", "test")


def _batch_from_shapes(shapes: dict[str, Any]) -> TaskBatch | EnvTasks:
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
    _sources: dict[str, TaskSources] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def on_environments(self) -> bool:
        """Whether the run learnt from environments (reinforcement learning) rather than labelled examples."""
        return (self.provenance.get("task_shapes") or {}).get("labels") == "environment"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape, as the run was trained: an example's, or an environment's observation."""
        shapes = self.provenance.get("task_shapes") or {}
        if not shapes:
            raise FastAdaptError(
                f"{self.folder.path} records no input shape (a run from before provenance); retrain it"
            )
        return tuple(shapes["observation"] if self.on_environments else shapes["support_x"][1:])

    def tasks(self, part: str = "test") -> TaskSources:
        """The run's task sources for ``part`` (``"train"``, ``"val"`` or ``"test"``), built once from its config.

        ``"test"`` builds the test sources alone: every test setting's fixed episodes, with the
        overrides ``load_run`` applied (``data.test_dataset=...`` converts another domain's images to
        the run's input; ``TaskSources.conversions`` says how). ``"train"`` and ``"val"`` build all three.
        """
        from fastadapt.config.build import task_sources

        if part not in PARTS:
            raise FastAdaptError(f"part {part!r} is not one of {', '.join(PARTS)}")
        given = self.provenance.get("tasks_given")
        if given:
            raise FastAdaptError(
                f"{self.folder.path} was trained on task sources given in Python ({given}); "
                f"evaluate it from Python: fastadapt.evaluate(fastadapt.load_run(path).algorithm, source.fixed(n))"
            )
        key = "test" if part == "test" and ("test" in self._sources or "all" not in self._sources) else "all"
        if key not in self._sources:
            shapes = self.provenance.get("task_shapes") or {}
            shape = tuple(shapes["support_x"][1:]) if shapes.get("support_x") else None
            self._sources[key] = task_sources(self.config, tests_only=key == "test", input_shape=shape)
        return self._sources[key]


def load_run(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> Run:
    """The config of the run in ``path`` (with ``overrides``) and its trained algorithm (best, else last weights),
    in eval mode.

    ``model``: the run's ``nn.Module``, needed again when the run was trained with a model given in
    Python (``fastadapt.train(cfg, model=...)``); its weights are replaced by the run's.
    """
    from fastadapt.config.build import build_algorithm, probe_batch, task_sources, train_classes, train_domains

    folder = RunFolder(path)
    cfg = folder.read_config(overrides)
    prov = folder.provenance()
    given = prov.get("model_given")
    if given and model is None:
        raise FastAdaptError(
            f"{folder.path} was trained with a model given in Python ({given}); pass it again: load_run(path, "
            "model=...)"
        )
    shapes, sources = prov.get("task_shapes"), None
    if shapes:
        batch, classes, domains = _batch_from_shapes(shapes), prov.get("train_classes"), prov.get("train_domains")
    else:  # runs written before provenance: look at the data (kept for Run.tasks)
        sources = task_sources(cfg)
        batch, classes, domains = probe_batch(sources, cfg), train_classes(sources), train_domains(sources)
    # the weights the training fitted replace the pretrained ones: no memory check, no model.weights
    algo = build_algorithm(
        cfg, batch, model=model, num_classes=classes, check_memory=False, pretrained=False, domain_sizes=domains
    )
    weights = folder.weights_file()
    payload = exported_payload(weights) if weights.name == EXPORTED else load_checkpoint(weights, "cpu")
    load_weights(algo, payload, weights)
    algo.to(device).eval()
    step = payload.get("step")
    run = Run(folder, cfg, algo, weights.name, None if step is None else int(step), prov)
    if sources is not None:
        run._sources["all"] = sources
    return run
