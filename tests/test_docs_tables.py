"""scripts/docs_tables.py: every generated table in docs/ equals what the records under results/ give through the
library's report functions; the table functions' own rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from fastadapt.eval.stats import mean_ci

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_tables.py"


def docs_tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_tables_in_docs_are_what_results_give():
    res = docs_tables("--check")
    assert res.returncode == 0, res.stderr


def test_a_changed_number_is_reported_stale_and_rewritten(tmp_path):
    original = (ROOT / "docs" / "RESULTS.md").read_text()
    lines = original.splitlines(keepends=True)
    row = lines.index("<!-- table: omniglot -->\n") + 3  # marker, header, separator, then the first row
    lines[row] = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), lines[row], count=1)
    doc = tmp_path / "RESULTS.md"
    doc.write_text("".join(lines))
    shutil.copy(ROOT / "docs" / "RESULTS_model_based.md", tmp_path)

    res = docs_tables("--check", "--docs", str(tmp_path))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert "RESULTS.md: omniglot" in res.stderr and "RESULTS_model_based.md" not in res.stderr
    assert doc.read_text() != original  # --check changes nothing

    assert docs_tables("--docs", str(tmp_path)).returncode == 0
    assert doc.read_text() == original


def test_hyper_table_marks_diverged_runs_scored_or_not():
    from fastadapt.report.tables import hyper_table

    base = {"domain": "sinusoid-5shot", "method": "ALFA", "select": "fixed", "train_minutes": 0.5, "steps": 1900}
    scored = {
        **base,
        "diverged": "loss is inf",
        "metric": "mse",
        "mean": 3.5,
        "ci": 0.25,
        "episodes": 600,
        "seconds_per_task": 0.002,
    }
    unscored = {**base, "select": "-", "diverged": "loss is inf", "metric": None, "episodes": 0}
    header, _, row1, row2 = hyper_table([scored, unscored])
    assert "3.5000 +- 0.2500 (MSE) (diverged after step 1900: scored from its last good checkpoint)" in row1
    assert "diverged after step 1900, before its first checkpoint: nothing to score" in row2 and row2.count(
        "|"
    ) == header.count("|")


def test_mann_ablation_passes_lstm_is_where_the_curve_stays_above():
    from fastadapt.report.model_based import passes_lstm

    lstm = [(e, {"inst2": 0.5, "inst10": 0.5 + e / 1000}) for e in (0, 100, 200, 300, 400)]
    # above at 100, below at 200, above from 300 on: it passes (for good) at 300, not at 100
    curve = [(e, {"inst2": a, "inst10": 0.0}) for e, a in ((0, 0.4), (100, 0.6), (200, 0.4), (300, 0.6), (400, 0.7))]
    assert passes_lstm(curve, lstm, "inst2") == 300
    assert passes_lstm(curve, lstm, "inst10") is None  # never above
    # the LSTM's curve is interpolated between its points: 0.55 at episode 50 is not above 0.5 + 50/1000 = 0.55
    between = [(50, {"inst10": 0.55}), (150, {"inst10": 0.66})]
    assert passes_lstm(between, lstm, "inst10") == 150


def test_matching_ablation_gap_to_protonets_is_paired_when_scores_are_there():
    from fastadapt.report.tables import MATCHING_REFERENCE, matching_ablation_table

    ref = {"acc": 0.9, "ci": 0.05, "steps": 10, "train_minutes": 1.0, "scores": [0.8, 0.9, 1.0, 0.9]}
    row = {
        "acc": 0.85,
        "ci": 0.05,
        "steps": 12,
        "train_minutes": 1.0,
        "scores": [0.75, 0.85, 0.95, 0.85],
    }  # 5 points below on every episode
    result = {"minutes_per_row": 1, "settings": {"5w1s": {"FCE": row, MATCHING_REFERENCE: ref}}}
    line = next(x for x in matching_ablation_table(result) if x.startswith("| FCE |"))
    assert "| -5.00 ± 0.00 |" in line  # paired: the same difference on every episode has no spread
    del row["scores"]
    line = next(x for x in matching_ablation_table(result) if x.startswith("| FCE |"))
    assert f"| -5.00 ± {100 * (2 * 0.05**2) ** 0.5:.2f} |" in line


def test_recall_table_reads_the_runs_own_test_and_its_eval_records_in_bits(tmp_path):
    import json

    from fastadapt.cli import main as cli_main
    from fastadapt.report.model_based import recall_table

    run = tmp_path / "lstm-recall"
    train = [
        "train",
        "lstm-recall",
        "model.options={hidden_size=6}",
        "optim.steps=2",
        "data.meta_batch=2",
        "eval.test_episodes=3",
        "eval.batch=3",
        f"run.out={run}",
        "run.progress=false",
    ]
    assert cli_main(train) == 0
    options = "data.options={bits=6, item_length=3, min_items=2, max_items=6, test_items=9}"
    assert cli_main(["eval", str(run), options, "eval.test_episodes=4", "run.progress=false"]) == 0
    own = next(iter(json.loads((run / "results.json").read_text())["tests"].values()))
    (record,) = [json.loads(p.read_text()) for p in (run / "evals").glob("*.json")]
    header, _, six, nine, updates, minutes = recall_table(tmp_path)
    assert header == "| items | LSTM |"
    assert six == f"| 6 | {18 * own['mean']:.2f} ± {18 * own['ci']:.2f} |"  # 3 vectors of 6 bits per answer
    assert nine == f"| 9 (unseen) | {18 * record['mean']:.2f} ± {18 * record['ci']:.2f} |"
    assert updates == "| updates x sequences | 2 x 2 |" and minutes.startswith("| training minutes | ")


def test_lake_ablation_table_gives_errors_leaves_out_rows_not_run_and_empties_columns_that_do_not_apply():
    from fastadapt.report.tables import lake_ablation_table

    acc = {"metric": "acc", "mean": 0.9625, "ci": 0.0125, "episodes": 20}
    cells = {
        "run": {"steps": 900, "train_minutes": 60.2, "evals": {"official": acc, "official-two-way": {"skipped": "no"}}},
        "not run": {"steps": 0, "train_minutes": 0, "evals": {}},
    }
    header, _, row, people, bpl = lake_ablation_table({"cells": cells})
    assert header.count("|") == row.count("|") == people.count("|") == 8
    assert row == "| run | 3.75 ± 1.25 % |  |  |  | 900 steps, 60 min | - / - |"
    assert "people" in people and "4.5 %" in people and "3.3 %" in bpl


def test_lake_ablation_table_pairs_each_row_with_the_first_on_the_same_episodes(tmp_path):
    from fastadapt.report.tables import lake_ablation_table

    first, second = [1, 1, 0, 1], [1, 0, 0, 0]  # per-episode accuracy on the same four official runs
    cells = {}
    for name, scores in (("first", first), ("second", second)):
        (tmp_path / name / "evals").mkdir(parents=True)
        (tmp_path / name / "evals" / "off.json").write_text(json.dumps({"scores": scores}))
        mean = sum(scores) / 4
        ev = {"metric": "acc", "mean": mean, "ci": 0.1, "episodes": 4, "record": "off.json"}
        cells[name] = {"run": name, "steps": 1, "train_minutes": 1, "evals": {"official": ev}}
    rows = lake_ablation_table({"cells": cells}, root=tmp_path)
    assert rows[2].endswith("| - / - |")  # the first row is the reference
    m, h = mean_ci([a - b for a, b in zip(first, second)])  # its accuracy minus the second's: the second's extra error
    assert rows[3].endswith(f"| {100 * m:+.2f} ± {100 * h:.2f} / - |") and m == 0.5
