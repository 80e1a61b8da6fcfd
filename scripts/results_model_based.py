"""Results for the model-based family: the NTM copy task and the MANN on Omniglot, each against an LSTM.

    python scripts/results_model_based.py ntm-copy --minutes 25 --out results/ntm_copy
    python scripts/results_model_based.py mann --minutes 25 --out results/mann
    python scripts/results_model_based.py mann-runs results/runs/mann-omniglot results/runs/mann-lstm-omniglot --out results/mann_engine

Each sub-command trains the memory network and an LSTM baseline with the same wall-clock budget
(``--share`` of ``--minutes`` each, one after the other, one CPU thread), then evaluates both and
writes ``results.json``, ``results.md`` (a Markdown snippet) and PNG figures under ``--out``.

Checkpoints go to ``--ckpt`` (default ``runs/<name of --out>``), written atomically every
``--ckpt-every`` seconds; rerunning the same command resumes where a killed run stopped (a finished
phase is not retrained; a larger ``--minutes`` continues both models from their checkpoints).
``mann-runs`` scores MANN / LSTM runs trained by the common engine (presets ``mann-omniglot`` and
``mann-lstm-omniglot``) and writes the same table and figures. The LSTM meta-learner (Ravi &
Larochelle) is trained on Omniglot through the engine (``fastadapt train``), not here.
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

from fastadapt import ClassDataset, EpisodeSampler, load_omniglot
from fastadapt.algorithms.mann import MANN, REPORTED_INSTANCES, episode_sequence, instance_accuracy
from fastadapt.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.eval.stats import mean_ci
from fastadapt.memory import NTM, copy_bits_wrong, lstm_sequence_baseline
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


# --------------------------------------------------------------------------------------------------
# MANN on Omniglot


def resize_dataset(ds: ClassDataset, size: int) -> ClassDataset:
    """The same classes with every image resized to ``size x size`` (bilinear with antialiasing), kept as uint8."""
    chunks = []
    for start in range(0, len(ds.data), 4096):
        x = ds.data[start : start + 4096].float().div(255)
        chunks.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).mul(255).round().clamp(0, 255).to(torch.uint8))
    return ClassDataset(torch.cat(chunks), ds.offsets, ds.names, f"{ds.name}@{size}")


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


def mann(args: argparse.Namespace) -> None:
    out, ckpt_dir = Path(args.out), Path(args.ckpt or Path("runs") / Path(args.out).name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log("mann: loading Omniglot and resizing to 20x20")
    train = resize_dataset(load_omniglot("vinyals", "trainval"), 20)
    test = resize_dataset(load_omniglot("vinyals", "test", rotations=False), 20)
    log(f"mann: train {train}, test {test}")
    shots, queries = 5, 5  # 10 instances of each of 5 classes: 50-step episodes
    sampler = EpisodeSampler(train, 5, shots, queries, seed=args.seed)
    torch.manual_seed(args.seed)
    models = {"MANN": MANN(None, ways=5, core="mann"), "LSTM": MANN(None, ways=5, core="lstm")}
    budget = args.minutes * 60 * args.share
    phases = {}
    for name, algo in models.items():
        def loss_fn(step: int, algo: MANN = algo) -> tuple[Tensor, dict[str, float]]:
            batch = sampler.sample_tasks(step, 0, args.batch)
            res = algo.meta_loss(batch, torch.Generator().manual_seed(args.seed * 1_000_003 + step))
            return res.loss, {k: v for k, v in res.metrics.items() if k in ("acc", "inst1", "inst2", "inst10")}

        phases[name] = train_phase(f"mann/{name}", algo, loss_fn, budget, ckpt_dir / f"{name}.pt", args.lr, 10.0, args.ckpt_every, args.log_every)
        phases[name]["parameters"] = sum(p.numel() for p in algo.parameters())
        phases[name]["episodes"] = phases[name]["steps"] * args.batch

    log("mann: evaluating on held-out characters")
    test_sampler = EpisodeSampler(test, 5, shots, queries, seed=args.seed + 1)
    accs = {name: evaluate_mann(algo, test_sampler, args.eval_episodes, args.seed) for name, algo in models.items()}
    curves = {name: [(h[0] * args.batch, h[3]) for h in phases[name]["history"]] for name in models}
    result = {"data": "Omniglot 20x20 (bundled 28x28, bilinear antialiased resize); train: vinyals trainval (1200 characters x 4 rotations), "
                      "test: vinyals test (423 characters, no rotations)",
              "episode": "5 classes x 10 instances (shots 5 + queries 5 pooled), shuffled order and labels, label of step t-1 given at step t",
              "minutes": args.minutes, "share_per_model": args.share, "seed": args.seed, "batch": args.batch, "lr": args.lr,
              "optimizer": "Adam, grad-norm clip 10", "eval_episodes": args.eval_episodes,
              "models": {"MANN": "LSTM controller 200, memory 128 x 40, 4 read heads, LRUA, gamma 0.95", "LSTM": "LSTM 200 units"},
              "phases": phases}
    rows = {name: (f"{args.minutes * args.share:.1f} min CPU", phases[name]["episodes"]) for name in models}
    report_mann(out, accs, curves, rows, result)
    log("mann: done")


def report_mann(out: Path, accs: dict[str, dict[str, list[float]]], curves: dict[str, list[tuple[int, dict[str, float]]]],
                rows: dict[str, tuple[str, int]], result: dict) -> None:
    """Figures, ``results.json`` and the Markdown table of a MANN-vs-LSTM comparison.

    accs: model -> instance -> [mean %, ci %]; curves: model -> [(episodes, {"inst1": ...}), ...] training
    accuracy by instance; rows: model -> (budget text, training episodes); result: the settings to record.
    """
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

    result = {**result, "instance_accuracy_percent_mean_ci95": accs, "paper": {"MANN": MANN_PAPER, "LSTM": LSTM_PAPER},
              "threads": torch.get_num_threads()}
    write_json(out / "results.json", result)
    cols = REPORTED_INSTANCES
    md = ["| model | episodes | " + " | ".join(f"{k}{'st' if k == 1 else 'nd' if k == 2 else 'rd' if k == 3 else 'th'}" for k in cols) + " |",
          "|---|---|" + "---|" * len(cols)]
    for name in accs:
        budget, episodes = rows[name]
        md.append(f"| {name} (ours, {budget}) | {episodes:,} | " + " | ".join(f"{accs[name][str(k)][0]:.1f} ± {accs[name][str(k)][1]:.1f}" for k in cols) + " |")
    md.append("| MANN (paper) | 100,000 | " + " | ".join(f"{MANN_PAPER[k]}" for k in cols) + " |")
    md.append("| LSTM (paper) | 100,000 | " + " | ".join(f"{LSTM_PAPER[k]}" for k in cols) + " |")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)


def mann_runs(args: argparse.Namespace) -> None:
    """The instance table of MANN / LSTM runs trained by the engine (``fastadapt train mann-omniglot``, ``mann-lstm-omniglot``).

    Each run is scored from its last checkpoint on ``--eval-episodes`` fixed episodes of its test part
    (the engine's test episodes: ``eval.seed + 1``), 5 classes x 10 instances as in training.
    """
    from fastadapt.build import build_algorithm, class_dataset
    from fastadapt.config import config_from_dict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    accs, curves, rows, runs = {}, {}, {}, {}
    for run in map(Path, args.runs):
        missing = [f for f in ("config.json", "checkpoint.pt", "metrics.jsonl") if not (run / f).is_file()]
        if missing:
            raise SystemExit(f"mann-runs: {run} has no {', '.join(missing)}; pass run folders written by fastadapt train")
        cfg = config_from_dict(json.loads((run / "config.json").read_text()))
        algo = build_algorithm(cfg)
        state = load_checkpoint(run / "checkpoint.pt")
        algo.load_state_dict(state["algorithm"])
        name = "MANN" if cfg.algorithm_options.get("core", "mann") == "mann" else "LSTM"
        d = cfg.data
        log(f"mann-runs: {run} ({name}, step {int(state['step'])}): evaluating")
        sampler = EpisodeSampler(class_dataset(cfg, d.test_part), d.ways, d.shots, d.queries, seed=cfg.eval.seed + 1)
        accs[name] = evaluate_mann(algo, sampler, args.eval_episodes, cfg.eval.seed)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in lines if r.get("split") == "train" and "inst10" in r]
        window = max(1, len(train_rows) // 100)  # average the per-step metrics over windows: 100 points per curve
        curves[name] = [(train_rows[i + window - 1]["step"] * d.meta_batch,
                         {k: sum(r[k] for r in train_rows[i:i + window]) / window for k in ("inst1", "inst2", "inst10")})
                        for i in range(0, len(train_rows) - window + 1, window)]
        episodes = int(state["step"]) * d.meta_batch
        rows[name] = (f"{float(state.get('train_seconds', 0.0)) / 60:.1f} min", episodes)
        runs[name] = {"run": str(run), "steps": int(state["step"]), "episodes": episodes, "train_seconds": float(state.get("train_seconds", 0.0)),
                      "config": json.loads((run / "config.json").read_text())}
    result = {"data": "the runs' own data settings (see runs.*.config); test: their test part, fixed episodes eval.seed + 1",
              "episode": "5 classes x 10 instances (shots 5 + queries 5 pooled), shuffled order and labels, label of step t-1 given at step t",
              "eval_episodes": args.eval_episodes, "runs": runs}
    report_mann(out, accs, curves, rows, result)
    log("mann-runs: done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, batch, lr, evals in (("ntm-copy", 16, 1e-3, 64), ("mann", 16, 1e-3, 1000)):
        p = sub.add_parser(name)
        p.add_argument("--minutes", type=float, default=25.0, help="total wall-clock budget")
        p.add_argument("--share", type=float, default=0.45, help="fraction of the budget each model trains for")
        p.add_argument("--out", required=True, help="folder for results.json, results.md and PNGs")
        p.add_argument("--ckpt", default=None, help="checkpoint folder (default runs/<name of --out>)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch", type=int, default=batch, help="sequences / episodes per update")
        p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
        p.add_argument("--ckpt-every", type=float, default=60.0, help="seconds between checkpoints")
        p.add_argument("--log-every", type=float, default=20.0, help="seconds between progress lines")
        if name == "ntm-copy":
            p.add_argument("--eval-sequences", type=int, default=evals, help="test sequences per length")
        else:
            p.add_argument("--eval-episodes", type=int, default=evals, help="held-out test episodes")
    p = sub.add_parser("mann-runs", help="instance table of engine runs (fastadapt train mann-omniglot / mann-lstm-omniglot)")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and PNGs")
    p.add_argument("--eval-episodes", type=int, default=1000, help="held-out test episodes")
    args = parser.parse_args()
    if args.command == "mann-runs":
        torch.set_num_threads(1)
        mann_runs(args)
        return
    if not 0 < args.share <= 0.5:
        parser.error(f"--share {args.share} must be in (0, 0.5]: two models train one after the other")
    torch.set_num_threads(1)
    log(f"{args.command}: {vars(args)}")
    t0 = time.perf_counter()
    {"ntm-copy": ntm_copy, "mann": mann}[args.command](args)
    log(f"{args.command}: wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
