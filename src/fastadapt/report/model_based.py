"""Tables and plots of the model-based studies (docs/RESULTS_model_based.md): the NTM copy and associative-recall
tasks, the MANN on Omniglot against its LSTM baseline and the paper, and the MANN ablation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fastadapt.algorithms.mann import REPORTED_INSTANCES
from fastadapt.report.figure import pyplot, save_figure
from fastadapt.runs import RunFolder

MANN_PAPER = {
    1: 36.4,
    2: 82.8,
    3: 91.0,
    4: 92.6,
    5: 94.9,
    10: 98.1,
}  # Santoro et al. 2016, table 1, MANN (LRUA), 5 classes


LSTM_PAPER = {1: 24.4, 2: 49.5, 3: 55.3, 4: 61.0, 5: 63.6, 10: 62.5}  # the same table, LSTM baseline


def ntm_engine_table(result: dict) -> list[str]:
    """Markdown: bits wrong per sequence by length, one column per model, then parameters, updates and minutes."""
    names = list(result["models"])
    md = ["| length | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n in result["lengths"]:
        cells = [
            f"{result['models'][m]['bits_wrong'][str(n)][0]:.2f} ± {result['models'][m]['bits_wrong'][str(n)][1]:.2f}"
            for m in names
        ]
        md.append(f"| {n}{' (unseen)' if n > 20 else ''} (of {8 * n} bits) | " + " | ".join(cells) + " |")
    for key, label, fmt in (
        ("parameters", "parameters", "{:,}"),
        ("steps", "updates (16 sequences)", "{:,}"),
        ("train_minutes", "training minutes", "{:.1f}"),
    ):
        md.append(f"| {label} | " + " | ".join(fmt.format(result["models"][m][key]) for m in names) + " |")
    return md


RECALL_MODELS = {"NTM (LSTM)": "ntm-recall", "LSTM": "lstm-recall"}  # column -> run folder name (= preset)


def recall_bits_by_items(folder: RunFolder, options: dict) -> dict[int, tuple[float, float]]:
    """Bits wrong per answer (mean, 95% CI) of an associative-recall run (``options``: its ``data.options``) by test
    item count: the run's own test (``test_items`` of its preset) and each
    ``fastadapt eval RUN 'data.options={..., test_items=N}'`` record under ``evals/``."""
    answer_bits = int(options["item_length"]) * int(options["bits"])
    own = next(iter(folder.read_results()["tests"].values()))
    out = {int(options.get("test_items") or options["max_items"]): (own["mean"], own["ci"])}
    for path in sorted(folder.evals_dir.glob("*.json")) if folder.evals_dir.is_dir() else []:
        record = json.loads(path.read_text())
        items = [int(m) for o in record.get("overrides", []) for m in re.findall(r"test_items=(\d+)", o)]
        if items:
            out[items[-1]] = (record["mean"], record["ci"])
    return {n: (answer_bits * m, answer_bits * h) for n, (m, h) in sorted(out.items())}


def recall_table(root: Path) -> list[str]:
    """Markdown: bits wrong per answer by item count, one column per model found under ``root`` (run folders named
    as :data:`RECALL_MODELS`), then updates and training minutes."""
    folders = {name: RunFolder(root / d) for name, d in RECALL_MODELS.items() if (root / d / "results.json").is_file()}
    configs = {name: f.read_config() for name, f in folders.items()}
    results = {name: f.read_results() for name, f in folders.items()}
    scores = {name: recall_bits_by_items(f, configs[name].data.options) for name, f in folders.items()}
    md = ["| items | " + " | ".join(folders) + " |", "|---|" + "---|" * len(folders)]
    for n in sorted({n for s in scores.values() for n in s}):
        unseen = " (unseen)" if all(n > c.data.options["max_items"] for c in configs.values()) else ""
        cells = [f"{scores[m][n][0]:.2f} ± {scores[m][n][1]:.2f}" if n in scores[m] else "-" for m in folders]
        md.append(f"| {n}{unseen} | " + " | ".join(cells) + " |")
    md.append(
        "| updates x sequences | "
        + " | ".join(f"{results[m]['steps']:,} x {configs[m].data.meta_batch}" for m in folders)
        + " |"
    )
    md.append("| training minutes | " + " | ".join(f"{results[m]['train_seconds'] / 60:.1f}" for m in folders) + " |")
    return md


NTM_TABLE_LENGTHS = (1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80)


def ntm_copy_table(results: list[dict]) -> list[str]:
    """Markdown table of bits wrong per sequence by length, one column per model of each ``ntm-copy`` ``results.json``
    ("NTM, 25 min"), then the updates and training sequences of each column."""
    cols = [
        (f"{name}, {res['minutes']:g} min", res, name) for res in results for name in res["bits_wrong_per_sequence"]
    ]
    batches = {res["batch"] for res in results}
    md = ["| length | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for n in NTM_TABLE_LENGTHS:  # trained on lengths 1-20
        md.append(
            f"| {n}{' (unseen)' if n > 20 else ''} | "
            + " | ".join(f"{res['bits_wrong_per_sequence'][name][str(n)]:.2f}" for _, res, name in cols)
            + " |"
        )
    md.append(
        f"| updates (batch {'/'.join(map(str, sorted(batches)))}) | "
        + " | ".join(f"{res['phases'][name]['steps']:,}" for _, res, name in cols)
        + " |"
    )
    md.append(
        "| training sequences | " + " | ".join(f"{res['phases'][name]['sequences']:,}" for _, res, name in cols) + " |"
    )
    return md


INSTANCE_NAMES = {1: "1st", 2: "2nd", 3: "3rd"}


def mann_table(rows: list[tuple[str, str, int, dict[str, list[float]]]]) -> list[str]:
    """Markdown table of accuracy by instance: ``rows`` of (model, training, episodes, {"k": [mean %, ci %]}), then
    the paper's rows."""
    cols = REPORTED_INSTANCES
    md = [
        "| model | training | episodes | " + " | ".join(INSTANCE_NAMES.get(k, f"{k}th") for k in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for model, training, episodes, accs in rows:
        md.append(
            f"| {model} | {training} | {episodes:,} | "
            + " | ".join(f"{accs[str(k)][0]:.1f} ± {accs[str(k)][1]:.1f}" for k in cols)
            + " |"
        )
    for model, paper in (("**MANN (paper)**", MANN_PAPER), ("LSTM (paper)", LSTM_PAPER)):
        md.append(f"| {model} | | 100,000 | " + " | ".join(f"{paper[k]}" for k in cols) + " |")
    return md


def mann_rows(result: dict) -> list[tuple[str, str, int, dict[str, list[float]]]]:
    """The rows of :func:`mann_table` from a ``results.json`` of ``mann-runs`` (``runs``) or of the
    session-1 ``mann`` command, which trained both models in one script (``phases``; removed since)."""
    accs = result["instance_accuracy_percent_mean_ci95"]
    if "runs" in result:
        return [
            (f"{name} (ours)", engine_training(run), run["episodes"], accs[name])
            for name, run in result["runs"].items()
        ]
    return [
        (
            f"{name} (ours)",
            f"{result['minutes']:g}-min run ({phase['train_seconds'] / 60:.1f} min each)",
            phase["episodes"],
            accs[name],
        )
        for name, phase in result["phases"].items()
    ]


def engine_training(run: dict) -> str:
    """How long an engine run of ``mann-runs``' record trained, in words ("80 min, one core")."""
    threads = run["config"]["run"]["threads"]
    return f"{run['train_seconds'] / 60:.0f} min" + (
        ", one core" if threads == 1 else f", {threads} threads" if threads else ""
    )


def mann_curves(result: dict) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """Training accuracy by instance against episodes, ``model -> [(episodes, {"inst1", "inst2", "inst10"}), ...]``:
    from the runs' metrics.jsonl (``mann-runs``) or the recorded history (session 1)."""
    if "runs" in result:
        return {
            name: engine_curve(RunFolder(run["run"]).read_metrics(), run["config"]["data"]["meta_batch"])
            for name, run in result["runs"].items()
        }
    return {
        name: [(h[0] * result["batch"], h[3]) for h in phase["history"]] for name, phase in result["phases"].items()
    }


def engine_curve(metrics: list[dict], meta_batch: int) -> list[tuple[int, dict[str, float]]]:
    """The training rows of a run's metrics averaged over windows (100 points per curve), against episodes."""
    rows = [r for r in metrics if r.get("split") == "train" and "inst10" in r]
    window = max(1, len(rows) // 100)
    return [
        (
            rows[i + window - 1]["step"] * meta_batch,
            {k: sum(r[k] for r in rows[i : i + window]) / window for k in ("inst1", "inst2", "inst10")},
        )
        for i in range(0, len(rows) - window + 1, window)
    ]


def plot_mann(
    out: Path, accs: dict[str, dict[str, list[float]]], curves: dict[str, list[tuple[int, dict[str, float]]]]
) -> None:
    """``mann_training_curves.png`` (training accuracy by instance) and ``mann_instance_accuracy.png`` (test,
    against the paper)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items()):
        for key, label in (("inst1", "1st"), ("inst2", "2nd"), ("inst10", "10th")):
            ax.plot([c[0] for c in curve], [c[1][key] * 100 for c in curve], label=f"{label} instance")
        ax.set_title(f"{name}: training accuracy by instance")
        ax.set_xlabel("episodes")
        ax.set_ylabel("% correct")
        ax.set_ylim(0, 100)
        ax.legend()
    save_figure(fig, out / "mann_training_curves.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ks = list(range(1, 11))
    for name in accs:
        ax.errorbar(
            ks,
            [accs[name][str(k)][0] for k in ks],
            yerr=[accs[name][str(k)][1] for k in ks],
            marker="o",
            ms=3,
            capsize=2,
            label=f"{name} (ours)",
        )
    ax.plot(list(MANN_PAPER), list(MANN_PAPER.values()), "k--", marker="x", label="MANN (paper, 100k episodes)")
    ax.set_xlabel("instance")
    ax.set_ylabel("% correct (held-out characters)")
    ax.set_ylim(0, 100)
    ax.legend()
    save_figure(fig, out / "mann_instance_accuracy.png", dpi=120)


LSTM_ROW = "LSTM baseline"


def passes_lstm(curve: list, lstm: list, key: str) -> int | None:
    """The episode count from which ``curve``'s training accuracy (``key``: "inst2" / "inst10") stays above the LSTM
    baseline's at the same episode count (the LSTM's curve interpolated linearly); None when it never does by its
    last point."""
    xs, ys = np.array([c[0] for c in lstm], dtype=float), np.array([c[1][key] for c in lstm])
    points = [(e, acc[key]) for e, acc in curve if xs[0] <= e <= xs[-1]]
    above = [acc > np.interp(e, xs, ys) for e, acc in points]
    if not above or not above[-1]:
        return None
    i = len(above)
    while i > 0 and above[i - 1]:
        i -= 1
    return int(points[i][0])


def mann_ablation_table(result: dict) -> list[str]:
    """Markdown: accuracy by instance of every row (:func:`mann_table`, the paper's rows last), then, when
    the LSTM baseline is a row, the episode count from which each memory row's training curve stays above the LSTM's."""
    rows = [(name, f"{r['train_minutes']:.0f} min", r["episodes"], r["accuracy"]) for name, r in result["rows"].items()]
    md = mann_table(rows)
    lstm = result["rows"].get(LSTM_ROW)
    if lstm is not None and all("curve" in r for r in result["rows"].values()):
        md += [
            "",
            "| row | passes the LSTM baseline at the 2nd instance (training episodes) | at the 10th |",
            "|---|---|---|",
        ]
        for name, r in result["rows"].items():
            if name != LSTM_ROW:
                cells = [passes_lstm(r["curve"], lstm["curve"], key) for key in ("inst2", "inst10")]
                md.append(
                    f"| {name} | " + " | ".join("not by the end" if c is None else f"{c:,}" for c in cells) + " |"
                )
    return md


def plot_mann_ablation(out: Path, result: dict) -> Path:
    """``mann_ablation_curves.png``: every row's training accuracy at the 2nd and 10th instance against episodes."""
    plt = pyplot()
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
    return save_figure(fig, out / "mann_ablation_curves.png", dpi=110)
