"""Regenerate every table of docs/*.md whose cells are measured numbers, from the JSON files under results/.

    python scripts/docs_tables.py            # rewrite the blocks in place
    python scripts/docs_tables.py --check    # exit 1 naming each stale table, 0 when all are up to date

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is a key of
:data:`TABLES`. Each table comes from the script that first wrote it (imported, not copied), and is
built from committed JSON only: nothing is trained or evaluated. Tables outside markers (comparisons
with papers, measurements that have no JSON under results/) are written by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import cross_domain as cross_domain_study
import mann_ablation
import matching_ablation
import results_change
import results_hyper
import results_model_based
import results_rl
import results_sinusoid
import results_tables
import results_training_speed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def omniglot() -> list[str]:
    return results_tables.omniglot_table([str(p) for p in sorted((RESULTS / "runs").iterdir())])


def sinusoid() -> list[str]:
    return results_sinusoid.markdown_table(read_json(RESULTS / "sinusoid" / "results.json"))


def ntm_copy() -> list[str]:
    return results_model_based.ntm_copy_table([read_json(RESULTS / d / "results.json") for d in ("ntm_copy", "ntm_copy_50min")])


def mann_session1() -> list[str]:
    rows = [row for d in ("mann", "mann_50min") for row in results_model_based.mann_rows(read_json(RESULTS / d / "results.json"))]
    return results_model_based.mann_table(rows)


def mann_engine() -> list[str]:
    return results_model_based.mann_table(results_model_based.mann_rows(read_json(RESULTS / "mann_engine" / "results.json")))


def ntm_recall() -> list[str]:
    return results_model_based.recall_table(RESULTS / "ntm_recall")


def ntm_engine() -> list[str]:
    return results_model_based.ntm_engine_table(read_json(RESULTS / "ntm" / "results.json"))


def mann_ablation_table() -> list[str]:
    return mann_ablation.table(read_json(RESULTS / "mann_ablation" / "results.json"))


def matching_ablation_table() -> list[str]:
    return matching_ablation.table(read_json(RESULTS / "matching_ablation" / "results.json"))


def cross_domain() -> list[str]:
    return cross_domain_study.markdown_table(RESULTS / "runs").splitlines()


def lake() -> list[str]:
    return cross_domain_study.lake_table(RESULTS / "runs").splitlines()


def change_sinusoid() -> list[str]:
    return results_change.sinusoid_table(read_json(RESULTS / "change" / "results.json"))


def change_omniglot() -> list[str]:
    return results_change.omniglot_table(read_json(RESULTS / "change" / "results.json"))


def latency() -> list[str]:
    spec = importlib.util.spec_from_file_location("latency_benchmark", ROOT / "benchmarks" / "latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = read_json(ROOT / "benchmarks" / "results" / "latency.json")
    return [f"`{data['command']}` ({data['note']})", "", *module.summary(data["rows"])]


def rl() -> list[str]:
    return results_rl.table(read_json(RESULTS / "rl" / "results.json")).rstrip("\n").splitlines()


def hyper() -> list[str]:
    rows = [row for d in ("omniglot", "sinusoid") for row in read_json(RESULTS / "hyper" / d / "hyper.json")["rows"]]
    return results_hyper.part1_table(rows)


def hyper_study() -> list[str]:
    return results_hyper.study_table(read_json(RESULTS / "hyper" / "tune" / "hyper.json")["study"])


def training_speed() -> list[str]:
    return results_training_speed.table(read_json(RESULTS / "perf17" / "summary.json"))


TABLES: dict[str, Callable[[], list[str]]] = {
    "cross-domain": cross_domain,  # results/runs/xd-*/evals/*.json (scripts/cross_domain.py)
    "lake": lake,  # results/runs/xd-protonet-lake/evals/*.json (scripts/cross_domain.py)
    "sinusoid": sinusoid,  # results/sinusoid/results.json (scripts/results_sinusoid.py)
    "omniglot": omniglot,  # results/runs/*/eval_*.json, results.json, metrics.jsonl (scripts/results_tables.py)
    "ntm-copy": ntm_copy,  # results/ntm_copy*/results.json (scripts/results_model_based.py)
    "mann-session1": mann_session1,  # results/mann/results.json, results/mann_50min/results.json
    "mann-engine": mann_engine,  # results/mann_engine/results.json (results_model_based.py mann-runs)
    "change-sinusoid": change_sinusoid,  # results/change/results.json (scripts/results_change.py)
    "change-omniglot": change_omniglot,  # results/change/results.json (scripts/results_change.py)
    "rl": rl,  # results/rl/results.json (scripts/results_rl.py)
    "latency": latency,  # benchmarks/results/latency.json (benchmarks/latency.py)
    "hyper": hyper,  # results/hyper/{omniglot,sinusoid}/hyper.json (scripts/results_hyper.py)
    "hyper-study": hyper_study,  # results/hyper/tune/hyper.json (scripts/results_hyper.py)
    "training-speed": training_speed,  # results/perf17/summary.json (scripts/results_training_speed.py)
    "ntm-engine": ntm_engine,  # results/ntm/results.json (scripts/results_model_based.py ntm)
    "ntm-recall": ntm_recall,  # results/ntm_recall/{ntm,lstm}-recall: run folders (fastadapt train / eval)
    "mann-ablation": mann_ablation_table,  # results/mann_ablation/results.json (scripts/mann_ablation.py)
    "matching-ablation": matching_ablation_table,  # results/matching_ablation/results.json (scripts/matching_ablation.py)
}

OPEN = re.compile(r"^<!-- table: (\S+) -->$")
CLOSE = "<!-- /table -->"


class MarkerError(Exception):
    """A marker without its pair, or a table name no generator has."""


def regenerate(text: str, where: str, tables: dict[str, list[str]]) -> tuple[str, list[str]]:
    """``text`` with every marked block replaced by its generated table, and the names of the blocks that changed."""
    out: list[str] = []
    changed: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = OPEN.match(line.strip())
        if not m:
            if line.strip() == CLOSE:
                raise MarkerError(f"{where}:{i}: {CLOSE} without an opening <!-- table: NAME -->")
            continue
        name = m.group(1)
        if name not in TABLES:
            raise MarkerError(f"{where}:{i}: unknown table {name!r}; known: {', '.join(TABLES)}")
        end = next((j for j in range(i, len(lines)) if lines[j].strip() == CLOSE or OPEN.match(lines[j].strip())), None)
        if end is None or lines[end].strip() != CLOSE:
            raise MarkerError(f"{where}:{i}: table {name!r} has no {CLOSE} before the next marker or the end")
        if name not in tables:
            tables[name] = TABLES[name]()
        block = [x + "\n" for x in tables[name]]
        if lines[i:end] != block:
            changed.append(name)
        out += [*block, lines[end]]
        i = end + 1
    return "".join(out), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from what results/ gives")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="folder of the Markdown files (default: docs/)")
    args = parser.parse_args(argv)
    tables: dict[str, list[str]] = {}  # each generated once, however many docs hold it
    stale: list[str] = []
    for doc in sorted(args.docs.glob("*.md")):
        text = doc.read_text()
        try:
            new, changed = regenerate(text, str(doc), tables)
        except MarkerError as e:
            print(e, file=sys.stderr)
            return 2
        stale += [f"{doc}: {name}" for name in changed]
        if changed and not args.check:
            doc.write_text(new)
            print(f"rewrote {doc}: {', '.join(changed)}")
    if args.check and stale:
        command = "python scripts/docs_tables.py" + ("" if args.docs.resolve() == (ROOT / "docs") else f" --docs {args.docs}")
        print(f"stale tables ({'; '.join(stale)}): run {command} to regenerate them from results/", file=sys.stderr)
        return 1
    if not stale:
        print(f"{len(tables)} tables up to date ({', '.join(tables) or 'no markers'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
