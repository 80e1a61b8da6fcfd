"""Matching Networks ablation (issue 19): why they learn slower than ProtoNets here, on the same episodes and budget.

    python scripts/matching_ablation.py --minutes 10 --settings 5w1s 5w5s --out results/matching_ablation --runs runs/matching_ablation
    python scripts/matching_ablation.py --smoke --out /tmp/matching_ablation --runs /tmp/matching_ablation_runs   # < 1 minute
    python scripts/matching_ablation.py --report results/matching_ablation/results.json   # rewrite the report only

For each setting (``5w1s``, ``5w5s``: the presets ``matching[-fce]-omniglot-<setting>``) every row trains
through the engine (``fastadapt train``) with the same ``run.seed`` and the same data section (so the
same training episodes in the same order), the same budget (``optim.max_minutes = --minutes``, one
thread) and is tested on the same fixed test episodes (the run's own test, ``eval.seed + 1``). Rows:

* FCE / no FCE, each with the attention's scale ``s`` = 1 (the paper, today's presets), fixed 10, learnt
  (``learn_scale``, from 10): the softmax over cosines in [-1, 1] is nearly flat at ``s`` = 1;
* FCE with L2-normalised embeddings (``normalize``) and with orthogonal FCE LSTMs (``fce_init``), both at ``s`` = 10;
* ProtoNets (squared Euclidean distance) on the same episodes: the reference.

Rerunning resumes every row (a larger ``--minutes`` continues them). Writes ``results.json`` and
``results.md`` (accuracy +- 95% CI, steps) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import fastadapt
from fastadapt import FastAdaptError
from fastadapt.config import load_config
from fastadapt.eval import mean_ci

ROWS: dict[str, tuple[str, list[str]]] = {  # row -> (preset family, overrides); "{fce}" / "{plain}" become the setting's preset
    "FCE, s = 1 (paper)": ("fce", []),
    "FCE, s = 10 fixed": ("fce", ["algorithm.scale=10.0"]),
    "FCE, s learnt (from 10)": ("fce", ["algorithm.scale=10.0", "algorithm.learn_scale=true"]),
    "no FCE, s = 1 (paper)": ("plain", []),
    "no FCE, s = 10 fixed": ("plain", ["algorithm.scale=10.0"]),
    "no FCE, s learnt (from 10)": ("plain", ["algorithm.scale=10.0", "algorithm.learn_scale=true"]),
    "FCE, s = 10, normalised embeddings": ("fce", ["algorithm.scale=10.0", "algorithm.normalize=true"]),
    "FCE, s = 10, orthogonal FCE LSTMs": ("fce", ["algorithm.scale=10.0", 'algorithm.fce_init="orthogonal"']),
    "ProtoNets (same episodes)": ("protonet", []),
}
REFERENCE = "ProtoNets (same episodes)"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:48]


def row_command(setting: str, family: str, overrides: list[str]) -> tuple[str, list[str]]:
    """The preset and overrides of one row; ProtoNets gets the Matching preset's data section (same episodes)."""
    fce = f"matching-fce-omniglot-{setting}"
    if family != "protonet":
        return (fce if family == "fce" else f"matching-omniglot-{setting}"), overrides
    d = load_config(fce).data
    same = [
        f"data.ways={d.ways}",
        f"data.shots={d.shots}",
        f"data.queries={d.queries}",
        f"data.meta_batch={d.meta_batch}",
        f"data.test_ways={d.test_ways}",
        f"data.test_shots={d.test_shots}",
        f"data.test_queries={d.test_queries}",
        'optim.schedule="constant"',
    ]
    return f"protonet-omniglot-{setting}", same + overrides


