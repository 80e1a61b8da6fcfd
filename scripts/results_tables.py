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
import json
from pathlib import Path

import numpy as np

from fastadapt.eval import mean_ci


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (those without metrics.jsonl are skipped)")
    print("\n".join(omniglot_table(parser.parse_args(argv).runs)))


def omniglot_table(paths: list[str]) -> list[str]:
    """The Markdown lines of the table, from the run folders in ``paths`` (folders without metrics.jsonl are skipped)."""
    rows = []
    for p in map(Path, paths):
        metrics = p / "metrics.jsonl"
        if not metrics.is_file():
            continue
        last = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()][-1]
        steps, seconds = last["step"], last["time"]  # the last logged step, unless results.json says more
        if (p / "results.json").is_file():
            res = json.loads((p / "results.json").read_text())
            steps, seconds = res["steps"] or steps, res["train_seconds"] or seconds
        for ev in sorted(p.glob("eval_*.json")):
            d = json.loads(ev.read_text())
            rows.append((ev.stem[5:], p.name, d, steps, seconds / 60))
    lines = ["| setting | run | algorithm | test accuracy (fixed episodes: 1000 unless said) | meta-steps | train min | paired diff. vs first row |",
             "|---|---|---|---|---|---|---|"]
    first: dict[tuple, np.ndarray] = {}

    def episodes(d: dict) -> tuple:  # runs scored on the same fixed episodes share this key
        s = d["settings"]
        return tuple(s.get(k) for k in ("dataset", "split", "part", "ways", "shots", "queries", "eval_seed"))

    for setting, name, d, steps, minutes in sorted(rows, key=lambda r: (r[2]["settings"]["ways"], r[2]["settings"]["shots"], r[2]["settings"]["queries"] != 15, r[2]["settings"]["algorithm"] != "protonet", r[1])):
        scores = np.array(d["scores"])
        ref = first.setdefault(episodes(d), scores)
        if ref is scores:
            diff = "-"
        else:
            n = min(len(ref), len(scores))  # the common prefix of the fixed episodes
            m, h = mean_ci(scores[:n] - ref[:n])
            diff = f"{100 * m:+.2f} +- {100 * h:.2f}" + ("" if n == len(ref) == len(scores) else f" (first {n} episodes)")
        label = setting if d["settings"]["queries"] == 15 else f"{setting} ({d['settings']['queries']} queries)"
        count = "" if len(scores) == 1000 else f" ({len(scores)} episodes)"
        lines.append(f"| {label} | {name} | {d['settings']['algorithm']} | {100 * d['mean']:.2f} +- {100 * d['ci']:.2f} %{count} | {steps} | {minutes:.1f} | {diff} |")
    return lines


if __name__ == "__main__":
    main()
