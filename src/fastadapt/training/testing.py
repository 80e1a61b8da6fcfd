"""Testing a run: its fixed test episodes for every setting, and ``fastadapt eval`` on a run folder."""

from __future__ import annotations

import json
from typing import Any

import torch

from fastadapt.config import Config
from fastadapt.config.build import TaskSources
from fastadapt.core.errors import FastAdaptError
from fastadapt.data.variable import VariableEpisodeSampler
from fastadapt.eval.evaluate import EvalResult, batchnorm_setting, evaluate
from fastadapt.eval.finetune import FineTuned
from fastadapt.eval.select import SupportSelected
from fastadapt.eval.tta import ViewAveraged
from fastadapt.runs import RunFolder, load_run
from fastadapt.runs.checkpoint import atomic_write_many
from fastadapt.runtime import distributed
from fastadapt.runtime.devices import check_device
from fastadapt.runtime.precision import resolve_precision


def _eval_settings(
    cfg: Config,
    algo: torch.nn.Module,
    ways: int,
    shots: int,
    queries: int,
    conversion: str = "none",
    episodes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What changes the number, to be written beside it; ``episodes``: the rules of variable-way episodes (whose
    ``ways``, ``shots`` and ``queries`` are then written as 0: they vary per episode)."""
    e = cfg.eval
    settings = {
        "algorithm": cfg.algorithm,
        "algorithm_options": cfg.algorithm_options,
        "dataset": cfg.data.target or cfg.data.dataset,
        "split": cfg.data.split,
        "part": cfg.data.test_part,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "batchnorm": batchnorm_setting(algo),
        "eval_seed": e.seed,
        "model": cfg.model.target or cfg.model.name,
    }
    if cfg.data.test_dataset and cfg.data.test_dataset != cfg.data.dataset:
        settings["test_dataset"] = cfg.data.test_dataset
    if cfg.data.episode_scope != "dataset":
        settings["episode_scope"] = cfg.data.episode_scope
    if episodes is not None:
        settings["episodes"] = {"kind": "variable", **episodes}
    precision = resolve_precision(cfg.run.precision, next(algo.parameters(), torch.empty(0)).device)
    if precision != "fp32":  # "auto" as decided on this machine
        settings["precision"] = precision
    if conversion != "none":
        settings["conversion"] = conversion
    if e.finetune != "none":
        settings["finetune"] = {
            "mode": e.finetune,
            "steps": e.finetune_steps,
            "lr": e.finetune_lr,
            "optimizer": "SGD, momentum 0.9",
        }
    if e.select != "fixed":
        settings["select"] = SupportSelected(algo, e.select_lr_scales, e.select_steps).settings()
    if e.tta:
        settings["tta"] = ViewAveraged(algo, e.tta, e.seed).settings()
    return settings


def evaluated(cfg: Config, algo: torch.nn.Module) -> torch.nn.Module:
    """``algo``, wrapped for test-time fine-tuning when ``eval.finetune`` asks for it, or for support-set selection
    when ``eval.select`` does; then, with ``eval.tta``, for test-time augmentation (of the fine-tuned one)."""
    if cfg.eval.select == "support_cv":
        model = SupportSelected(algo, cfg.eval.select_lr_scales, cfg.eval.select_steps)
    elif cfg.eval.finetune == "none":
        model = algo
    else:
        model = FineTuned(algo, cfg.eval.finetune, cfg.eval.finetune_steps, cfg.eval.finetune_lr)
    return ViewAveraged(model, cfg.eval.tta, cfg.eval.seed) if cfg.eval.tta else model


def run_tests(
    cfg: Config, algo: torch.nn.Module, sources: TaskSources, device: torch.device | str = "cpu", progress: bool = False
) -> dict[str, EvalResult]:
    """Score ``algo`` as it is on ``cfg.eval.test_episodes`` fixed episodes of every test setting.

    Under a process group every rank calls it and the episodes are split across ranks.
    """
    if not cfg.eval.test_episodes:  # eval.test_episodes = 0: no testing
        return {}
    results: dict[str, EvalResult] = {}
    model = evaluated(cfg, algo)
    for key, sampler in sources.tests.items():
        settings = _eval_settings(
            cfg,
            algo,
            getattr(sampler, "ways", 1),
            sampler.shots,
            sampler.queries,
            sources.conversions.get(key, "none"),
            sampler.describe() if isinstance(sampler, VariableEpisodeSampler) else None,
        )
        results[key] = evaluate(
            model,
            sampler.fixed(cfg.eval.test_episodes, cfg.eval.batch),
            cfg.eval.level,
            device,
            progress=progress,
            desc=f"test {key}",
            settings=settings,
            distributed=True,
            precision=cfg.run.precision,
        )
    return results


def evaluate_run(
    path: str, overrides: list[str] | tuple[str, ...] = (), progress: bool = False
) -> dict[str, tuple[EvalResult, str]]:
    """``fastadapt eval``: test the run's trained weights with ``overrides`` applied to its config.

    Writes ``evals/<setting>.json`` (the result, the overrides and the weights used) for every test
    setting and returns ``{key: (result, file)}``; never touches the training's own records. Nothing
    is written until every setting is scored; then every file is written, all or none (a failure
    while writing leaves every previous file as it was). Under ``torchrun`` the episodes are split
    across ranks and rank 0 writes.

    No lock is taken (:mod:`fastadapt.runs.lock`): the weights are only read (a training replaces
    them atomically), and each file is written atomically, so two evaluations of the same setting
    both write a complete file of the same fixed episodes.
    """
    cfg = RunFolder(path).read_config(overrides)
    if not cfg.eval.test_episodes:
        raise FastAdaptError(
            "eval.test_episodes=0: nothing to evaluate; pass eval.test_episodes=N with N >= 1 (or leave the run's own)"
        )
    run = load_run(path, overrides, device="cpu")
    sources = run.tasks("test")
    cfg = run.config
    check_device(cfg.run.device)
    device = distributed.local_device(cfg.run.device)
    algo = run.algorithm.to(device)
    with distributed.process_group(device, cfg.run.dist_timeout_s):
        results = run_tests(cfg, algo, sources, device, progress=progress and distributed.is_main())
    out = {key: (res, str(run.folder.eval_file(key, overrides))) for key, res in results.items()}
    if distributed.is_main():
        files = {
            run.folder.eval_file(key, overrides): {
                **res.to_dict(),
                "overrides": list(overrides),
                "weights": run.weights,
                "weights_step": run.step,
            }
            for key, res in results.items()
        }
        atomic_write_many(
            {file: (json.dumps(record, indent=2) + "\n").encode() for file, record in files.items()},
            elsewhere="evaluate a copy of the run folder on another disk",
        )
    return out