def table(result: dict) -> list[str]:
    """Markdown, one table per setting: each row's test accuracy, its difference from the ProtoNets row
    (points, paired over the same test episodes when the rows carry their per-episode ``scores``,
    otherwise the root sum of squares of the two intervals), meta-steps and training minutes."""
    md = [f"{result['minutes_per_row']:g} training minutes per row, one thread; the same training and test episodes within a setting.", ""]
    for setting, rows in result["settings"].items():
        ref = rows.get(REFERENCE)
        md += [f"**{setting}**", "", "| row | accuracy (%) | minus ProtoNets (points) | meta-steps | minutes |", "|---|---|---|---|---|"]
        for name, r in rows.items():
            if ref is None or name == REFERENCE:
                gap = ""
            elif "scores" in r and "scores" in ref:
                m, h = mean_ci(np.asarray(r["scores"]) - np.asarray(ref["scores"]))
                gap = f"{100 * m:+.2f} ± {100 * h:.2f}"
            else:
                gap = f"{100 * (r['acc'] - ref['acc']):+.2f} ± {100 * (r['ci'] ** 2 + ref['ci'] ** 2) ** 0.5:.2f}"
            md.append(f"| {name} | {100 * r['acc']:.2f} ± {100 * r['ci']:.2f} | {gap} | {r['steps']:,} | {r['train_minutes']:.1f} |")
        md.append("")
    return md[:-1]


def report(path: Path) -> None:
    """Rewrite a ``results.json`` with every row's per-episode test scores (read from the row's run folder) and its ``results.md``."""
    try:
        result = json.loads(path.read_text())
        for setting, rows in result["settings"].items():
            for r in rows.values():
                if "scores" not in r:
                    r["scores"] = json.loads((Path(r["run"]) / f"eval_{setting}.json").read_text())["scores"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"matching-ablation: --report {path}: {e}") from None
    path.write_text(json.dumps(result, indent=1) + "\n")
    (path.parent / "results.md").write_text("\n".join(table(result)) + "\n")
    print("\n".join(table(result)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per row (optim.max_minutes)")
    parser.add_argument("--settings", nargs="+", default=["5w1s", "5w5s"])
    parser.add_argument("--out", default="results/matching_ablation")
    parser.add_argument("--runs", default="runs/matching_ablation")
    parser.add_argument("--smoke", action="store_true", help="2 steps per row, 10 test episodes, 5w1s only (< 1 minute)")
    parser.add_argument("--report", metavar="RESULTS_JSON", help="only rewrite RESULTS_JSON (adding each row's per-episode "
                        "scores from its run folder's eval file when missing) and its results.md beside it; nothing is trained")
    args = parser.parse_args()
    if args.report:
        report(Path(args.report))
        return
    torch.set_num_threads(1)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    settings = ["5w1s"] if args.smoke else args.settings
    result: dict = {"minutes_per_row": args.minutes, "smoke": args.smoke, "settings": {}}
    t0 = time.perf_counter()
    try:
        for setting in settings:
            rows = result["settings"].setdefault(setting, {})
            for name, (family, extra) in ROWS.items():
                preset, overrides = row_command(setting, family, extra)
                path = runs / setting / slug(name)
                common = [f"optim.max_minutes={args.minutes}", f"run.out={path}", "run.threads=1", "run.progress=false"]
                if args.smoke:
                    common += ["optim.steps=2", "eval.val_every=0", "eval.test_episodes=10", "eval.batch=10", "model.hidden=16"]
                log(f"matching-ablation {setting}: {name}: fastadapt train {preset} {' '.join(overrides + common)}")
                res = fastadapt.train(preset, overrides + common)
                test = next(iter(res.tests.values()))
                rows[name] = {
                    "preset": preset,
                    "overrides": overrides,
                    "run": str(path),
                    "steps": res.steps,
                    "train_minutes": res.train_seconds / 60,
                    "acc": test.mean,
                    "ci": test.ci,
                    "episodes": test.episodes,
                    "scores": [round(x, 6) for x in test.scores],
                }
                log(f"matching-ablation {setting}: {name}: {test.summary()} after {res.steps} steps")
    except (FastAdaptError, OSError) as e:
        raise SystemExit(f"matching-ablation: {e}") from None
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    md = table(result)
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    log(f"matching-ablation: wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
