"""scripts/docs_tables.py: every generated table in docs/ equals what the JSON under results/ gives."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_hyper_table_marks_diverged_runs_scored_or_not(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import results_hyper

    base = {"domain": "sinusoid-5shot", "method": "ALFA", "select": "fixed", "train_minutes": 0.5, "steps": 1900}
    scored = {**base, "diverged": "loss is inf", "metric": "mse", "mean": 3.5, "ci": 0.25, "episodes": 600, "seconds_per_task": 0.002}
    unscored = {**base, "select": "-", "diverged": "loss is inf", "metric": None, "episodes": 0}
    header, _, row1, row2 = results_hyper.part1_table([scored, unscored])
    assert "3.5000 +- 0.2500 (MSE) (diverged after step 1900: scored from its last good checkpoint)" in row1
    assert "diverged after step 1900, before its first checkpoint: nothing to score" in row2 and row2.count("|") == header.count("|")
