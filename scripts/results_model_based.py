"""Results for the model-based family: the NTM copy task and the MANN on Omniglot, each against an LSTM.

    python scripts/results_model_based.py ntm-copy --minutes 25 --out results/ntm_copy
    python scripts/results_model_based.py mann-runs results/runs/mann-omniglot results/runs/mann-lstm-omniglot --out results/mann_engine
    python scripts/results_model_based.py mann-report results/mann results/mann_50min results/mann_engine

``ntm-copy`` trains the NTM and an LSTM baseline with the same wall-clock budget (``--share`` of
``--minutes`` each, one after the other, one CPU thread), then evaluates both and writes
``results.json``, ``results.md`` (a Markdown snippet) and PNG figures under ``--out``. Checkpoints go
to ``--ckpt`` (default ``runs/<name of --out>``), written atomically every ``--ckpt-every`` seconds;
rerunning the same command resumes where a killed run stopped (a finished phase is not retrained; a
larger ``--minutes`` continues both models from their checkpoints).

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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastadapt
from fastadapt import EpisodeSampler, FastAdaptError
from fastadapt.algorithms.mann import MANN, REPORTED_INSTANCES, episode_sequence, instance_accuracy
from fastadapt.build import task_sources
from fastadapt.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.eval import mean_ci
from fastadapt.memory import NTM, copy_bits_wrong, lstm_sequence_baseline
from fastadapt.run_folder import RunFolder
from fastadapt.tasks import CopyTask, copy_batch

MANN_PAPER = {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1}  # Santoro et al. 2016, table 1, MANN (LRUA), 5 classes
LSTM_PAPER = {1: 24.4, 2: 49.5, 3: 55.3, 4: 61.0, 5: 63.6, 10: 62.5}  # the same table, LSTM baseline


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The NTM copy task keeps its own loop for now: another issue moves it into the engine.
def train_phase(name: str, model: nn.Module, loss_fn: Callable[[int], tuple[Tensor, dict[str, float]]], budget_s: float, ckpt: Path,
                lr: float, clip: float, ckpt_every: float, log_every: float) -> dict:
    """Adam on ``loss_fn(step)`` until ``budget_s`` seconds of training have been spent (resumable).

    Returns ``{"steps", "train_seconds", "history": [[step, seconds, loss, {metrics}], ...]}``.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, spent, history = 0, 0.0, []
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, spent, history = int(state["step"]), float(state["seconds"]), json.loads(state["history"])
        log(f"{name}: resumed at step {step} ({spent:.0f} of {budget_s:.0f} s spent)")
    done = spent >= budget_s  # a larger budget continues a finished phase from its checkpoint

    def save(finished: bool) -> None:
        save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seconds": spent,
                               "history": json.dumps(history), "done": finished})

    if not done:
        model.train()
        start = time.perf_counter() - spent
        last_ckpt = last_log = time.perf_counter()
        window: list[tuple[float, dict[str, float]]] = []
        while time.perf_counter() - start < budget_s:
            loss, metrics = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            step += 1
            window.append((float(loss.detach()), metrics))
            now = time.perf_counter()
            spent = now - start
            if now - last_log >= log_every:
                avg = {k: sum(m[k] for _, m in window) / len(window) for k in window[-1][1]}
                avg_loss = sum(v for v, _ in window) / len(window)
                history.append([step, round(spent, 1), avg_loss, avg])
                log(f"{name}: step {step}  {spent:.0f}/{budget_s:.0f} s  loss {avg_loss:.4f}  " + "  ".join(f"{k} {v:.3f}" for k, v in avg.items()))
                window, last_log = [], now
            if now - last_ckpt >= ckpt_every:
                save(False)
                last_ckpt = now
        save(True)
        log(f"{name}: finished {step} steps in {spent:.0f} s")
    return {"steps": step, "train_seconds": round(spent, 1), "history": history}


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# NTM copy


