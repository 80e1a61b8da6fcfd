"""Results for the model-based family: the NTM copy task and the MANN on Omniglot, each against an LSTM.

    python scripts/results_model_based.py ntm --minutes 20 --out results/ntm --runs runs/ntm
    python scripts/results_model_based.py mann-runs results/runs/mann-omniglot results/runs/mann-lstm-omniglot \
        --out results/mann_engine
    python scripts/results_model_based.py mann-report results/mann results/mann_50min results/mann_engine

``ntm`` trains four models on the copy task through the engine, one after the other, one thread
each (``fastadapt train`` with presets ``ntm-copy``, ``ntm-copy-transformer``, ``lstm-copy``,
``transformer-copy``, ``optim.max_minutes = --minutes``; rerunning resumes from their checkpoints),
scores each at the test lengths (bits wrong per sequence on the engine's fixed test sequences of
that length) and writes ``results.json``, ``results.md`` and ``ntm_weightings.png`` (read / write
weightings of both NTM controllers) under ``--out``; ``--smoke`` checks the whole path in < 1 minute.
The associative-recall runs (presets ``ntm-recall``, ``lstm-recall``) train and evaluate through the command
line; ``fastadapt.report.model_based.recall_table`` makes their table from the run folders. The former ``ntm-copy``
command (its own training loop, session 1) is gone; its folders
``results/ntm_copy*`` stay readable by :func:`ntm_copy_table`.

The MANN and its LSTM baseline train through the engine (``fastadapt train mann-omniglot``,
``mann-lstm-omniglot``); ``mann-runs`` scores such runs by instance and writes the same files.
``mann-report`` rewrites ``results.md`` and the figures of MANN results folders from their
``results.json`` without evaluating (also the session-1 folders ``results/mann*``, written by a
``mann`` sub-command that trained both models here and has since been removed). The LSTM
meta-learner (Ravi & Larochelle) is trained on Omniglot through the engine too, not here.
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
from fastadapt.algorithms.ntm import bits_wrong
from fastadapt.apps.study_evals import mann_instance_accuracy as evaluate_mann
from fastadapt.config.build import task_sources
from fastadapt.eval import mean_ci
from fastadapt.report.figure import pyplot
from fastadapt.report.model_based import (
    LSTM_PAPER,
    MANN_PAPER,
    mann_curves,
    mann_rows,
    mann_table,
    ntm_engine_table,
    plot_mann,
)
from fastadapt.runs import RunFolder


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# NTM copy


NTM_MODELS = {  # column -> preset (the four train through `fastadapt train` on the same copy episodes)
    "NTM (LSTM)": "ntm-copy",
    "NTM (transformer)": "ntm-copy-transformer",
    "LSTM": "lstm-copy",
    "transformer": "transformer-copy",
}
NTM_TEST_LENGTHS = (20, 40, 80, 120)  # trained on 1-20


def test_length_override(path: Path, length: int) -> str:
    """The override ``data.options={..., test_length=length}`` of a copy run (the run's other options kept)."""
    options = {**RunFolder(path).read_config().data.options, "test_length": length}
    return "data.options={" + ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) + "}"


def copy_bits_by_length(path: Path, lengths: tuple[int, ...], episodes: int, batch: int) -> dict[str, list[float]]:
    """Bits wrong per sequence (mean, 95% CI over sequences) of a copy run at each test length: ``{"L": [mean, ci]}``.

    The engine's fixed test episodes of the run's source with ``data.options.test_length = L``.
    """
    out = {}
    for n in lengths:
        run = fastadapt.load_run(path, [test_length_override(path, n)])
        source = next(iter(task_sources(run.config, tests_only=True).tests.values()))
        wrong = []
        with torch.no_grad():
            for b in source.fixed(episodes, batch):
                logits = run.algorithm.answer(run.algorithm.remember(b.support_x[:, 0]), b.query_x[:, 0])
                wrong += bits_wrong(logits, b.query_y[:, 0]).tolist()
        m, h = mean_ci(wrong)
        out[str(n)] = [m, h]
    return out


