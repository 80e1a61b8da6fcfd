"""The Omniglot tables of docs/RESULTS.md, from committed run folders (no training, no GPU).

    python scripts/results_tables.py results/runs/*

For every run with an ``eval_<setting>.json`` it prints mean +- 95% CI, the meta-steps and minutes
trained, and, for runs tested on the same fixed episodes as the first run of that setting (same
data, ways, shots, queries and evaluation seed; ProtoNets first), the paired difference (per-episode
accuracy difference, mean +- 95% CI), which is far tighter than comparing two unpaired intervals.
Fixed episode i depends only on the seed and i (``EpisodeSampler.fixed``), so a run tested on fewer
episodes is paired on that common prefix, and the row says so.
"""

from __future__ import annotations

import argparse

from fastadapt.report.tables import omniglot_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (those without metrics.jsonl are skipped)")
    print("\n".join(omniglot_table(parser.parse_args(argv).runs)))


if __name__ == "__main__":
    main()