class _LSTMCopy(nn.Module):
    """Adapter so that the LSTM baseline returns ``(outputs,)`` like the NTM's ``NTMOutput``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, inputs: Tensor) -> tuple[Tensor]:
        return (self.inner(inputs),)


def ntm_copy(args: argparse.Namespace) -> None:
    out, ckpt_dir = Path(args.out), Path(args.ckpt or Path("runs") / Path(args.out).name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    task = CopyTask(bits=8, min_length=1, max_length=20, seed=args.seed)
    torch.manual_seed(args.seed)
    models = {
        "NTM": NTM(task.input_size, task.output_size, memory_size=128, memory_width=20, controller="lstm", controller_size=100),
        "LSTM": _LSTMCopy(lstm_sequence_baseline(task.input_size, task.output_size, hidden_size=256, layers=3)),
    }
    budget = args.minutes * 60 * args.share
    phases = {}
    for name, model in models.items():
        def loss_fn(step: int, model: nn.Module = model) -> tuple[Tensor, dict[str, float]]:
            b = task.batch(step, args.batch)
            logits = b.output_steps(model(b.inputs)[0])
            loss = F.binary_cross_entropy_with_logits(logits, b.targets)
            return loss, {"bits_wrong": float(copy_bits_wrong(logits.detach(), b.targets).mean()), "length": float(b.length)}

        phases[name] = train_phase(f"ntm-copy/{name}", model, loss_fn, budget, ckpt_dir / f"{name}.pt", args.lr, 10.0, args.ckpt_every, args.log_every)
        phases[name]["parameters"] = sum(p.numel() for p in model.parameters())
        phases[name]["sequences"] = phases[name]["steps"] * args.batch

    log("ntm-copy: evaluating")
    lengths = [*range(1, 21), 30, 40, 50, 60, 70, 80]
    errors: dict[str, dict[int, float]] = {n: {} for n in models}
    g = torch.Generator().manual_seed(10_000 + args.seed)
    tests = {n: copy_batch(n, args.eval_sequences, generator=g) for n in lengths}
    with torch.no_grad():
        for name, model in models.items():
            model.eval()
            for n, b in tests.items():
                errors[name][n] = float(copy_bits_wrong(b.output_steps(model(b.inputs)[0]), b.targets).mean())
    trace_batch = copy_batch(20, 1, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        rec = models["NTM"](trace_batch.inputs, record=True)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name in models:
        ax.plot(lengths, [errors[name][n] for n in lengths], marker="o", ms=3, label=name)
    ax.axvline(20.5, color="grey", ls="--", lw=1)
    ax.text(21, ax.get_ylim()[1] * 0.9, "unseen lengths", color="grey", fontsize=8)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("bits wrong per sequence")
    ax.set_title("Copy task: error vs length (trained on 1-20)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "copy_error_vs_length.png", dpi=120)
    plt.close(fig)

    length = trace_batch.length
    ww, rw = rec.write_weights[:, 0, 0].T.numpy(), rec.read_weights[:, 0, 0].T.numpy()  # [N, T]
    # the heads start at slot 0 and may move either way round the circular memory: show slots as
    # offsets from slot 0 in -N/2..N/2-1 and crop to the rows the heads visited
    n_slots = ww.shape[0]
    half = n_slots // 2
    ww, rw = np.roll(ww, half, axis=0), np.roll(rw, half, axis=0)  # row r is slot r - half (mod N)
    rows = ((ww.max(1) > 0.05) | (rw.max(1) > 0.05)).nonzero()[0]
    lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (half - 2, half + 30)
    lo, hi = max(lo - 2, 0), min(hi + 2, n_slots)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex="col")
    axes[0, 0].imshow(trace_batch.inputs[:, 0].T.numpy(), aspect="auto", cmap="gray_r")
    axes[0, 0].set_title("inputs (8 bits + delimiter)")
    outputs = torch.sigmoid(rec.outputs[:, 0]).T.numpy()
    axes[0, 1].imshow(outputs, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
    axes[0, 1].axvline(length + 0.5, color="red", lw=0.8)
    axes[0, 1].set_title("outputs (sigmoid); copy starts after the red line")
    for ax, w, title in ((axes[1, 0], ww, "write weightings"), (axes[1, 1], rw, "read weightings")):
        ax.imshow(w[lo:hi], aspect="auto", cmap="gray_r", extent=(-0.5, w.shape[1] - 0.5, hi - half - 0.5, lo - half - 0.5))
        ax.set_title(title)
        ax.set_xlabel("time step")
        ax.set_ylabel(f"memory slot (offset from slot 0, mod {n_slots})")
    fig.suptitle("NTM on a length-20 copy sequence (cf. Graves et al. 2014, fig. 6)")
    fig.tight_layout()
    fig.savefig(out / "ntm_weightings.png", dpi=120)
    plt.close(fig)

    result = {"task": "copy, 8-bit vectors, train lengths 1-20", "minutes": args.minutes, "share_per_model": args.share, "seed": args.seed,
              "batch": args.batch, "lr": args.lr, "optimizer": "Adam, grad-norm clip 10", "eval_sequences_per_length": args.eval_sequences,
              "models": {"NTM": "LSTM controller 100, memory 128 x 20, 1 read + 1 write head, shifts -1..1",
                         "LSTM": "3-layer LSTM, 256 units per layer (the paper's baseline)"},
              "phases": phases, "bits_wrong_per_sequence": {n: {str(k): v for k, v in e.items()} for n, e in errors.items()},
              "threads": torch.get_num_threads()}
    write_json(out / "results.json", result)
    md = ["| length | " + " | ".join(f"{n} bits wrong / seq" for n in models) + " |", "|---|" + "---|" * len(models)]
    for n in [1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80]:
        md.append(f"| {n}{' (unseen)' if n > 20 else ''} | " + " | ".join(f"{errors[m][n]:.2f}" for m in models) + " |")
    md.append("")
    md.append(f"| model | parameters | training steps (batch {args.batch}) | sequences | training time (s) |")
    md.append("|---|---|---|---|---|")
    for name, p in phases.items():
        md.append(f"| {name} | {p['parameters']:,} | {p['steps']} | {p['sequences']:,} | {p['train_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    log("ntm-copy: done")


NTM_TABLE_LENGTHS = (1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80)


def ntm_copy_table(results: list[dict]) -> list[str]:
    """Markdown table of bits wrong per sequence by length, one column per model of each ``ntm-copy`` ``results.json``
    ("NTM, 25 min"), then the updates and training sequences of each column."""
    cols = [(f"{name}, {res['minutes']:g} min", res, name) for res in results for name in res["bits_wrong_per_sequence"]]
    batches = {res["batch"] for res in results}
    md = ["| length | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for n in NTM_TABLE_LENGTHS:  # trained on lengths 1-20
        md.append(f"| {n}{' (unseen)' if n > 20 else ''} | " + " | ".join(f"{res['bits_wrong_per_sequence'][name][str(n)]:.2f}" for _, res, name in cols) + " |")
    md.append(f"| updates (batch {'/'.join(map(str, sorted(batches)))}) | " + " | ".join(f"{res['phases'][name]['steps']:,}" for _, res, name in cols) + " |")
    md.append("| training sequences | " + " | ".join(f"{res['phases'][name]['sequences']:,}" for _, res, name in cols) + " |")
    return md


# --------------------------------------------------------------------------------------------------
# MANN on Omniglot: runs trained by the engine (fastadapt train mann-omniglot / mann-lstm-omniglot)

INSTANCE_NAMES = {1: "1st", 2: "2nd", 3: "3rd"}


def evaluate_mann(algo: MANN, sampler: EpisodeSampler, episodes: int, seed: int) -> dict[str, list[float]]:
    """Accuracy by instance on fixed test episodes: ``{"k": [mean %, ci95 %]}``."""
    per_episode = []
    algo.eval()
    with torch.no_grad():
        for i, batch in enumerate(sampler.fixed(episodes, batch_size=100)):
            seq = episode_sequence(batch, torch.Generator().manual_seed(seed * 1000 + i))
            per_episode.append(instance_accuracy(algo.sequence_logits(seq), seq.labels, seq.instance, max(REPORTED_INSTANCES)))
    acc = torch.cat(per_episode)
    out = {}
    for k in range(1, acc.shape[1] + 1):
        m, h = mean_ci(acc[:, k - 1].numpy() * 100)
        out[str(k)] = [m, h]
    return out


def mann_table(rows: list[tuple[str, str, int, dict[str, list[float]]]]) -> list[str]:
    """Markdown table of accuracy by instance: ``rows`` of (model, training, episodes, {"k": [mean %, ci %]}), then the paper's rows."""
    cols = REPORTED_INSTANCES
    md = ["| model | training | episodes | " + " | ".join(INSTANCE_NAMES.get(k, f"{k}th") for k in cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for model, training, episodes, accs in rows:
        md.append(f"| {model} | {training} | {episodes:,} | " + " | ".join(f"{accs[str(k)][0]:.1f} ± {accs[str(k)][1]:.1f}" for k in cols) + " |")
    for model, paper in (("**MANN (paper)**", MANN_PAPER), ("LSTM (paper)", LSTM_PAPER)):
        md.append(f"| {model} | | 100,000 | " + " | ".join(f"{paper[k]}" for k in cols) + " |")
    return md


def mann_rows(result: dict) -> list[tuple[str, str, int, dict[str, list[float]]]]:
    """The rows of :func:`mann_table` from a ``results.json`` of ``mann-runs`` (``runs``) or of the
    session-1 ``mann`` command, which trained both models in one script (``phases``; removed since)."""
    accs = result["instance_accuracy_percent_mean_ci95"]
    if "runs" in result:
        return [(f"{name} (ours)", engine_training(run), run["episodes"], accs[name]) for name, run in result["runs"].items()]
    return [(f"{name} (ours)", f"{result['minutes']:g}-min run ({phase['train_seconds'] / 60:.1f} min each)", phase["episodes"], accs[name])
            for name, phase in result["phases"].items()]


def engine_training(run: dict) -> str:
    """How long an engine run of ``mann-runs``' record trained, in words ("80 min, one core")."""
    threads = run["config"]["run"]["threads"]
    return f"{run['train_seconds'] / 60:.0f} min" + (", one core" if threads == 1 else f", {threads} threads" if threads else "")


def mann_curves(result: dict) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """Training accuracy by instance against episodes, ``model -> [(episodes, {"inst1", "inst2", "inst10"}), ...]``:
    from the runs' metrics.jsonl (``mann-runs``) or the recorded history (session 1)."""
    if "runs" in result:
        return {name: engine_curve(RunFolder(run["run"]).read_metrics(), run["config"]["data"]["meta_batch"]) for name, run in result["runs"].items()}
    return {name: [(h[0] * result["batch"], h[3]) for h in phase["history"]] for name, phase in result["phases"].items()}


def engine_curve(metrics: list[dict], meta_batch: int) -> list[tuple[int, dict[str, float]]]:
    """The training rows of a run's metrics averaged over windows (100 points per curve), against episodes."""
    rows = [r for r in metrics if r.get("split") == "train" and "inst10" in r]
    window = max(1, len(rows) // 100)
    return [(rows[i + window - 1]["step"] * meta_batch, {k: sum(r[k] for r in rows[i:i + window]) / window for k in ("inst1", "inst2", "inst10")})
            for i in range(0, len(rows) - window + 1, window)]


def plot_mann(out: Path, accs: dict[str, dict[str, list[float]]], curves: dict[str, list[tuple[int, dict[str, float]]]]) -> None:
    """``mann_training_curves.png`` (training accuracy by instance) and ``mann_instance_accuracy.png`` (test, against the paper)."""
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
    fig.tight_layout()
    fig.savefig(out / "mann_training_curves.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ks = list(range(1, 11))
    for name in accs:
        ax.errorbar(ks, [accs[name][str(k)][0] for k in ks], yerr=[accs[name][str(k)][1] for k in ks], marker="o", ms=3, capsize=2, label=f"{name} (ours)")
    ax.plot(list(MANN_PAPER), list(MANN_PAPER.values()), "k--", marker="x", label="MANN (paper, 100k episodes)")
    ax.set_xlabel("instance")
    ax.set_ylabel("% correct (held-out characters)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "mann_instance_accuracy.png", dpi=120)
    plt.close(fig)


def write_mann_report(out: Path, result: dict) -> None:
    """``results.md`` and the figures of a MANN-vs-LSTM ``results.json`` (no evaluation)."""
    plot_mann(out, result["instance_accuracy_percent_mean_ci95"], mann_curves(result))
    md = mann_table(mann_rows(result))
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)


def mann_runs(args: argparse.Namespace) -> None:
    """The instance table of MANN / LSTM runs trained by the engine (``fastadapt train mann-omniglot``, ``mann-lstm-omniglot``).

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
        log(f"mann-runs: {path} ({name}, {run.weights}, step {run.step}): evaluating")
        sampler = task_sources(cfg).tests[f"{cfg.test_ways}w{cfg.test_shots}s"]
        accs[name] = evaluate_mann(run.algorithm, sampler, args.eval_episodes, cfg.eval.seed)
        runs[name] = {"run": str(path), "steps": run.step, "episodes": run.step * cfg.data.meta_batch,
                      "train_seconds": float(run.folder.read_results()["train_seconds"]), "config": json.loads(run.folder.config_file.read_text())}
    result = {"data": "the runs' own data settings (see runs.*.config); test: their test part, fixed episodes eval.seed + 1",
              "episode": "5 classes x 10 instances (shots 5 + queries 5 pooled), shuffled order and labels, label of step t-1 given at step t",
              "eval_episodes": args.eval_episodes, "runs": runs, "instance_accuracy_percent_mean_ci95": accs,
              "paper": {"MANN": MANN_PAPER, "LSTM": LSTM_PAPER}, "threads": torch.get_num_threads()}
    write_json(out / "results.json", result)
    write_mann_report(out, result)
    log("mann-runs: done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ntm-copy", help="train the NTM and an LSTM on the copy task, evaluate, write the table and figures")
    p.add_argument("--minutes", type=float, default=25.0, help="total wall-clock budget")
    p.add_argument("--share", type=float, default=0.45, help="fraction of the budget each model trains for")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and PNGs")
    p.add_argument("--ckpt", default=None, help="checkpoint folder (default runs/<name of --out>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="sequences per update")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ckpt-every", type=float, default=60.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=float, default=20.0, help="seconds between progress lines")
    p.add_argument("--eval-sequences", type=int, default=64, help="test sequences per length")
    p = sub.add_parser("mann-runs", help="instance table of engine runs (fastadapt train mann-omniglot / mann-lstm-omniglot)")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and PNGs")
    p.add_argument("--eval-episodes", type=int, default=1000, help="held-out test episodes")
    p = sub.add_parser("mann-report", help="rewrite results.md and the figures of MANN results folders from their results.json (no evaluation)")
    p.add_argument("folders", nargs="+", help="folders holding a results.json of mann-runs (or of the former mann command)")
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
        if not 0 < args.share <= 0.5:
            parser.error(f"--share {args.share} must be in (0, 0.5]: two models train one after the other")
        log(f"{args.command}: {vars(args)}")
        t0 = time.perf_counter()
        ntm_copy(args)
        log(f"{args.command}: wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
