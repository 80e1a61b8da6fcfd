"""Reports a user reads: learning curves, comparison tables, episode pictures, learnt rates."""

from __future__ import annotations

import pytest

from fastadapt.algorithms import inner
from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.training.loop import train

TINY = [
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "model.hidden=8",
    "optim.steps=4",
    "eval.val_every=2",
    "eval.val_episodes=4",
    "eval.test_episodes=4",
    "eval.batch=4",
    "run.log_every=1",
    "run.progress=false",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preset in ("protonet-quick", "metasgd-omniglot-5w1s"):
        cfg = load_config(preset, [*TINY, f"run.out={root / preset}"])
        train(cfg)
        out[preset] = cfg.out_dir
    return out


def test_plot_writes_learning_curves_and_learnt_rates(runs, capsys):
    assert cli_main(["plot", str(runs["protonet-quick"])]) == 0
    assert (runs["protonet-quick"] / "curves.png").stat().st_size > 5000
    assert cli_main(["plot", str(runs["metasgd-omniglot-5w1s"])]) == 0
    assert (runs["metasgd-omniglot-5w1s"] / "inner_lrs.png").stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


def test_plot_draws_mamlpp_rates_per_step_and_nothing_for_fixed_rates(tmp_path, capsys):
    import fastadapt

    extra = [
        "algorithm.inner_steps=2",
        "algorithm.msl_anneal_steps=2",
        "algorithm.first_order_until=0",
        "eval.test_episodes=0",
    ]
    cfg = load_config("mamlpp-omniglot-5w1s", [*TINY, *extra, f"run.out={tmp_path / 'pp'}"])
    train(cfg)
    algo = fastadapt.load_run(cfg.out_dir).algorithm
    rates = algo.step_rates()
    assert set(rates) == set(inner.trainable_params(algo.model)) and all(len(r) == 2 for r in rates.values())
    assert any(abs(v - 0.1) > 1e-6 for r in rates.values() for v in r)  # learnt: moved from the initial 0.1
    assert cli_main(["plot", str(cfg.out_dir)]) == 0
    assert (cfg.out_dir / "step_rates.png").stat().st_size > 5000
    plain = load_config("maml-omniglot-5w1s", [*TINY, "eval.test_episodes=0", f"run.out={tmp_path / 'plain'}"])
    train(plain)
    assert fastadapt.load_run(plain.out_dir).algorithm.step_rates() == {}
    assert cli_main(["plot", str(plain.out_dir)]) == 0
    assert not (plain.out_dir / "step_rates.png").exists()
    capsys.readouterr()


def test_report_compares_runs_in_a_markdown_table(runs, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert cli_main(["report", *map(str, runs.values()), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run | algorithm | test setting |")
    rows = lines[2:]
    assert len(rows) == 2
    assert "protonet" in rows[0] and "5w1s (15 queries)" in rows[0] and " +- " in rows[0] and "%" in rows[0]
    assert "metasgd" in rows[1] and "transductive" in rows[1]


def test_report_and_plot_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "has no results.json" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_sample_saves_a_picture_of_episodes(tmp_path, capsys):
    out = tmp_path / "ep.png"
    assert cli_main(["sample", "protonet-quick", "data.ways=5", "--tasks", "2", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] >= 28 * 5 and im.size[1] >= 2 * 28
    assert "support_x (2, 5, 1, 28, 28)" in capsys.readouterr().out


def test_list_names_algorithms_presets_and_datasets(capsys):
    assert cli_main(["list"]) == 0
    text = capsys.readouterr().out
    for word in (
        "maml",
        "reptile",
        "matching",
        "meta_lstm",
        "mann",
        "protonet-quick",
        "maml-sinusoid",
        "vinyals",
        "folder:<path>",
    ):
        assert word in text


def test_eval_command_writes_a_file_per_setting_and_leaves_the_training_records_alone(runs, capsys):
    import json

    run = runs["protonet-quick"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert cli_main(["eval", str(run), "eval.test_episodes=6"]) == 0
    assert "test 5w1s:" in capsys.readouterr().out
    assert cli_main(["eval", str(run), "eval.test_episodes=4", "data.test_shots=2"]) == 0
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # results.json, eval_*.json, checkpoints: untouched
    first = json.loads((run / "evals" / "5w1s__eval.test_episodes=6.json").read_text())
    second = json.loads((run / "evals" / "5w2s__data.test_shots=2__eval.test_episodes=4.json").read_text())
    assert first["episodes"] == 6 and first["settings"]["shots"] == 1 and first["overrides"] == ["eval.test_episodes=6"]
    assert (
        second["episodes"] == 4
        and second["settings"]["shots"] == 2
        and first["weights"] in ("best.pt", "checkpoint.pt")
    )


def test_comparators_table_pairs_each_row_with_protonets_trained_alike() -> None:
    from fastadapt.report.tables import comparators_table

    def cell(scores: list[float], steps: int) -> dict:
        return {
            "steps": steps,
            "train_minutes": 20.0,
            "evals": {"5w1s": {"mean": sum(scores) / len(scores), "ci": 0.01, "scores": scores}},
        }

    results = {
        "evals": {"5w1s": {}},
        "cells": {
            "ProtoNets, trained 1-shot": cell([1.0, 0.9, 0.8, 1.0], 100),
            "ProtoNets, trained 5-shot": cell([0.5, 0.5, 0.5, 0.5], 100),
            "siamese, trained 1-shot": cell([0.9, 0.8, 0.7, 0.9], 300),
            "attentive, trained 1-shot": {"evals": {}},  # not run yet: left out
        },
    }
    lines = comparators_table(results)
    assert len(lines) == 2 + 3
    siamese = next(line for line in lines if line.startswith("| siamese"))
    assert "| 82.50 ± 1.00 |" in siamese and "300 steps, 20 min" in siamese
    assert siamese.endswith("| -10.00 ± 0.00 |")  # paired with the 1-shot ProtoNets row: every episode 0.1 lower
    assert next(line for line in lines if line.startswith("| ProtoNets, trained 5-shot")).endswith("| - |")
