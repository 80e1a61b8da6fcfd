"""Studies: a TOML file names a grid of presets x overrides x evaluation settings (and seeds); one runner runs it.

``fastadapt study FILE`` (or :func:`run_study`) trains every cell through :func:`fastadapt.train`, evaluates
it, and writes ``results.json``, ``results.md`` and a plot into the study's ``out`` folder. Resumable: a
finished cell is skipped, an interrupted one resumes from its checkpoint. docs/ARCHITECTURE.md describes the
file; ``studies/`` holds the project's own studies.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastadapt.core.cancel import Interrupted
from fastadapt.core.errors import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

KEYS = {
    "description": "what the study measures (one line)",
    "out": "folder for results.json, results.md and the plot (relative to the working folder)",
    "runs": "folder of the run folders, one per cell (default: <out>/runs)",
    "overrides": "config overrides of every cell (key=value)",
    "seeds": "run.seed values; each row is trained once per seed",
    "rows": "label = preset, or label = { preset = ..., overrides = [...], run = folder name }; {variant} in a "
    "preset name becomes the variant's label",
    "variants": "label = [overrides]: crossed with the rows",
    "evals": "name = [overrides], or name = { overrides = [...], test = key, episodes = N }: the columns",
    "episodes": "fixed test episodes per evaluation (default: the run's eval.test_episodes)",
    "evaluate": "how a cell is evaluated: 'test' (default), 'none', or 'file.py:function'",
    "record": "how the cells become results.json: 'cells' (default) or 'file.py:function'",
    "table": "'cells' (default), a name of fastadapt.report.STUDY_TABLES, or 'file.py:function'",
    "plot": "'cells' (default), 'none', or 'file.py:function'",
    "options": "a table of the study's own settings, for its functions",
}
ROW_KEYS = {"preset", "overrides", "run"}
EVAL_KEYS = {"overrides", "test", "episodes"}


class StudyError(ConfigError):
    """A study file that cannot be run (one line: the file, the key, the fix)."""


@dataclass(frozen=True)
class Cell:
    """One training run of a study: ``preset`` with ``overrides``, in the run folder ``run``."""

    label: str
    preset: str
    overrides: tuple[str, ...]
    run: Path

    def training_overrides(self) -> list[str]:
        return [*self.overrides, f"run.out={json.dumps(str(self.run))}"]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation setting (a column): overrides of the run's config at test, which test, how many episodes."""

    name: str
    overrides: tuple[str, ...] = ()
    test: str | None = None
    episodes: int | None = None


@dataclass(frozen=True)
class Study:
    file: Path
    description: str
    out: Path
    cells: tuple[Cell, ...]
    evals: tuple[Evaluation, ...]
    evaluate: str = "test"
    record: str = "cells"
    table: str = "cells"
    plot: str = "cells"
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.file.stem

    def resolve(self, ref: str, builtins: Mapping[str, Callable] = {}) -> Callable:  # noqa: B006 (read only)
        """The function ``ref`` names: a built-in name, ``file.py:function`` (beside the study file) or
        ``module:function``."""
        if ref in builtins:
            return builtins[ref]
        where, _, attr = ref.partition(":")
        try:
            if where.endswith(".py"):
                path = (self.file.parent / where).resolve()
                name = f"fastadapt_study_{path.stem}_{abs(hash(str(path)))}"
                module = sys.modules.get(name)
                if module is None:
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    spec.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
            return getattr(module, attr)
        except (ImportError, OSError, AttributeError) as e:
            known = ", ".join(builtins) or "none"
            raise StudyError(f"{self.file}: cannot find {ref!r} ({e}); built-in names: {known}") from None


