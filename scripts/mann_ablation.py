"""MANN ablation (issue 19): each difference from Santoro et al. 2016 as one override of ``mann-omniglot``.

    python scripts/mann_ablation.py --steps 6250 --minutes 60 --out results/mann_ablation --runs runs/mann_ablation
    python scripts/mann_ablation.py --smoke --out /tmp/mann_ablation --runs /tmp/mann_ablation_runs   # < 1 minute
    python scripts/mann_ablation.py --merge A/results.json B/results.json --out results/mann_ablation    # rows run side by side

Every row trains through the engine (``fastadapt train``) with the same ``run.seed`` (so the same
training episodes in the same order), the same budget (``optim.max_minutes = --minutes``, one thread)
and one difference (against the base row; the follow-up rows against the key-strength row); then it is
scored on the same ``--eval-episodes`` held-out episodes by instance (``results_model_based.evaluate_mann``).
Rows: the base (``mann-omniglot`` with the paper's read, ``key_strength=false``); the paper's optimizer (RMSprop 1e-4);
translation augmentation per episode; a learnt key strength (not in the paper: the other direction);
the paper's 5-character string labels; all the paper's settings together; the transformer
controller; the LSTM baseline; then the transformer controller with the key strength, the key strength
with Adam at 2e-3, and the key strength with batches of 4 episodes (the same episodes in 4x the updates: that row
sets its own ``optim.steps``). Rerunning resumes every row from its checkpoint (a larger
``--minutes`` continues them). Writes ``results.json``, ``results.md`` and ``mann_ablation_curves.png``
(training accuracy at the 2nd and 10th instance against episodes, every row) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fastadapt
from fastadapt import FastAdaptError
from fastadapt.config.build import task_sources
from fastadapt.runs.folder import RunFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_model_based as rmb  # noqa: E402

# The base row is mann-omniglot as it was before this ablation: the paper's read (no key strength; the MANN presets now
# have key_strength = true, so the rows that meant "without" pin it off).
READ = ["algorithm.key_strength=false"]
PAPER = [*READ, 'optim.optimizer="rmsprop"', "optim.lr=1e-4", "algorithm.translate=2", 'algorithm.label_encoding="string"']
ROWS: dict[str, tuple[str, list[str]]] = {  # row -> (preset, overrides)
    "base (Adam 1e-3, one-hot, no augmentation)": ("mann-omniglot", READ),
    "RMSprop 1e-4 (paper)": ("mann-omniglot", [*READ, 'optim.optimizer="rmsprop"', "optim.lr=1e-4"]),
    "translation <= 2 px per class and episode (paper)": ("mann-omniglot", [*READ, "algorithm.translate=2"]),
    "key strength (not in the paper)": ("mann-omniglot", ["algorithm.key_strength=true"]),
    "string labels, 5 characters (paper)": ("mann-omniglot", [*READ, 'algorithm.label_encoding="string"']),
    "paper: RMSprop + translation + string labels": ("mann-omniglot", PAPER),
    "transformer controller": ("mann-transformer-omniglot", READ),
    "LSTM baseline": ("mann-lstm-omniglot", []),
    # after the rows above: the two best changes together, and the key strength with a larger step
    "transformer controller + key strength": ("mann-transformer-omniglot", ["algorithm.key_strength=true"]),
    "key strength, Adam 2e-3": ("mann-omniglot", ["algorithm.key_strength=true", "optim.lr=2e-3"]),
    # the same 100,000 episodes in 4x the updates: batches of 4 episodes (its own optim.steps overrides --steps)
    "key strength, batches of 4 episodes": ("mann-omniglot", ["algorithm.key_strength=true", "data.meta_batch=4", "optim.steps=25000"]),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6250, help="updates of 16 episodes per row (6250: the paper's 100,000 episodes)")
    parser.add_argument("--minutes", type=float, default=60.0, help="cap on the training minutes per row (optim.max_minutes)")
    parser.add_argument("--out", default="results/mann_ablation")
    parser.add_argument("--runs", default="runs/mann_ablation", help="folder of the run folders, one per row")
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--rows", nargs="*", default=None, help="a subset of the rows, by number (0-based)")
    parser.add_argument("--smoke", action="store_true", help="2 steps per row, 20 test episodes (< 1 minute)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON", help="only combine the rows of these results.json files "
                        "(rows trained by separate invocations, e.g. side by side) into --out; nothing is trained")
    args = parser.parse_args()
    if args.merge:
        merge([Path(p) for p in args.merge], Path(args.out))
        return
    torch.set_num_threads(1)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [r for i, r in enumerate(ROWS) if args.rows is None or str(i) in args.rows]
    result: dict = {
        "minutes_per_row": args.minutes,
        "eval_episodes": 20 if args.smoke else args.eval_episodes,
        "smoke": args.smoke,
        "rows": {},
    }
    t0 = time.perf_counter()
    try:
        for name in chosen:
            preset, overrides = ROWS[name]
            path = runs / slug(name)
            budget = [f"optim.steps={args.steps}", f"optim.max_minutes={args.minutes}"]  # a row's own optim.steps comes after
            common = [f"run.out={path}", "run.threads=1", "run.progress=false"]
            if args.smoke:
                common += ["optim.steps=2", "eval.test_episodes=4", "run.checkpoint_every=2"]
            argv = budget + overrides + common
            rmb.log(f"mann-ablation: {name}: fastadapt train {preset} {' '.join(argv)}")
            res = fastadapt.train(preset, argv)
            run = fastadapt.load_run(path)
            cfg = run.config
            sampler = task_sources(cfg, tests_only=True).tests[f"{cfg.test_ways}w{cfg.test_shots}s"]
            accs = rmb.evaluate_mann(run.algorithm, sampler, result["eval_episodes"], cfg.eval.seed)
            result["rows"][name] = {
                "preset": preset,
                "overrides": overrides,
                "run": str(path),
                "steps": res.steps,
                "episodes": res.steps * cfg.data.meta_batch,
                "train_minutes": res.train_seconds / 60,
                "accuracy": accs,
                "curve": row_curve(str(path)),
            }
            rmb.log(f"mann-ablation: {name}: {res.steps} steps, 2nd {accs['2'][0]:.1f}%, 10th {accs['10'][0]:.1f}%")
    except (FastAdaptError, OSError) as e:
        raise SystemExit(f"mann-ablation: {e}") from None
    write_report(out, result)
    rmb.log(f"mann-ablation: wall time {time.perf_counter() - t0:.0f} s")


LSTM_ROW = "LSTM baseline"


def row_curve(run: str) -> list:
    """A row's training accuracy by instance against episodes (``results_model_based.engine_curve`` of its run folder)."""
    folder = RunFolder(run)
    return rmb.engine_curve(folder.read_metrics(), json.loads(folder.config_file.read_text())["data"]["meta_batch"])


