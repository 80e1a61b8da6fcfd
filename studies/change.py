"""The change study's record: seeded test streams run test-then-train with every learner (summaries with 95 %
intervals over streams, paired comparisons, the issue's two criteria) and ``streams.json`` (stream 0, every
learner); its plots."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastadapt
from fastadapt.apps.study import Study
from fastadapt.config import load_config
from fastadapt.config.build import SourceRequest, build_algorithm
from fastadapt.data import streams
from fastadapt.eval.stream_metrics import examples_to_fraction, new_class_curves, paired, summarize
from fastadapt.eval.streams import LossJump, OnlineRun, online
from fastadapt.report.streams import STREAMS_FILE, plot_new_classes, plot_recovery, plot_stream, save_runs


def run_streams(algo: torch.nn.Module, stream_list: list[Any], **kwargs: Any) -> list[OnlineRun]:
    return [online(algo, s, **kwargs) for s in stream_list]


def sinusoid_learners(cells: dict, opts: dict, chosen: dict) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Learner name -> (algorithm, online() keyword arguments); the fine-tuning rate chosen on validation streams."""
    grbal = fastadapt.load_run(cells["grbal"]["run"]).algorithm
    maml = fastadapt.load_run(cells["maml"]["run"]).algorithm
    pretrain_dir = cells["pretrain"]["run"]
    window, stream_opts = opts["window"], opts["sinusoid"]
    request = SourceRequest("val", 1, window, 5, opts["val_seed"], options=stream_opts)
    val = streams.sinusoid_stream(request).streams(opts["val_streams"])
    finetune = {"policy": "continue", "window": window, "steps": opts["ft_steps"]}
    table = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in stream_opts.items()) + " }"

    def scratch(lr: float) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_algorithm(
            load_config(cells["pretrain"]["preset"], [f"algorithm.inner_lr={lr}", f"data.options={table}"])
        )

    def best(make) -> tuple[float, torch.nn.Module]:
        scores = {}
        for lr in opts["ft_lrs"]:
            scores[lr] = float(
                np.mean([r.error.sum() for r in run_streams(make(lr), val, options=finetune, probe=False)])
            )
        lr = min(scores, key=scores.get)
        print(f"  fine-tuning rates by validation regret: {scores} -> {lr}", flush=True)
        return lr, make(lr)

    lr_pre, pretrained_ft = best(lambda lr: fastadapt.load_run(pretrain_dir, [f"algorithm.inner_lr={lr}"]).algorithm)
    lr_scr, scratch_ft = best(scratch)
    chosen.update({"pretrained fine-tuning lr": lr_pre, "scratch fine-tuning lr": lr_scr})
    detector = LossJump(**opts["detector"])
    return {
        "GrBAL, window": (grbal, {"options": {"window": window}}),
        "GrBAL, window + change detection": (grbal, {"options": {"window": window}, "detector": detector}),
        "MAML init, window": (maml, {"options": {"window": window, "policy": "window"}}),
        "pretrained + fine-tuning": (pretrained_ft, {"options": finetune}),
        "scratch + fine-tuning": (scratch_ft, {"options": finetune}),
        "no adaptation": (fastadapt.load_run(pretrain_dir).algorithm, {"update": False}),
    }


def sinusoid_study(cells: dict, opts: dict) -> tuple[dict[str, Any], dict[str, OnlineRun]]:
    stream_opts, recovery = opts["sinusoid"], opts["recovery"]
    request = SourceRequest("test", 1, opts["window"], 5, opts["eval_seed"], options=stream_opts)
    test = streams.sinusoid_stream(request).streams(opts["streams"])
    chosen: dict = {}
    runs: dict[str, list[OnlineRun]] = {}
    for name, (algo, kwargs) in sinusoid_learners(cells, opts, chosen).items():
        t0 = time.perf_counter()
        runs[name] = run_streams(algo, test, **kwargs)
        print(f"  {name}: {len(test)} streams in {time.perf_counter() - t0:.1f} s", flush=True)
    horizon = stream_opts["phase_length"]
    fine_tuning = {"steps": opts["ft_steps"], "lrs": opts["ft_lrs"], **chosen}
    out: dict[str, Any] = {
        "streams": len(test),
        "stream_options": stream_opts,
        "window": opts["window"],
        "recovery_rule": recovery,
        "detector": opts["detector"],
        "fine_tuning": fine_tuning,
        "learners": {n: summarize(rs, "probe", horizon, **recovery) for n, rs in runs.items()},
    }
    pairs = {
        "GrBAL, window - pretrained + fine-tuning": ("GrBAL, window", "pretrained + fine-tuning"),
        "GrBAL + change detection - GrBAL, window": ("GrBAL, window + change detection", "GrBAL, window"),
        "GrBAL, window - MAML init, window": ("GrBAL, window", "MAML init, window"),
    }
    out["paired"] = {k: paired(runs[a], runs[b], "probe", **recovery) for k, (a, b) in pairs.items()}
    mean, half = out["paired"]["GrBAL, window - pretrained + fine-tuning"]["recovery"]
    criterion = "GrBAL recovers in fewer steps than fine-tuning the pretrained model (interval below 0)"
    out["criterion"] = {criterion: bool(mean + half < 0)}
    return out, {name: rs[0] for name, rs in runs.items()}


