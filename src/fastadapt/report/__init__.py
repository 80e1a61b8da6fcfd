"""Reports: every plot and table. Run folders (:mod:`.runs`), online runs (:mod:`.streams`), the project's studies
(:mod:`.tables`, :mod:`.model_based`); :data:`STUDY_TABLES` names the tables a study file can ask for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastadapt.report.domains import domains_tables
from fastadapt.report.model_based import mann_ablation_table
from fastadapt.report.runs import markdown_report, plot_learnt_learning, plot_run, read_metrics, save_episode_grid
from fastadapt.report.streams import change_tables
from fastadapt.report.tables import (
    comparators_table,
    cross_domain_tables,
    hyper_tables,
    matching_ablation_table,
    rl_table,
    sinusoid_table,
)

STUDY_TABLES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {  # a study file's `table = NAME`
    "sinusoid": sinusoid_table,
    "rl": rl_table,
    "hyper": hyper_tables,
    "cross-domain": cross_domain_tables,
    "domains": domains_tables,
    "mann-ablation": mann_ablation_table,
    "matching-ablation": matching_ablation_table,
    "change": change_tables,
    "comparators": comparators_table,
}

__all__ = [
    "STUDY_TABLES",
    "markdown_report",
    "plot_learnt_learning",
    "plot_run",
    "read_metrics",
    "save_episode_grid",
]