def passes_lstm(curve: list, lstm: list, key: str) -> int | None:
    """The episode count from which ``curve``'s training accuracy (``key``: "inst2" / "inst10") stays above the LSTM
    baseline's at the same episode count (the LSTM's curve interpolated linearly); None when it never does by its last point."""
    xs, ys = np.array([c[0] for c in lstm], dtype=float), np.array([c[1][key] for c in lstm])
    points = [(e, acc[key]) for e, acc in curve if xs[0] <= e <= xs[-1]]
    above = [acc > np.interp(e, xs, ys) for e, acc in points]
    if not above or not above[-1]:
        return None
    i = len(above)
    while i > 0 and above[i - 1]:
        i -= 1
    return int(points[i][0])


def table(result: dict) -> list[str]:
    """Markdown: accuracy by instance of every row (``results_model_based.mann_table``, the paper's rows last), then, when
    the LSTM baseline is a row, the episode count from which each memory row's training curve stays above the LSTM's."""
    rows = [(name, f"{r['train_minutes']:.0f} min", r["episodes"], r["accuracy"]) for name, r in result["rows"].items()]
    md = rmb.mann_table(rows)
    lstm = result["rows"].get(LSTM_ROW)
    if lstm is not None and all("curve" in r for r in result["rows"].values()):
        md += ["", "| row | passes the LSTM baseline at the 2nd instance (training episodes) | at the 10th |", "|---|---|---|"]
        for name, r in result["rows"].items():
            if name != LSTM_ROW:
                cells = [passes_lstm(r["curve"], lstm["curve"], key) for key in ("inst2", "inst10")]
                md.append(f"| {name} | " + " | ".join("not by the end" if c is None else f"{c:,}" for c in cells) + " |")
    return md


def write_report(out: Path, result: dict) -> None:
    """``results.json``, ``results.md`` and ``mann_ablation_curves.png`` under ``out``."""
    rmb.write_json(out / "results.json", result)
    md = table(result)
    (out / "results.md").write_text("\n".join(md) + "\n")
    plot_curves(out, result)
    print("\n".join(md), flush=True)


def merge(paths: list[Path], out: Path) -> None:
    """One report from the ``results.json`` of several invocations (disjoint rows, the same settings), in the order of ROWS;
    rows recorded without their training curve get it from their run folder."""
    try:
        parts = [json.loads(p.read_text()) for p in paths]
        rows = {name: r for part in parts for name, r in part["rows"].items()}
        for r in rows.values():
            r.setdefault("curve", row_curve(r["run"]))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"mann-ablation: --merge: {e}") from None
    for key in ("eval_episodes", "smoke"):
        if len({part[key] for part in parts}) > 1:
            raise SystemExit(f"mann-ablation: --merge: the files differ in {key}: {[part[key] for part in parts]}")
    result = {**parts[0], "minutes_per_row": max(part["minutes_per_row"] for part in parts),
              "rows": {name: rows[name] for name in [*ROWS, *rows] if name in rows}}
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, result)


def plot_curves(out: Path, result: dict) -> None:
    plt = rmb.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in result["rows"].items():
        curve = r["curve"]
        for ax, key in zip(axes, ("inst2", "inst10")):
            ax.plot([c[0] for c in curve], [100 * c[1][key] for c in curve], label=name)
    for ax, title in zip(axes, ("2nd instance", "10th instance")):
        ax.set_title(f"training accuracy, {title}")
        ax.set_xlabel("episodes")
        ax.set_ylabel("% correct")
        ax.set_ylim(0, 100)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "mann_ablation_curves.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
