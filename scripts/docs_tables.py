"""Regenerate every table of docs/*.md whose cells are measured numbers, from the JSON files under results/.

    python scripts/docs_tables.py            # rewrite the blocks in place
    python scripts/docs_tables.py --check    # exit 1 naming each stale table, 0 when all are up to date

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is a key of
:data:`TABLES`. Each table is built by the library's report functions (``fastadapt.report``) from committed
records only: nothing is trained or evaluated. Tables outside markers are written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fastadapt.report import domains, model_based, streams, tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def read(*parts: str) -> dict:
    return json.loads(RESULTS.joinpath(*parts).read_text())


def latency() -> list[str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency import summary

    data = json.loads((ROOT / "benchmarks" / "results" / "latency.json").read_text())
    return [f"`{data['command']}` ({data['note']})", "", *summary(data["rows"])]


def hyper() -> list[str]:
    return tables.hyper_table([row for d in ("omniglot", "sinusoid") for row in read("hyper", d, "hyper.json")["rows"]])


def domains_table() -> list[str]:
    studies = [read("domains", "results.json")]
    if (RESULTS / "domains_adapt" / "results.json").is_file():
        studies.append(read("domains_adapt", "results.json"))
    return domains.domains_tables(domains.merge_results(*studies), root=ROOT)


def mann_session1() -> list[str]:
    return model_based.mann_table(
        [row for d in ("mann", "mann_50min") for row in model_based.mann_rows(read(d, "results.json"))]
    )


# table name -> its lines, each from the records named (the study or command that writes them: studies/*.toml)
TABLES: dict[str, Callable[[], list[str]]] = {
    "cross-domain": lambda: tables.cross_domain_table(read("cross_domain", "results.json")),  # cross_domain.toml
    "lake": lambda: tables.lake_table(read("cross_domain", "results.json")),  # cross_domain.toml
    "lake-ablation": lambda: tables.lake_ablation_table(read("lake", "results.json"), root=ROOT),  # lake.toml
    "comparators": lambda: tables.comparators_table(read("comparators", "results.json")),  # comparators.toml
    "domains": domains_table,  # domains.toml (+ domains_adapt.toml when it has run)
    "sinusoid": lambda: tables.sinusoid_table(read("sinusoid", "results.json")),  # sinusoid.toml
    "omniglot": lambda: tables.omniglot_table(sorted(map(str, (RESULTS / "runs").iterdir()))),  # fastadapt train/eval
    "ntm-copy": lambda: model_based.ntm_copy_table([read(d, "results.json") for d in ("ntm_copy", "ntm_copy_50min")]),
    "mann-session1": mann_session1,  # results/mann*/results.json (session 1)
    "mann-engine": lambda: model_based.mann_table(model_based.mann_rows(read("mann_engine", "results.json"))),
    "change-sinusoid": lambda: streams.change_sinusoid_table(read("change", "results.json")),  # change.toml
    "change-omniglot": lambda: streams.change_omniglot_table(read("change", "results.json")),  # change.toml
    "rl": lambda: tables.rl_table(read("rl", "results.json")),  # rl.toml
    "latency": latency,  # benchmarks/results/latency.json (benchmarks/latency.py)
    "hyper": hyper,  # results/hyper/{omniglot,sinusoid}/hyper.json (hyper.toml)
    "hyper-study": lambda: tables.hyper_study_table(read("hyper", "tune", "hyper.json")["study"]),  # hyper.toml
    "training-speed": lambda: tables.training_speed_table(read("perf17", "summary.json")),  # results_training_speed.py
    "ntm-engine": lambda: model_based.ntm_engine_table(read("ntm", "results.json")),  # results_model_based.py ntm
    "ntm-recall": lambda: model_based.recall_table(RESULTS / "ntm_recall"),  # run folders (fastadapt train / eval)
    "mann-ablation": lambda: model_based.mann_ablation_table(read("mann_ablation", "results.json")),
    "matching-ablation": lambda: tables.matching_ablation_table(read("matching_ablation", "results.json")),
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
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a table differs from what results/ gives"
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="folder of the Markdown files (default: docs/)"
    )
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
        command = "python scripts/docs_tables.py" + (
            "" if args.docs.resolve() == (ROOT / "docs") else f" --docs {args.docs}"
        )
        print(f"stale tables ({'; '.join(stale)}): run {command} to regenerate them from results/", file=sys.stderr)
        return 1
    if not stale:
        print(f"{len(tables)} tables up to date ({', '.join(tables) or 'no markers'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