def omniglot_study(cells: dict, opts: dict) -> tuple[dict[str, Any], dict[str, OnlineRun]]:
    stream_opts, recovery = opts["omniglot"], opts["recovery"]
    test = streams.omniglot_stream(SourceRequest("test", 5, 1, 1, opts["eval_seed"], options=stream_opts)).streams(
        opts["omniglot_streams"]
    )
    algo = fastadapt.load_run(cells["protonet"]["run"]).algorithm
    learners = {
        "ProtoNet, running prototypes": {},
        "ProtoNet + change detection": {"detector": LossJump(**opts["detector"])},
        "ProtoNet, decay 0.9": {"options": {"decay": 0.9}},
    }
    horizon = stream_opts["phase_length"]
    final = max(2, horizon // 5)
    out: dict[str, Any] = {"streams": len(test), "stream_options": stream_opts, "ways": 5, "recovery_rule": recovery,
                           "detector": opts["detector"], "learners": {}}  # fmt: skip
    first: dict[str, OnlineRun] = {}
    for name, kwargs in learners.items():
        t0 = time.perf_counter()
        rs = run_streams(algo, test, **kwargs)
        print(f"  {name}: {len(test)} streams in {time.perf_counter() - t0:.1f} s", flush=True)
        first[name] = rs[0]
        summary = summarize(rs, "probe", horizon, **recovery)
        per_stream, per_class, curves = [], [], []
        for r, s in zip(rs, test):
            c = new_class_curves(r, s.new_labels(), horizon)
            curves.append(np.nanmean(c, axis=0))
            per_stream.append(examples_to_fraction(c, 0.9, final, s.per_class))
            per_class += [examples_to_fraction(row, 0.9, final, s.per_class) for row in c]
        curve = np.nanmean(np.array(curves), axis=0)
        reached = [v for v in per_stream if math.isfinite(v)]
        within = float(np.mean([math.isfinite(v) and v <= 5 for v in per_class])) if per_class else math.nan
        one = [float(np.mean(reached)) if reached else math.nan, math.nan]
        summary["new_classes"] = {
            "accuracy_by_examples": [float(v) for v in curve],
            "final_accuracy": float(np.nanmean(curve[-final:])),
            "examples_to_90pct": list(fastadapt.mean_ci(reached)) if len(reached) > 1 else one,
            "classes_within_5_examples": within,
            "examples_to_90pct_of_mean_curve": examples_to_fraction(curve, 0.9, final),
        }
        out["learners"][name] = summary
    main = out["learners"]["ProtoNet, running prototypes"]["new_classes"]
    criterion = "new classes reach 90 % of their final accuracy within 5 labelled examples (mean curve)"
    out["criterion"] = {criterion: bool(main["examples_to_90pct_of_mean_curve"] <= 5)}
    return out, first


def record(study: Study, cells: dict) -> dict:
    opts = study.options
    print("sinusoid streams", flush=True)
    sinusoid, sinusoid_runs = sinusoid_study(cells, opts)
    print("Omniglot streams", flush=True)
    omniglot, omniglot_runs = omniglot_study(cells, opts)
    save_runs({"sinusoid": sinusoid_runs, "omniglot": omniglot_runs}, study.out / STREAMS_FILE)
    training = {
        k: {"preset": c["preset"], "steps": c["steps"], "minutes": c["train_minutes"]} for k, c in cells.items()
    }
    return {
        "command": f"fastadapt study {study.file}",
        "training": training,
        "sinusoid": sinusoid,
        "omniglot": omniglot,
    }


def plot(results: dict, study: Study) -> list[Path]:
    runs = json.loads((study.out / STREAMS_FILE).read_text())
    first = {k: {name: OnlineRun.from_dict(r) for name, r in v.items()} for k, v in runs.items()}
    out = study.out
    title = "sinusoid stream 0: probe MSE before each update (grey: change points)"
    return [
        plot_stream(first["sinusoid"], out / "sinusoid_stream.png", title=title),
        plot_recovery(
            results["sinusoid"]["learners"],
            out / "sinusoid_recovery.png",
            title="after an abrupt switch (mean over streams, 95 % CI)",
        ),  # fmt: skip
        plot_stream(first["omniglot"], out / "omniglot_stream.png", title="Omniglot stream 0: probe error", smooth=3),
        plot_new_classes(results["omniglot"]["learners"], out / "omniglot_new_classes.png"),
    ]