def plot_weightings(out: Path, runs: dict[str, Path], length: int) -> None:
    """``ntm_weightings.png``: inputs, outputs and the write / read weightings on one length-``length`` copy
    sequence, one row per NTM run (cf. Graves et al. 2014, fig. 6)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.2 * len(runs)), squeeze=False)
    for row, (name, path) in zip(axes, runs.items()):
        run = fastadapt.load_run(path, [test_length_override(path, length)])
        b = next(iter(next(iter(task_sources(run.config, tests_only=True).tests.values())).fixed(1, 1)))
        x = torch.cat([b.support_x[:, 0], b.query_x[:, 0]], dim=1)
        with torch.no_grad():
            rec = run.algorithm.model.run(x, record=True)
        ww, rw = rec.write_weights[0, :, 0].T.numpy(), rec.read_weights[0, :, 0].T.numpy()  # [N, steps]
        n_slots, half = ww.shape[0], ww.shape[0] // 2
        ww, rw = (
            np.roll(ww, half, axis=0),
            np.roll(rw, half, axis=0),
        )  # row r: slot r - half (mod N); the heads start at slot 0
        rows = ((ww.max(1) > 0.05) | (rw.max(1) > 0.05)).nonzero()[0]
        lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (half - 2, half + 30)
        lo, hi = max(lo - 2, 0), min(hi + 2, n_slots)
        outputs = torch.sigmoid(rec.outputs[0]).T.numpy()
        row[0].imshow(outputs, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
        row[0].axvline(length + 0.5, color="red", lw=0.8)
        row[0].set_title(f"{name}: outputs (copy after the red line)")
        for ax, w, title in ((row[1], ww, "write weightings"), (row[2], rw, "read weightings")):
            ax.imshow(
                w[lo:hi],
                aspect="auto",
                cmap="gray_r",
                extent=(-0.5, w.shape[1] - 0.5, hi - half - 0.5, lo - half - 0.5),
            )
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("time step")
            ax.set_ylabel(f"slot (offset from 0, mod {n_slots})")
    fig.tight_layout()
    fig.savefig(out / "ntm_weightings.png", dpi=110)
    plt.close(fig)


def ntm_engine(args: argparse.Namespace) -> None:
    """Train the four copy models through the engine (resumable), score them at each test length, table and figure."""
    out, runs_dir = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    lengths = tuple(args.lengths)
    models, paths = {}, {}
    for name, preset in NTM_MODELS.items():
        path = runs_dir / preset
        overrides = [f"optim.max_minutes={args.minutes}", f"run.out={path}", "run.threads=1", "run.progress=false"]
        if args.smoke:
            overrides += ["optim.steps=2", "eval.test_episodes=4", "eval.batch=4", "run.checkpoint_every=2"]
        log(f"ntm: training {preset} ({' '.join(overrides)})")
        res = fastadapt.train(preset, overrides)
        log(f"ntm: {preset}: {res.steps} steps in {res.train_seconds / 60:.1f} min; scoring lengths {lengths}")
        run = fastadapt.load_run(path)
        models[name] = {
            "preset": preset,
            "run": str(path),
            "steps": res.steps,
            "train_minutes": res.train_seconds / 60,
            "parameters": sum(p.numel() for p in run.algorithm.parameters()),
            "bits_wrong": copy_bits_by_length(path, lengths, args.eval_sequences, min(args.eval_sequences, 64)),
        }
        paths[name] = path
    result = {
        "task": "copy, 8-bit vectors, trained on lengths 1-20 (fastadapt train <preset>)",
        "minutes_per_model": args.minutes,
        "eval_sequences_per_length": args.eval_sequences,
        "lengths": list(lengths),
        "models": models,
        "smoke": args.smoke,
        "bits_wrong": "mean ± 95% CI over the fixed test sequences (eval.seed + 1) of each length",
    }
    write_json(out / "results.json", result)
    plot_weightings(out, {n: p for n, p in paths.items() if n.startswith("NTM")}, min(20, max(lengths)))
    md = ntm_engine_table(result)
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    log("ntm: done")


# --------------------------------------------------------------------------------------------------
# NTM associative recall


# --------------------------------------------------------------------------------------------------
# MANN on Omniglot: runs trained by the engine (fastadapt train mann-omniglot / mann-lstm-omniglot)


def write_mann_report(out: Path, result: dict) -> None:
    """``results.md`` and the figures of a MANN-vs-LSTM ``results.json`` (no evaluation)."""
    plot_mann(out, result["instance_accuracy_percent_mean_ci95"], mann_curves(result))
    md = mann_table(mann_rows(result))
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)


def mann_runs(args: argparse.Namespace) -> None:
    """The instance table of MANN / LSTM runs trained by the engine (``fastadapt train mann-omniglot``,
    ``mann-lstm-omniglot``).

    Each run is scored on ``--eval-episodes`` fixed episodes of its test part (the engine's test
    episodes: ``eval.seed + 1``), 5 classes x 10 instances as in training.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    accs, runs = {}, {}
    for path in args.runs:
        # The last checkpoint is scored on purpose: these presets do not validate (eval.val_every = 0),
        # so the runs have no best.pt and load_run takes checkpoint.pt, the weights at the end of the budget.
        run = fastadapt.load_run(path)
        cfg = run.config
        name = "MANN" if cfg.algorithm_options.get("core", "mann") == "mann" else "LSTM"
        if cfg.algorithm_options.get("controller", "lstm") != "lstm":
            name += f" ({cfg.algorithm_options['controller']} controller)"
        log(f"mann-runs: {path} ({name}, {run.weights}, step {run.step}): evaluating")
        sampler = task_sources(cfg).tests[f"{cfg.test_ways}w{cfg.test_shots}s"]
        accs[name] = evaluate_mann(run.algorithm, sampler, args.eval_episodes, cfg.eval.seed)
        runs[name] = {
            "run": str(path),
            "steps": run.step,
            "episodes": run.step * cfg.data.meta_batch,
            "train_seconds": float(run.folder.read_results()["train_seconds"]),
            "config": json.loads(run.folder.config_file.read_text()),
        }
    result = {
        "data": "the runs' own data settings (see runs.*.config); test: their test part, fixed episodes eval.seed + 1",
        "episode": "5 classes x 10 instances (shots 5 + queries 5 pooled), shuffled order and labels, "
        "label of step t-1 given at step t",
        "eval_episodes": args.eval_episodes,
        "runs": runs,
        "instance_accuracy_percent_mean_ci95": accs,
        "paper": {"MANN": MANN_PAPER, "LSTM": LSTM_PAPER},
        "threads": torch.get_num_threads(),
    }
    write_json(out / "results.json", result)
    write_mann_report(out, result)
    log("mann-runs: done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "ntm",
        help="train the NTM (LSTM / transformer controller) and plain LSTM / transformer on copy through the engine; "
        "bits wrong by length, weighting figure",
    )
    p.add_argument(
        "--minutes", type=float, default=20.0, help="training minutes per model (optim.max_minutes; rerun to resume)"
    )
    p.add_argument("--out", default="results/ntm", help="folder for results.json, results.md and ntm_weightings.png")
    p.add_argument("--runs", default="runs/ntm", help="folder of the four run folders (one per preset)")
    p.add_argument("--lengths", type=int, nargs="+", default=list(NTM_TEST_LENGTHS), help="test lengths")
    p.add_argument("--eval-sequences", type=int, default=256, help="fixed test sequences per length")
    p.add_argument(
        "--smoke", action="store_true", help="2 training steps per model, 8 sequences at lengths 20 and 40 (< 1 minute)"
    )
    p = sub.add_parser(
        "mann-runs", help="instance table of engine runs (fastadapt train mann-omniglot / mann-lstm-omniglot)"
    )
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and PNGs")
    p.add_argument("--eval-episodes", type=int, default=1000, help="held-out test episodes")
    p = sub.add_parser(
        "mann-report",
        help="rewrite results.md and the figures of MANN results folders from their results.json (no evaluation)",
    )
    p.add_argument(
        "folders", nargs="+", help="folders holding a results.json of mann-runs (or of the former mann command)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command in ("mann-runs", "mann-report"):
        try:
            if args.command == "mann-runs":
                mann_runs(args)
            for folder in map(Path, getattr(args, "folders", [])):
                write_mann_report(folder, json.loads((folder / "results.json").read_text()))
        except (FastAdaptError, OSError) as e:
            raise SystemExit(f"{args.command}: {e}") from None
    else:
        if args.smoke:
            args.lengths, args.eval_sequences = [20, 40], 8
        log(f"{args.command}: {vars(args)}")
        t0 = time.perf_counter()
        try:
            ntm_engine(args)
        except (FastAdaptError, OSError) as e:
            raise SystemExit(f"{args.command}: {e}") from None
        log(f"{args.command}: wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
