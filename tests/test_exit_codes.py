"""The exit statuses (0 done, 2 usage/config/data/file error, 130 interrupted) are written where a user looks for them.

The statuses themselves are tested where they arise: tests/test_conventions.py (2 and 130 from ``cli.main``, the module
docstring and README), tests/test_engine.py and tests/test_hardening_records.py (130 from a real SIGINT mid-training).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastadapt import cli

ROOT = Path(__file__).resolve().parents[1]
STATUSES = re.compile(
    r"exit (status|codes?)\W+0 done[;,] 2 (a )?usage[/, ]+config[/, ]+data[/, ]+(or )?file error.*130 interrupted",
    re.I | re.S,
)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_the_help_names_the_exit_statuses(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert STATUSES.search(out), out[-400:]


def test_the_docs_front_page_names_the_exit_statuses():
    text = (ROOT / "docs" / "index.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| exit codes |"))
    assert re.search(r"0 done; 2 a usage, config, data or file error.*130 interrupted", row), row
    assert not STATUSES.search(
        "exit status: 0 done, 2 usage error, 130 interrupted"
    )  # the pattern wants every kind of error
