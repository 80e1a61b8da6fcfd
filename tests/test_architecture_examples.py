"""The worked examples of docs/ARCHITECTURE.md run as written, from a folder outside the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text()))


def test_the_doc_has_its_three_examples():
    assert set(examples()) == {"task-source", "model", "algorithm"}


@pytest.mark.parametrize("name", ["task-source", "model", "algorithm"])
def test_an_architecture_example_runs_from_outside_the_package(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + examples()[name])
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "runs").is_dir() and out.stdout.strip()
