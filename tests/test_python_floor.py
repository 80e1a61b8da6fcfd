"""The Python floor pyproject declares (``requires-python = ">=3.10"``) is kept by the code, not only stated.

Three checks, cheapest first. (1) Every file of the package and of ``examples/`` parses with Python 3.10's
grammar (``ast.parse(feature_version=(3, 10))``: ``except*``, PEP 695 generics and ``type`` statements
fail it). (2) No name the standard library gained after 3.10 (``tomllib``, ``typing.Self``,
``enum.StrEnum``, ``datetime.UTC``, ``ExceptionGroup``, ...) is used outside a ``sys.version_info`` or
``try``/``except ImportError`` guard. (3) When a Python 3.10 interpreter is on this machine
(``FASTADAPT_PYTHON310``, ``python3.10`` on PATH, or a pyenv 3.10), it compiles every file itself (its
real grammar: PEP 701 f-strings fail there) and imports the modules that need no torch, with the
``tomli`` branch of the TOML import taken. CI's interpreter is 3.11, so (3) is skipped where no 3.10
exists; (1) and (2) always run.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOOR = (3, 10)
FILES = sorted([*(ROOT / "src" / "fastadapt").rglob("*.py"), *(ROOT / "examples").glob("*.py")])

# What the standard library gained in 3.11 and 3.12 (the "What's New" pages), as module -> names.
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_NAMES = {
    "typing": {
        "Self",
        "LiteralString",
        "Never",
        "assert_never",
        "assert_type",
        "reveal_type",
        "Required",
        "NotRequired",
        "Unpack",
        "TypeVarTuple",
        "dataclass_transform",
        "get_overloads",
        "clear_overloads",
        "override",
        "TypeAliasType",
    },
    "enum": {
        "StrEnum",
        "ReprEnum",
        "verify",
        "member",
        "nonmember",
        "global_enum",
        "property",
        "EnumCheck",
        "FlagBoundary",
    },
    "datetime": {"UTC"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "itertools": {"batched"},
    "operator": {"call"},
    "math": {"exp2", "cbrt"},
    "logging": {"getLevelNamesMapping"},
}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}
NEWER_METHODS = {"add_note"}  # BaseException.add_note (3.11)


def _guarded(node: ast.AST) -> bool:
    """Whether ``node`` (an ``if`` or ``try``) guards a version: ``if sys.version_info ...`` or ``try: ... except
    ImportError``."""
    if isinstance(node, ast.If):
        return "version_info" in ast.unparse(node.test)
    if isinstance(node, ast.Try):
        return any(
            h.type is not None
            and any(n in ast.unparse(h.type) for n in ("ImportError", "AttributeError", "ModuleNotFoundError"))
            for h in node.handlers
        )
    return False


def newer_than_floor(source: str, filename: str = "<source>") -> list[str]:
    """Uses of standard-library names newer than 3.10 outside a version guard, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    found: list[str] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        what = None
        if isinstance(node, ast.Import):
            what = next((a.name for a in node.names if a.name in NEWER_MODULES), None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEWER_MODULES:
                what = node.module
            else:
                what = next(
                    (f"{node.module}.{a.name}" for a in node.names if a.name in NEWER_NAMES.get(node.module, ())), None
                )
        elif isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if node.attr in NEWER_NAMES.get(base, ()) or node.attr in NEWER_METHODS:
                what = f"{base}.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            what = node.id
        if what and not guarded:
            found.append(f"{filename}:{node.lineno}: {what}")
        if isinstance(node, (ast.If, ast.Try)) and _guarded(node):
            # the guarded body may use the newer name; the other branch must not
            for child in node.body:
                visit(child, True)
            rest = [*node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])]
            test = [node.test] if isinstance(node, ast.If) else []
            for child in [*test, *rest]:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def test_the_declared_floor_is_3_10_and_tomli_is_declared_for_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={FLOOR[0]}.{FLOOR[1]}"
    assert "tomli>=2; python_version < '3.11'" in project["dependencies"]
    assert f"Programming Language :: Python :: {FLOOR[0]}.{FLOOR[1]}" in project["classifiers"]


def test_every_file_parses_with_the_floor_grammar():
    assert len(FILES) > 50
    for path in FILES:
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=FLOOR)
    with pytest.raises(SyntaxError):  # the check does reject what 3.10 cannot parse
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=FLOOR)


def test_no_standard_library_name_newer_than_the_floor_outside_a_guard():
    found = [
        hit for path in FILES for hit in newer_than_floor(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not found, "\n".join(found)


def test_the_floor_checker_finds_what_it_looks_for():
    bad = (
        "import tomllib\nfrom typing import Self\nimport enum\nclass C(enum.StrEnum): pass\n"
        "try:\n    x = 1\nexcept ValueError as e:\n    e.add_note('n')\nraise ExceptionGroup('g', [])\n"
    )
    assert [h.split(": ", 1)[1] for h in newer_than_floor(bad)] == [
        "tomllib",
        "typing.Self",
        "enum.StrEnum",
        "e.add_note",
        "ExceptionGroup",
    ]
    good = (
        "import sys\nif sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli as tomllib\n"
        "try:\n    from typing import Self\nexcept ImportError:\n    Self = object\n"
    )
    assert newer_than_floor(good) == []
    assert newer_than_floor(
        "import sys\nif sys.version_info >= (3, 11):\n    pass\nelse:\n    import tomllib\n"
    )  # the wrong branch


def _python310() -> str | None:
    """A Python 3.10 interpreter on this machine, or None."""
    candidates = [
        os.environ.get("FASTADAPT_PYTHON310", ""),
        shutil.which("python3.10") or "",
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10"))),
    ]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 10)":
            return exe
    return None


CHECK_310 = """
import sys
from pathlib import Path
assert sys.version_info[:2] == (3, 10)
for path in sys.argv[1:]:
    compile(Path(path).read_text(encoding="utf-8"), path, "exec", dont_inherit=True)  # in memory: no .pyc written
import fastadapt, fastadapt.cli, fastadapt.config
fastadapt.cli.build_parser()
assert fastadapt.config.toml.tomllib.__name__ == "tomli", fastadapt.config.toml.tomllib  # 3.10's TOML import
assert "torch" not in sys.modules
print("ok", fastadapt.__version__, len(sys.argv) - 1)
"""


def test_python_3_10_itself_compiles_every_file_and_imports_the_command(tmp_path):
    exe = _python310()
    if exe is None:
        pytest.skip(
            "no Python 3.10 interpreter here (set FASTADAPT_PYTHON310); the grammar and name checks above still ran"
        )
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "tomli.py").write_text(
        "def loads(text):\n    raise NotImplementedError\n"
    )  # stands in for tomli, absent there
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(stub)]), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [exe, "-c", CHECK_310, *map(str, FILES)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ") and out.stdout.split()[-1] == str(len(FILES))
