"""Evaluations a study file can name besides the default (``evaluate = "fastadapt.apps.study_evals:NAME"``)."""

from __future__ import annotations

from typing import Any

from fastadapt.apps.study import Cell, Evaluation, Study


def mann_instance_accuracy(algo: Any, sampler: Any, episodes: int, seed: int) -> dict[str, list[float]]:
    """A MANN's (or its LSTM baseline's) accuracy by instance on ``episodes`` fixed test episodes of ``sampler``:
    ``{"k": [mean %, 95 % CI %]}`` for the k-th presentation of a class (Santoro et al. 2016, table 1)."""
    import torch

    from fastadapt.algorithms.mann import REPORTED_INSTANCES, instance_accuracy
    from fastadapt.eval.stats import mean_ci

    per_episode = []
    algo.eval()
    with torch.no_grad():
        for i, batch in enumerate(sampler.fixed(episodes, batch_size=100)):
            seq = algo.make_sequence(batch, torch.Generator().manual_seed(seed * 1000 + i))  # the run's label encoding
            logits = algo.sequence_logits(seq)
            per_episode.append(instance_accuracy(logits, seq.labels, seq.instance, max(REPORTED_INSTANCES)))
    acc = torch.cat(per_episode)
    return {str(k): list(mean_ci(acc[:, k - 1].numpy() * 100)) for k in range(1, acc.shape[1] + 1)}


def mann_instances(cell: Cell, evaluation: Evaluation, study: Study) -> dict[str, Any]:
    """The study evaluation of a MANN run: accuracy by instance on its test part (``eval.seed + 1`` episodes;
    ``evaluation.episodes``, else the run's ``eval.test_episodes``), and its number of training episodes."""
    from fastadapt.config.build import task_sources
    from fastadapt.runs import load_run

    run = load_run(cell.run, list(evaluation.overrides))
    cfg = run.config
    sampler = task_sources(cfg, tests_only=True).tests[f"{cfg.test_ways}w{cfg.test_shots}s"]
    episodes = evaluation.episodes or cfg.eval.test_episodes
    accuracy = mann_instance_accuracy(run.algorithm, sampler, episodes, cfg.eval.seed)
    return {"accuracy": accuracy, "episodes": episodes, "training_episodes": run.step * cfg.data.meta_batch}


__all__ = ["mann_instance_accuracy", "mann_instances"]