def _strings(file: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StudyError(f"{file}: {where} must be a list of 'key=value' strings, not {value!r}")
    return tuple(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:48]


def _table(file: Path, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StudyError(f"{file}: [{key}] must be a table")
    return value


def load_study(path: str | Path) -> Study:
    """Read and check a study file: unknown keys, unknown presets and bad overrides are one-line errors."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise StudyError(f"{file}: not a readable TOML study file ({e})") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise StudyError(f"{file}: unknown key {unknown[0]!r}; a study file has: {', '.join(KEYS)}")
    if "out" not in data or not isinstance(data["out"], str):
        raise StudyError(f"{file}: 'out' (the folder for results.json) is missing")
    out = Path(data["out"])
    runs = Path(data.get("runs", str(out / "runs")))
    common = _strings(file, "overrides", data.get("overrides", []))
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyError(f"{file}: seeds must be a list of integers, not {seeds!r}")
    rows = _table(file, data, "rows")
    if not rows:
        raise StudyError(f'{file}: [rows] is missing or empty; add label = "preset" lines')
    variants = {k: _strings(file, f"variants.{k}", v) for k, v in _table(file, data, "variants").items()}
    cells = []
    for label, row in rows.items():
        row = {"preset": row} if isinstance(row, str) else row
        if not isinstance(row, dict) or not isinstance(row.get("preset"), str) or set(row) - ROW_KEYS:
            raise StudyError(f"{file}: row {label!r} must be a preset name or a table of {', '.join(sorted(ROW_KEYS))}")
        base = str(row.get("run") or _slug(label))
        if Path(base).is_absolute() or ".." in Path(base).parts or not Path(base).parts:
            raise StudyError(
                f"{file}: row {label!r} has run = {base!r}; a run is a folder inside {runs} (no absolute path, no "
                "'..'): set the folder with runs = ... at the top"
            )
        for vname, vover in (variants or {"": ()}).items():
            for seed in seeds or [None]:
                name = ", ".join(x for x in (label, vname, "" if seed is None else f"seed {seed}") if x)
                folder = "-".join(x for x in (base, _slug(vname), "" if seed is None else f"seed{seed}") if x)
                over = (*common, *_strings(file, f"rows.{label}.overrides", row.get("overrides", [])), *vover)
                over += () if seed is None else (f"run.seed={seed}",)
                cells.append(Cell(name, row["preset"].replace("{variant}", vname), over, runs / folder))
    evals = []
    for name, spec in (_table(file, data, "evals") or {"test": []}).items():
        spec = {"overrides": spec} if isinstance(spec, list) else spec
        if not isinstance(spec, dict) or set(spec) - EVAL_KEYS:
            raise StudyError(f"{file}: evals.{name} must be a list of overrides or a table of {', '.join(EVAL_KEYS)}")
        overrides = _strings(file, f"evals.{name}.overrides", spec.get("overrides", []))
        evals.append(Evaluation(name, overrides, spec.get("test"), spec.get("episodes", data.get("episodes"))))
    study = Study(
        file,
        str(data.get("description", "")),
        out,
        tuple(cells),
        tuple(evals),
        **{k: str(data[k]) for k in ("evaluate", "record", "table", "plot") if k in data},
        options=_table(file, data, "options"),
    )
    _check_configs(study)
    return study


def _check_configs(study: Study) -> None:
    from fastadapt.config import load_config

    for cell in study.cells:
        try:
            load_config(cell.preset, cell.training_overrides())
            for ev in study.evals:
                load_config(cell.preset, [*cell.training_overrides(), *ev.overrides])
        except ConfigError as e:
            raise StudyError(f"{study.file}: row {cell.label!r}: {' '.join(str(e).splitlines())}") from None


def evaluate_test(cell: Cell, evaluation: Evaluation, study: Study) -> dict[str, Any]:
    """The default evaluation: the run's fixed test episodes (``evaluation.test``, else its first test) with the
    setting's overrides; the score's mean, confidence interval, episodes and per-episode scores."""
    from fastadapt.config.build import task_sources
    from fastadapt.eval import evaluate
    from fastadapt.runs import load_run
    from fastadapt.training.testing import evaluated

    run = load_run(cell.run, list(evaluation.overrides))
    cfg = run.config
    shapes = run.provenance.get("task_shapes") or {}
    shape = tuple(shapes["support_x"][1:]) if shapes.get("support_x") else None
    tests = task_sources(cfg, tests_only=True, input_shape=shape).tests
    if evaluation.test is not None and evaluation.test not in tests:
        raise StudyError(
            f"{study.file}: evals.{evaluation.name}: no test {evaluation.test!r}; the run has {list(tests)}"
        )
    sampler = tests[evaluation.test] if evaluation.test is not None else next(iter(tests.values()))
    episodes = evaluation.episodes or cfg.eval.test_episodes
    res = evaluate(evaluated(cfg, run.algorithm), sampler.fixed(episodes, cfg.eval.batch), cfg.eval.level)
    return {"metric": res.metric, "mean": res.mean, "ci": res.ci, "episodes": res.episodes, "scores": list(res.scores)}


def record_cells(study: Study, cells: dict[str, Any]) -> dict[str, Any]:
    """The default ``results.json``: the study's description and every cell's record."""
    evals = {e.name: {"overrides": list(e.overrides), "test": e.test, "episodes": e.episodes} for e in study.evals}
    return {"study": study.name, "description": study.description, "evals": evals, "options": dict(study.options),
            "cells": cells}  # fmt: skip


def table_cells(results: Mapping[str, Any]) -> list[str]:
    """One row per cell, one column per evaluation: mean +- 95 % CI (accuracy in %), then steps and minutes."""
    cells = results["cells"]
    names = list(dict.fromkeys(n for c in cells.values() for n in c["evals"]))
    lines = ["| cell | " + " | ".join(names) + " | meta-steps | train min |", "|---" * (len(names) + 3) + "|"]
    for label, c in cells.items():
        scores = []
        for n in names:
            e = c["evals"].get(n)
            if e is None or "mean" not in e:  # not evaluated, or skipped by the study's evaluate
                scores.append("-")
                continue
            scale = 100 if e["metric"] == "acc" else 1
            scores.append(f"{scale * e['mean']:.4g} ± {scale * e['ci']:.2g}")
        lines.append(f"| {label} | " + " | ".join(scores) + f" | {c['steps']} | {c['train_minutes']:.1f} |")
    return lines


def plot_cells(results: Mapping[str, Any], study: Study) -> list[Path]:
    """``results.png``: every evaluation's mean and interval per cell (bars)."""
    from fastadapt.report.figure import pyplot, save_figure

    plt = pyplot()
    cells = results["cells"]
    names = list(dict.fromkeys(n for c in cells.values() for n in c["evals"]))
    fig, axes = plt.subplots(1, len(names), figsize=(max(4, 1 + 0.6 * len(cells)) * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        got = [(label, c["evals"][name]) for label, c in cells.items() if name in c["evals"]]
        ax.bar(range(len(got)), [e["mean"] for _, e in got], yerr=[e["ci"] for _, e in got], capsize=3)
        ax.set_xticks(range(len(got)), [label for label, _ in got], rotation=30, ha="right", fontsize=7)
        ax.set(title=name, ylabel=got[0][1]["metric"] if got else "")
    return [save_figure(fig, study.out / "results.png")]


def _train_cell(cell: Cell, old: Mapping[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Train ``cell`` unless its run finished (or diverged before); its steps and training minutes."""
    from fastadapt.runs import RunFolder
    from fastadapt.training import train
    from fastadapt.training.resume import TrainingDiverged

    folder = RunFolder(cell.run)
    rec = {"preset": cell.preset, "overrides": list(cell.overrides), "run": str(cell.run)}
    if old.get("diverged"):
        return {**old, "evals": dict(old.get("evals", {}))}
    if not folder.results_file.is_file():  # not finished: train, or resume from the checkpoint
        progress(f"{cell.label}: fastadapt train {cell.preset} {' '.join(cell.training_overrides())}")
        try:
            res = train(cell.preset, cell.training_overrides())
        except TrainingDiverged as e:  # recorded; evaluated from its last good checkpoint, if it has one
            progress(f"{cell.label}: {e}")
            logged = folder.read_metrics()
            steps = max((int(r.get("step", 0)) for r in logged), default=0)
            minutes = max((float(r.get("time", 0.0)) for r in logged), default=0.0) / 60
            return {**rec, "steps": steps, "train_minutes": minutes, "diverged": str(e), "evals": {}}
        if res.interrupted:  # the checkpoint is saved: stop the grid too, exiting 128 + the signal (130 or 143)
            raise Interrupted(res.signal or signal.SIGINT)
    done = folder.read_results()
    return {**rec, "steps": done["steps"], "train_minutes": done["train_seconds"] / 60, "evals": {}}


def _state_file(study: Study) -> Path:
    return study.out / ("results.json" if study.record == "cells" else "cells.json")


def _run_cell(
    study: Study, cell: Cell, old: Mapping[str, Any], evaluate: Callable | None, say: Callable[[str], None]
) -> dict[str, Any]:
    """Train ``cell`` (unless done) and evaluate it in every setting it lacks; its record."""
    from fastadapt.runs import RunFolder

    rec = _train_cell(cell, old, say)
    rec["evals"] = dict(old.get("evals", {})) if old.get("steps") == rec["steps"] else {}
    folder = RunFolder(cell.run)  # a run that diverged before its first checkpoint has nothing to score
    scorable = not rec.get("diverged") or folder.best_file.is_file() or folder.checkpoint_file.is_file()
    for ev in study.evals if evaluate is not None and scorable else ():
        if ev.name not in rec["evals"]:
            rec["evals"][ev.name] = e = evaluate(cell, ev, study)
            say(f"{cell.label}: {ev.name}: " + (f"{e['mean']:.4g} ± {e['ci']:.2g}" if "mean" in e else "done"))
    return rec


def _publish(study: Study, cells: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Write the state file, ``results.json`` and the report from ``cells``; the results and the table's lines."""
    _write_json(_state_file(study), {"study": study.name, "description": study.description, "cells": cells})
    results = study.resolve(study.record, {"cells": record_cells})(study, cells)
    _write_json(study.out / "results.json", results)
    return results, write_report(study, results)


def run_study(
    path: str | Path | Study,
    *,
    only: list[str] | None = None,
    report_only: bool = False,
    progress: Callable[[str], None] = print,
    storage: str | None = None,
    heartbeat: int = 30,
) -> dict[str, Any]:
    """Run the study file at ``path`` (resumable) and return its ``results.json``.

    Args:
        only: labels of the cells to run (default: all).
        report_only: train and evaluate nothing; rewrite the table and the plot from ``results.json``.
        progress: called with a line per step ("[2/6] MAML: evaluated 5shot: ...").
        storage: a database URL (``postgresql://...``, ``sqlite:///...``) that several workers share: each runs
            the cells no other worker holds, a dead worker's cell is resumed by another, and each merges
            ``results.json`` from the database (:mod:`fastadapt.apps.study_claims`).
        heartbeat: seconds between a worker's beats with ``storage`` (a claim without one for 3 beats is stale).
    """
    study = path if isinstance(path, Study) else load_study(path)
    if storage and not report_only:  # a bad or unreachable URL is one line before anything is written
        from fastadapt.apps.storage import connect, normalize

        connect(normalize(storage)).dispose()
    study.out.mkdir(parents=True, exist_ok=True)
    if report_only:
        file = study.out / "results.json"
        if not file.is_file():
            raise StudyError(f"{file} does not exist; run the study first (fastadapt study {study.file})")
        results = json.loads(file.read_text())
    else:
        unknown = sorted(set(only or ()) - {c.label for c in study.cells})
        if unknown:
            raise StudyError(f"{study.file}: no cell {unknown[0]!r}; cells: {', '.join(c.label for c in study.cells)}")
        state = _state_file(study)
        cells = json.loads(state.read_text()).get("cells", {}) if state.is_file() else {}
        evaluate = study.resolve(study.evaluate, {"test": evaluate_test, "none": None})
        chosen = [c for c in study.cells if not only or c.label in only]
        if storage:
            from fastadapt.apps.study_claims import work

            run = lambda cell, say: _run_cell(study, cell, cells.get(cell.label, {}), evaluate, say)  # noqa: E731
            results, lines = work(study, chosen, storage, heartbeat, run, lambda c: _publish(study, c), progress)
            for line in lines:
                progress(line)
            return results
        for i, cell in enumerate(chosen, 1):
            cells[cell.label] = _run_cell(study, cell, cells.get(cell.label, {}), evaluate,
                                          lambda s, i=i: progress(f"[{i}/{len(chosen)}] {s}"))  # fmt: skip
            _write_json(state, {"study": study.name, "description": study.description, "cells": cells})
        results = study.resolve(study.record, {"cells": record_cells})(study, cells)
        _write_json(study.out / "results.json", results)
    for line in write_report(study, results):
        progress(line)
    return results


def write_report(study: Study, results: Mapping[str, Any]) -> list[str]:
    """``results.md`` (the study's table) and its plot, from ``results``; returns the table's lines."""
    from fastadapt.report import STUDY_TABLES

    lines = study.resolve(study.table, {"cells": table_cells, **STUDY_TABLES})(results)
    (study.out / "results.md").write_text("\n".join(lines) + "\n")
    if study.plot != "none":
        study.resolve(study.plot, {"cells": plot_cells})(results, study)
    return lines


def _write_json(path: Path, obj: Any) -> None:
    def plain(v: Any) -> Any:  # JSON-safe: NaN and infinities as null
        if isinstance(v, Mapping):
            return {k: plain(w) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(w) for w in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(plain(obj), indent=1) + "\n")
    tmp.replace(path)


def add_study_parser(sub: Any) -> None:
    """The ``fastadapt study FILE`` subcommand."""
    from fastadapt.apps.storage import add_arguments

    p = sub.add_parser("study", help="run a study file: a grid of presets x overrides x evaluations (resumable)")
    p.add_argument("file", help="the study's TOML file (studies/*.toml)")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="run only these cells (by label)")
    p.add_argument("--report", action="store_true", help="only rewrite results.md and the plot from results.json")
    add_arguments(p, "cells")
    p.set_defaults(fn=_command)


def _command(args: argparse.Namespace) -> int:
    say = lambda s: print(s, flush=True)  # noqa: E731
    run_study(args.file, only=args.only, report_only=args.report, progress=say, storage=args.storage,
              heartbeat=args.heartbeat)  # fmt: skip
    return 0


__all__ = ["Cell", "Evaluation", "Study", "StudyError", "load_study", "run_study", "write_report"]
