"""Validation curves of the Omniglot runs, one figure per validation setting (no training, no GPU).

    python scripts/results_curves.py results/runs/* --out results/curves

Each run validates on 200 fixed episodes of its test setting (``data.test_ways`` / ``test_shots``)
every ``eval.val_every`` meta-steps; this draws those scores (markers, bars: 95% CI) and the
training accuracy on the query sets of the training tasks (thin line, running mean of 5 logged
rows; the legend names the training setting where it differs from the validation one) against
training minutes (left) and meta-steps (right), for every run of a setting, so that runs with
different budgets or speeds can be compared at equal cost. Runs without validation rows are left
out and named on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(path: Path) -> tuple[str, str, list[dict], list[dict]] | None:
    """(validation setting, training setting, validation rows, training rows) of a run, or None without validation."""
    metrics, config = path / "metrics.jsonl", path / "config.json"
    if not (metrics.is_file() and config.is_file()):
        return None
    data = json.loads(config.read_text())["data"]
    ways, shots = data.get("test_ways") or data["ways"], data.get("test_shots") or data["shots"]
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    val = [r for r in rows if r["split"] == "val" and "acc" in r]
    train = [r for r in rows if r["split"] == "train" and "acc" in r]
    return (f"{ways}w{shots}s", f"{data['ways']}w{data['shots']}s", val, train) if val else None


def running_mean(values: list[float], width: int = 5) -> list[float]:
    return [
        sum(values[max(0, i - width + 1) : i + 1]) / len(values[max(0, i - width + 1) : i + 1])
        for i in range(len(values))
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder for val_<setting>.png")
    args = ap.parse_args(argv)
    by_setting: dict[str, list[tuple[str, list[dict], list[dict]]]] = defaultdict(list)
    for run in args.runs:
        got = read_run(run)
        if got is None:
            print(f"skipped {run}: no validation rows", file=sys.stderr)
            continue
        setting, trained_on, val, train = got
        by_setting[setting].append(
            (run.name if trained_on == setting else f"{run.name} (trains {trained_on})", val, train)
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for setting, runs in sorted(by_setting.items()):
        fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for i, (name, val, train) in enumerate(sorted(runs)):
            color = f"C{i % 10}"
            acc, ci = [100 * r["acc"] for r in val], [100 * r.get("ci", 0.0) for r in val]
            train_acc = running_mean([100 * r["acc"] for r in train])
            for ax, key, scale in ((ax_t, "time", 1 / 60), (ax_s, "step", 1)):
                ax.plot([r[key] * scale for r in train], train_acc, color=color, lw=0.8, alpha=0.6)
                ax.errorbar(
                    [r[key] * scale for r in val], acc, yerr=ci, color=color, marker="o", ms=4, capsize=2, label=name
                )
        ax_t.set_xlabel("training minutes (wall clock, one thread)")
        ax_s.set_xlabel("meta-steps")
        ax_s.set_xscale("log")
        ax_t.set_ylabel(f"accuracy (%): validation {setting} (markers), training (lines)")
        for ax in (ax_t, ax_s):
            ax.grid(alpha=0.3)
        ax_s.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"Omniglot {setting}: validation accuracy during training")
        fig.tight_layout()
        target = args.out / f"val_{setting}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        print(f"wrote {target} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
