"""Fast adaptation to change (docs/CHANGE.md): drifting, switching sinusoid streams and Omniglot streams.

    python scripts/results_change.py --minutes 15 --streams 100 --out results/change
    python scripts/results_change.py --smoke            # < 1 minute: tiny training, 3 short streams, a temporary folder

Trains through ``fastadapt.train`` (each run capped at ``--minutes``; resumable: rerun the same command):

* ``grbal-sinusoid-stream``: GrBAL (Nagabandi et al. 2019) meta-trained on windows of sinusoid streams;
* ``pretrain-sinusoid-stream``: one model trained jointly on the same windows (no inner step);
* ``maml-sinusoid``: MAML on i.i.d. sinusoid tasks (the meta-learnt initialisation re-adapted on a window);
* ``protonet-omniglot-stream``: Prototypical Networks on Omniglot stream episodes.

Then runs ``--streams`` seeded test streams of each kind test-then-train (``fastadapt.online``) with every
learner below, and writes ``results.json`` (summaries with 95 % intervals over streams, paired
comparisons, the issue's two criteria), ``streams.json`` (stream 0 of each kind, every learner, for
``fastadapt plot``) and the plots ``sinusoid_stream.png``, ``sinusoid_recovery.png``,
``omniglot_stream.png``, ``omniglot_new_classes.png`` under ``--out``.

Sinusoid learners: GrBAL (re-adapting on the last 10 points at every step), GrBAL with change
detection (a loss jump resets it to theta), MAML's initialisation re-adapted on the same window, the
pretrained model fine-tuned online (SGD from its current weights on the window; the rate chosen among
``--ft-lrs`` by regret on ``--val-streams`` other streams), a randomly initialised model fine-tuned the
same way (from scratch), and the pretrained model without adaptation. Omniglot learners: ProtoNet with
running prototypes, with change detection, and with forgetting (decay 0.9).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import SourceRequest, build_algorithm
from fastadapt.data import streams
from fastadapt.eval.online import (
    LossJump,
    OnlineRun,
    examples_to_fraction,
    new_class_curves,
    online,
    paired,
    plot_recovery,
    plot_stream,
    summarize,
)

PRESETS = {"grbal": "grbal-sinusoid-stream", "pretrain": "pretrain-sinusoid-stream", "maml": "maml-sinusoid", "protonet": "protonet-omniglot-stream"}
EVAL_SEED, VAL_SEED = 2024, 7  # seeds of the test streams and of the streams that choose the fine-tuning rate
SINUSOID = {"length": 400, "phase_length": 100}
OMNIGLOT = {"length": 300, "phase_length": 50, "replace": 2, "rotation": 0.1, "holdout": 5}
WINDOW = 10  # points the window learners adapt on (GrBAL's training window)
# recovered: the error averaged over the last 3 steps is within 10 % of its mean over the 10 steps before the change, 3 steps in a row
RECOVERY = {"pre": 10, "tolerance": 0.1, "hold": 3, "smooth": 3}
DETECTOR = {"threshold": 4.0, "ratio": 2.0, "window": 20, "warmup": 5, "recent": 3}  # LossJump: the median of 3 step losses
SMOKE = {"sinusoid": {"length": 40, "phase_length": 10}, "omniglot": {"length": 16, "phase_length": 4, "replace": 1, "rotation": 1.0, "holdout": 2}}


def ensure_registered() -> None:
    """The stream sources and GrBAL under their names (a no-op once fastadapt's registry lists them)."""
    from fastadapt.algorithms.grbal import GrBAL
    from fastadapt.core.registry import ALGORITHMS, TASK_SOURCES

    for name, build in (("sinusoid-stream", streams.sinusoid_stream), ("omniglot-stream", streams.omniglot_stream),
                        ("stream-folder", streams.folder_stream)):
        if name not in TASK_SOURCES:
            fastadapt.register_task_source(name, build)
    if "grbal" not in ALGORITHMS:
        fastadapt.register_algorithm("grbal", GrBAL)


def train_all(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) every preset; returns the configs by key."""
    cfgs = {}
    for key, preset in PRESETS.items():
        overrides = [f"run.out={args.out / 'runs' / preset}", f"optim.max_minutes={args.minutes}", "run.progress=false", "run.threads=1"]
        if args.smoke:
            overrides += ["optim.steps=3", "eval.val_every=0", "eval.test_episodes=4", "data.meta_batch=2"]
            if key == "protonet":
                overrides += ["model.hidden=8", "data.ways=5", "data.queries=2", "data.test_queries=2",
                              "data.options={ length = 16, phase_length = 4, replace = 1, holdout = 2 }"]
        cfg = load_config(preset, overrides)
        res = fastadapt.train(cfg)
        if res.interrupted:
            raise SystemExit(f"{preset}: interrupted at step {res.steps}; run the same command again to resume")
        print(f"{preset}: {res.steps} steps in {res.train_seconds / 60:.1f} min", flush=True)
        cfgs[key] = {"cfg": cfg, "steps": res.steps, "minutes": res.train_seconds / 60}
    return cfgs


def run_streams(algo: torch.nn.Module, stream_list: list[Any], **kwargs: Any) -> list[OnlineRun]:
    return [online(algo, s, **kwargs) for s in stream_list]


def sinusoid_learners(cfgs: dict[str, Any], args: argparse.Namespace, opts: dict[str, Any]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Learner name -> (algorithm, online() keyword arguments); the fine-tuning rate chosen on validation streams."""
    grbal = fastadapt.load_run(cfgs["grbal"]["cfg"].out_dir).algorithm
    maml = fastadapt.load_run(cfgs["maml"]["cfg"].out_dir).algorithm
    pretrain_dir = cfgs["pretrain"]["cfg"].out_dir
    val = streams.sinusoid_stream(SourceRequest("val", 1, WINDOW, 5, VAL_SEED, options=opts)).streams(args.val_streams)
    finetune = {"policy": "continue", "window": WINDOW, "steps": args.ft_steps}

    def scratch(lr: float) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_algorithm(load_config(PRESETS["pretrain"], [f"algorithm.inner_lr={lr}", f"data.options={toml_table(opts)}"]))

    def best(make) -> tuple[float, torch.nn.Module]:
        scores = {lr: float(np.mean([r.error.sum() for r in run_streams(make(lr), val, options=finetune, probe=False)])) for lr in args.ft_lrs}
        lr = min(scores, key=scores.get)
        print(f"  fine-tuning rates by validation regret: {scores} -> {lr}", flush=True)
        return lr, make(lr)

    lr_pre, pretrained_ft = best(lambda lr: fastadapt.load_run(pretrain_dir, [f"algorithm.inner_lr={lr}"]).algorithm)
    lr_scr, scratch_ft = best(scratch)
    args.chosen = {"pretrained fine-tuning lr": lr_pre, "scratch fine-tuning lr": lr_scr}
    return {
        "GrBAL, window": (grbal, {"options": {"window": WINDOW}}),
        "GrBAL, window + change detection": (grbal, {"options": {"window": WINDOW}, "detector": LossJump(**DETECTOR)}),
        "MAML init, window": (maml, {"options": {"window": WINDOW, "policy": "window"}}),
        "pretrained + fine-tuning": (pretrained_ft, {"options": finetune}),
        "scratch + fine-tuning": (scratch_ft, {"options": finetune}),
        "no adaptation": (fastadapt.load_run(pretrain_dir).algorithm, {"update": False}),
    }


def toml_table(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def sinusoid_study(cfgs: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, OnlineRun]]:
    opts = SMOKE["sinusoid"] if args.smoke else SINUSOID
    test = streams.sinusoid_stream(SourceRequest("test", 1, WINDOW, 5, EVAL_SEED, options=opts)).streams(args.streams)
    learners = sinusoid_learners(cfgs, args, opts)
    runs: dict[str, list[OnlineRun]] = {}
    for name, (algo, kwargs) in learners.items():
        t0 = time.perf_counter()
        runs[name] = run_streams(algo, test, **kwargs)
        print(f"  {name}: {len(test)} streams in {time.perf_counter() - t0:.1f} s", flush=True)
    horizon = opts["phase_length"]
    out: dict[str, Any] = {"streams": len(test), "stream_options": opts, "window": WINDOW, "recovery_rule": RECOVERY, "detector": DETECTOR,
                           "fine_tuning": {"steps": args.ft_steps, "lrs": args.ft_lrs, **args.chosen}, "learners": {}}
    for name, rs in runs.items():
        out["learners"][name] = summarize(rs, "probe", horizon, **RECOVERY)
    comparisons = {
        "GrBAL, window - pretrained + fine-tuning": paired(runs["GrBAL, window"], runs["pretrained + fine-tuning"], "probe", **RECOVERY),
        "GrBAL + change detection - GrBAL, window": paired(runs["GrBAL, window + change detection"], runs["GrBAL, window"], "probe", **RECOVERY),
        "GrBAL, window - MAML init, window": paired(runs["GrBAL, window"], runs["MAML init, window"], "probe", **RECOVERY),
    }
    out["paired"] = comparisons
    mean, half = comparisons["GrBAL, window - pretrained + fine-tuning"]["recovery"]
    out["criterion"] = {"GrBAL recovers in fewer steps than fine-tuning the pretrained model (interval below 0)": bool(mean + half < 0)}
    return out, {name: rs[0] for name, rs in runs.items()}


def omniglot_study(cfgs: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, OnlineRun], Any]:
    opts = SMOKE["omniglot"] if args.smoke else OMNIGLOT
    source = streams.omniglot_stream(SourceRequest("test", 5, 1, 1, EVAL_SEED, options=opts))
    test = source.streams(args.omniglot_streams)
    algo = fastadapt.load_run(cfgs["protonet"]["cfg"].out_dir).algorithm
    learners = {
        "ProtoNet, running prototypes": {},
        "ProtoNet + change detection": {"detector": LossJump(**DETECTOR)},
        "ProtoNet, decay 0.9": {"options": {"decay": 0.9}},
    }
    horizon = opts["phase_length"]
    final = max(2, horizon // 5)
    out: dict[str, Any] = {"streams": len(test), "stream_options": opts, "ways": 5, "recovery_rule": RECOVERY, "detector": DETECTOR,
                           "learners": {}}
    first: dict[str, OnlineRun] = {}
    for name, kwargs in learners.items():
        t0 = time.perf_counter()
        rs = run_streams(algo, test, **kwargs)
        print(f"  {name}: {len(test)} streams in {time.perf_counter() - t0:.1f} s", flush=True)
        first[name] = rs[0]
        summary = summarize(rs, "probe", horizon, **RECOVERY)
        per_stream, per_class, curves = [], [], []
        for r, s in zip(rs, test):
            c = new_class_curves(r, s.new_labels(), horizon)
            curves.append(np.nanmean(c, axis=0))
            per_stream.append(examples_to_fraction(c, 0.9, final, s.per_class))
            per_class += [examples_to_fraction(row, 0.9, final, s.per_class) for row in c]
        curve = np.nanmean(np.array(curves), axis=0)
        reached = [v for v in per_stream if math.isfinite(v)]
        summary["new_classes"] = {
            "accuracy_by_examples": [float(v) for v in curve],
            "final_accuracy": float(np.nanmean(curve[-final:])),
            "examples_to_90pct": list(fastadapt.mean_ci(reached)) if len(reached) > 1 else [float(np.mean(reached)) if reached else math.nan, math.nan],
            "classes_within_5_examples": float(np.mean([math.isfinite(v) and v <= 5 for v in per_class])) if per_class else math.nan,
            "examples_to_90pct_of_mean_curve": examples_to_fraction(curve, 0.9, final),
        }
        out["learners"][name] = summary
    main = out["learners"]["ProtoNet, running prototypes"]["new_classes"]
    out["criterion"] = {"new classes reach 90 % of their final accuracy within 5 labelled examples (mean curve)":
                        bool(main["examples_to_90pct_of_mean_curve"] <= 5)}
    return out, first, test[0]


def sinusoid_table(results: dict[str, Any]) -> list[str]:
    """Markdown table of results.json's sinusoid study: recovery steps, censored share and regret per learner, then the paired differences."""
    s = results["sinusoid"]
    lines = [f"| learner ({s['streams']} streams) | recovery steps (95 % CI) | censored | regret, cumulative MSE (95 % CI) |", "|---|---|---|---|"]
    for name, r in s["learners"].items():
        lines.append(f"| {name} | {fmt(r.get('recovery'))} | {r.get('censored', math.nan):.0%} | {fmt(r['regret'], 0)} |")
    for name, d in s["paired"].items():
        lines.append(f"| *paired: {name}* | {fmt(d['recovery'])} | | {fmt(d['regret'], 0)} |")
    return lines


def omniglot_table(results: dict[str, Any]) -> list[str]:
    """Markdown table of results.json's Omniglot study: recovery, regret (errors) and the new classes' accuracy by examples seen."""
    o = results["omniglot"]
    lines = [f"| learner ({o['streams']} streams) | recovery steps (95 % CI) | regret, errors (95 % CI) | new classes: acc. after 1 / 5 examples, final "
             f"| examples to 90 % of final (95 % CI) | classes within 5 examples |", "|---|---|---|---|---|---|"]
    for name, r in o["learners"].items():
        n = r["new_classes"]
        acc = n["accuracy_by_examples"]
        at = " / ".join(f"{acc[k]:.1%}" if k < len(acc) and acc[k] is not None and math.isfinite(acc[k]) else "-" for k in (1, 5))
        lines.append(f"| {name} | {fmt(r.get('recovery'))} | {fmt(r['regret'])} | {at}, {n['final_accuracy']:.1%} | "
                     f"{fmt(n['examples_to_90pct'])} | {n['classes_within_5_examples']:.0%} |")
    return lines


def fmt(pair: Any, digits: int = 1) -> str:
    if not pair or pair[0] is None or not math.isfinite(pair[0]):
        return "-"
    half = pair[1]
    return f"{pair[0]:.{digits}f} +- {half:.{digits}f}" if half is not None and math.isfinite(half) else f"{pair[0]:.{digits}f}"


def plots(out: Path, results: dict[str, Any], sinusoid_runs: dict[str, OnlineRun], omniglot_runs: dict[str, OnlineRun]) -> None:
    plot_stream(sinusoid_runs, out / "sinusoid_stream.png", title="sinusoid stream 0: probe MSE before each update (grey: change points)")
    plot_recovery(results["sinusoid"]["learners"], out / "sinusoid_recovery.png", title="after an abrupt switch (mean over streams, 95 % CI)")
    plot_stream(omniglot_runs, out / "omniglot_stream.png", title="Omniglot stream 0: probe error before each update", smooth=3)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["omniglot"]["learners"].items():
        acc = np.array([math.nan if v is None else v for v in r["new_classes"]["accuracy_by_examples"]], dtype=float)
        ax.plot(np.arange(len(acc)), acc, marker=".", label=name)
    ax.axvline(5, color="0.7", lw=1)
    ax.set(xlabel="labelled examples of the new class", ylabel="probe accuracy on the new class", title="classes that appear at a change")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "omniglot_new_classes.png", dpi=100)
    plt.close(fig)


