"""Issue 17's training check: the same preset trained for the same minutes by the code before issue 17 and by
today's, meta-steps counted, and a bf16-trained model tested against the fp32 one on the same fixed episodes.

    # the runs (one thread each; "before" from a checkout of the commit before issue 17, c0be784):
    PYTHONPATH=<before>/src python -m fastadapt train maml-omniglot-5w1s optim.max_minutes=15 run.threads=1 \
        eval.test_episodes=0 run.out=runs17/before            # beside, at the same time:
    fastadapt train maml-omniglot-5w1s optim.max_minutes=15 run.threads=1 eval.test_episodes=0 run.out=runs17/after
    fastadapt train maml-omniglot-5w1s optim.steps=<after's steps> optim.max_minutes=25 run.precision=bf16 \
        run.threads=1 eval.test_episodes=0 run.out=runs17/bf16
    for r in before after bf16; do fastadapt eval runs17/$r eval.test_episodes=1000; done
    # the summary (copies the records under --out and writes summary.json; docs_tables renders it):
    python scripts/results_training_speed.py --runs before=runs17/before after=runs17/after bf16=runs17/bf16 \
        --out results/perf17

Seconds per meta-step are the median over the logged training rows of (time difference / steps between
them), so the validation passes (every 500 steps, the same in every run) do not count. The bf16 row is
compared with the fp32 "after" row on the same 1000 fixed test episodes: the paired difference of the
per-episode accuracies, with its 95 % interval (Student t).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np

from fastadapt.eval.stats import mean_ci
from fastadapt.report.tables import training_speed_table as table

LABELS = {"before": "before issue 17 (c0be784), fp32", "after": "now, fp32", "bf16": "now, bf16 (run.precision)"}


def summarise(label: str, run: Path, out: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    per_step = [
        (b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(train, train[1:]) if b["step"] > a["step"]
    ]
    results = json.loads((run / "results.json").read_text())
    config = json.loads((run / "config.json").read_text())
    evals = sorted((run / "evals").glob("*.json"))
    if len(evals) != 1:
        raise SystemExit(f"{run}: expected one evaluation under evals/, found {len(evals)}")
    test = json.loads(evals[0].read_text())
    dest = out / label
    (dest / "evals").mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "results.json", "config.json"):
        shutil.copy(run / name, dest / name)
    shutil.copy(evals[0], dest / "evals" / evals[0].name)
    precision = config.get("run", {}).get("precision", "fp32")
    return {
        "label": label,
        "what": LABELS.get(label, label),
        "precision": precision,
        "steps": results["steps"],
        "train_seconds": results["train_seconds"],
        "seconds_per_step": statistics.median(per_step),
        "test_mean": test["mean"],
        "test_ci": test["ci"],
        "test_episodes": test["episodes"],
        "scores": test["scores"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="label=run_dir (before, after, bf16)")
    p.add_argument("--out", type=Path, default=Path("results/perf17"))
    args = p.parse_args()
    rows = []
    for spec in args.runs:
        label, _, path = spec.partition("=")
        rows.append(summarise(label, Path(path), args.out))
    summary: dict = {"rows": rows}
    by = {r["label"]: r for r in rows}
    if "after" in by and "bf16" in by:
        a, b = np.array(by["after"]["scores"]), np.array(by["bf16"]["scores"])
        if a.shape != b.shape:
            raise SystemExit("the fp32 and bf16 evaluations have different episode counts")
        mean, ci = mean_ci(b - a)
        summary["paired"] = {"mean": mean, "ci": ci, "episodes": int(a.size), "steps": by["bf16"]["steps"]}
    for r in rows:
        r.pop("scores")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(table(summary)))


if __name__ == "__main__":
    main()
