"""Layers run one way: no module of fastadapt imports a module of a higher layer (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import fastadapt

PACKAGE = Path(fastadapt.__file__).parent

# folder (first component below fastadapt) -> layer; a module may import its own layer and below.
LAYERS = {
    "core": 0,  # episodes, the contract, the registries, errors: know no component
    "runtime": 1,  # devices, precision, several processes, the allocator
    "data": 2,
    "nn": 2,
    "rl": 2,  # components, registered by name
    "algorithms": 3,  # one file each, and the predictors' building blocks
    "config": 4,  # the schema, presets, and from a config to components (build, preflight)
    "eval": 5,  # fixed episodes, statistics, fine-tuning, online test-then-train, explanations
    "runs": 6,  # the run folder, checkpoints, load_run, export
    "training": 7,  # the Trainer, its hooks, loggers, run-level tests
    "analysis": 7,  # the theory measured on a run or an initial model
    "report": 8,  # plots and tables
    "apps": 9,
    "cli": 9,
    "__main__": 9,
    "__init__": 9,  # entry points and the public surface
}


def component(module: str) -> str:
    """``fastadapt.eval.stats`` -> ``eval``; ``fastadapt`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """Every fastadapt module imported anywhere in ``path`` (also inside functions), with its line."""
    here = "fastadapt." + ".".join(path.relative_to(package).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fastadapt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = here.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "fastadapt":
                continue
            if name == "fastadapt":  # from fastadapt import x: x may be a subpackage
                out += [
                    (node.lineno, f"fastadapt.{a.name}") if a.name in LAYERS else (node.lineno, "fastadapt")
                    for a in node.names
                ]
            else:
                out.append((node.lineno, name))
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = {
        component("fastadapt." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in modules()
    } - set(LAYERS)
    assert not missing, f"give these modules a layer: {missing}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in modules():
        me = component("fastadapt." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, name in imports_of(path):
            other = component(name)
            if LAYERS[other] > LAYERS[me]:
                where = f"{path.relative_to(PACKAGE)}:{line} ({me}, layer {LAYERS[me]})"
                upward.append(f"{where} imports {name} (layer {LAYERS[other]})")
    assert not upward, "\n".join(upward)


def test_eval_never_imports_training():
    for path in (PACKAGE / "eval").rglob("*.py"):
        assert not [n for _, n in imports_of(path) if component(n) == "training"], path


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    fake = tmp_path / "fastadapt"
    (fake / "eval").mkdir(parents=True)
    (fake / "eval" / "bad.py").write_text(
        "def f():\n    from fastadapt.training import loop\n\nfrom ..report import x\nfrom fastadapt import cli\n"
    )
    assert sorted(imports_of(fake / "eval" / "bad.py", fake)) == [
        (2, "fastadapt.training"),
        (4, "fastadapt.report"),
        (5, "fastadapt.cli"),
    ]


def test_the_package_root_holds_only_the_entry_points_and_every_module_fits_on_a_few_screens():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "cli.py"], f"a module at the package root belongs in a folder: {root}"
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"split these modules by job (450 lines at most): {long}"


def test_every_folder_of_the_package_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"give these folders a layer: {folders - set(LAYERS)}"