def plain(v: Any) -> Any:
    """JSON-safe: NaN and infinities as null."""
    if isinstance(v, dict):
        return {k: plain(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(w) for w in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per run")
    p.add_argument("--streams", type=int, default=100, help="seeded sinusoid test streams")
    p.add_argument("--omniglot-streams", type=int, default=30, help="seeded Omniglot test streams")
    p.add_argument("--val-streams", type=int, default=10, help="streams that choose the fine-tuning rate")
    p.add_argument("--ft-lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="fine-tuning rates to choose from")
    p.add_argument("--ft-steps", type=int, default=1, help="SGD steps per update when fine-tuning")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/change; --smoke: a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="a tiny end-to-end run (< 1 minute) to check the script")
    args = p.parse_args()
    torch.set_num_threads(1)
    ensure_registered()
    if args.smoke:
        args.streams, args.omniglot_streams, args.val_streams, args.ft_lrs, args.minutes = 3, 2, 2, [0.01, 0.1], 1.0
        args.out = args.out or Path(tempfile.mkdtemp(prefix="results_change_smoke_"))
    args.out = args.out or Path("results/change")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfgs = train_all(args)
    print("sinusoid streams", flush=True)
    sinusoid, sinusoid_runs = sinusoid_study(cfgs, args)
    print("Omniglot streams", flush=True)
    omniglot, omniglot_runs, _ = omniglot_study(cfgs, args)
    command = "python scripts/results_change.py " + ("--smoke" if args.smoke else
                                                      f"--minutes {args.minutes:g} --streams {args.streams} --omniglot-streams {args.omniglot_streams} --out {args.out}")
    results = {"command": command, "training": {k: {"preset": PRESETS[k], "steps": v["steps"], "minutes": v["minutes"]} for k, v in cfgs.items()},
               "sinusoid": sinusoid, "omniglot": omniglot}
    (args.out / "results.json").write_text(json.dumps(plain(results), indent=1) + "\n")
    records = {"sinusoid": {k: r.to_dict() for k, r in sinusoid_runs.items()}, "omniglot": {k: r.to_dict() for k, r in omniglot_runs.items()}}
    (args.out / "streams.json").write_text(json.dumps(records) + "\n")
    results = json.loads((args.out / "results.json").read_text())
    plots(args.out, results, sinusoid_runs, omniglot_runs)
    print("\n".join(sinusoid_table(results)), "\n", "\n".join(omniglot_table(results)), sep="\n")
    print(f"criteria: {sinusoid['criterion']} {omniglot['criterion']}")
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
