"""Records and docs are portable: nothing under results/ or docs/ names a folder of the machine that made it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# an absolute path under a machine's own folders; "runs/tmp/x" or "a.b/home/" are relative and do not count
ABSOLUTE = re.compile(rb"(?<![\w./-])/(?:work|tmp|root|home|Users)/")


def absolute_paths(folder: Path) -> list[str]:
    """``file:line: text`` of each line of the files below ``folder`` that names an absolute path (binary files too)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if ABSOLUTE.search(line):
                text = line.decode("utf-8", "replace").strip()
                found.append(f"{path.relative_to(ROOT)}:{number}: {text[:160]}")
    return found


def test_the_absolute_path_pattern_finds_machine_folders_and_nothing_relative():
    for line in [b'"out": "/work/runs19/x"', b"--out /tmp/rl", b"/root/.cache", b"(/home/me/a)", b"`/Users/me`"]:
        assert ABSOLUTE.search(line), line
    for line in [b'"out": "runs/x"', b"results/tmp/x", b"my.home/x", b"runs/work/a", b"/usr/share/datasets/x"]:
        assert not ABSOLUTE.search(line), line


@pytest.mark.parametrize("folder", ["results", "docs"])
def test_no_record_or_doc_names_an_absolute_path_of_the_machine_that_made_it(folder):
    if not (ROOT / folder).is_dir():
        pytest.skip(f"no {folder}/ beside the tests (an installed copy, not a checkout)")
    found = absolute_paths(ROOT / folder)
    assert not found, "absolute paths (write them relative to the repository, e.g. runs/NAME):\n" + "\n".join(found)
