"""Hyperparameters from few samples (docs/HYPERPARAMETERS.md): fixed settings vs support-set selection vs ALFA vs
Meta-SGD on the same fixed episodes, and one `fastadapt tune` study against its preset's default.

    python scripts/results_hyper.py --minutes 20 --out results/hyper           # the results (hours of CPU: see the doc)
    python scripts/results_hyper.py --smoke                                       # < 1 minute: every path, tiny sizes

Part 1, for Omniglot 5-way 1-shot and the sinusoid (5-shot tests; 10 points at training): trains MAML, Meta-SGD,
ALFA and ALFA + random init (presets ``maml-*``, ``metasgd-*``, ``alfa-*``; each capped at ``--minutes`` of
training, resumable), then scores every run on the same fixed test episodes (``eval.seed``) with its fixed
settings and, for every run, with ``eval.select=support_cv``; measures the seconds each costs per task
(wall time of ``predict`` over the episodes / episodes, one thread). Part 2: ``fastadapt tune maml-sinusoid`` for
``--tune-minutes`` (trials capped at ``--trial-minutes`` each), then trains the best config and the preset's
default for the same ``--minutes`` and tests both on the same episodes.
Writes ``hyper.json`` and ``hyper.md`` under ``--out`` (runs under ``--out``/runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import task_sources
from fastadapt.eval import evaluate
from fastadapt.eval.stats import mean_ci
from fastadapt.runs.folder import RunFolder
from fastadapt.training.loop import TrainingDiverged
from fastadapt.training.testing import evaluated

DOMAINS = {
    "omniglot-5w1s": {"MAML": "maml-omniglot-5w1s", "Meta-SGD": "metasgd-omniglot-5w1s", "ALFA": "alfa-omniglot-5w1s",
                      "ALFA + random init": "alfa-omniglot-5w1s"},
    "sinusoid-5shot": {"MAML": "maml-sinusoid", "Meta-SGD": "metasgd-sinusoid", "ALFA": "alfa-sinusoid",
                       "ALFA + random init": "alfa-sinusoid"},
}
SMOKE = {  # every path at tiny sizes
    "omniglot-5w1s": ["optim.steps=2", "data.meta_batch=2", "model.hidden=8", "data.queries=2", "data.test_queries=2",
                      "eval.val_every=0", "run.checkpoint_every=1000"],
    "sinusoid-5shot": ["optim.steps=3", "data.meta_batch=4", "eval.val_every=0", "run.checkpoint_every=1000"],
}


def overrides_for(domain: str, label: str, out: Path, minutes: float, smoke: bool) -> list[str]:
    o = [f"run.out={json.dumps(str(out / 'runs' / domain / label.replace(' ', '').replace('+', '-')))}", "run.progress=false",
         f"optim.max_minutes={minutes}", "eval.test_episodes=0"]
    if label == "ALFA + random init":
        o.append("algorithm.random_init=true")
    return o + (SMOKE[domain] if smoke else [])


def test_overrides(domain: str, episodes: int) -> list[str]:
    o = [f"eval.test_episodes={episodes}", f"eval.batch={min(episodes, 50)}"]
    if domain.startswith("sinusoid"):
        o += ["data.test_shots=5", "eval.test_settings=[]"]
    return o


def score(run_dir: Path, overrides: list[str]) -> dict:
    """Mean, 95% CI and seconds per task of the run on its fixed test episodes with ``overrides``."""
    run = fastadapt.load_run(run_dir, overrides)
    cfg = run.config
    shapes = run.provenance.get("task_shapes") or {}
    sources = task_sources(cfg, tests_only=True, input_shape=tuple(shapes["support_x"][1:]) if shapes.get("support_x") else None)
    (key, sampler), = list(sources.tests.items())[:1]
    episodes = list(sampler.fixed(cfg.eval.test_episodes, cfg.eval.batch))
    model = evaluated(cfg, run.algorithm)
    t0 = time.perf_counter()
    res = evaluate(model, episodes, cfg.eval.level)
    seconds = time.perf_counter() - t0
    return {"setting": key, "metric": res.metric, "mean": res.mean, "ci": res.ci, "episodes": res.episodes,
            "seconds_per_task": seconds / res.episodes, "eval_seed": cfg.eval.seed, "overrides": overrides, "scores": list(res.scores)}


def paired(default: list[float], tuned: list[float]) -> dict:
    """Tuned minus default on the same episodes: mean difference with its 95% CI, medians, share of episodes tuned wins."""
    a, b = np.asarray(default, dtype=float), np.asarray(tuned, dtype=float)
    mean, ci = mean_ci(b - a)
    return {"mean": mean, "ci": ci, "median_default": float(np.median(a)), "median_tuned": float(np.median(b)),
            "tuned_lower": float((b < a).mean()), "worst_default": float(a.max()), "worst_tuned": float(b.max()), "episodes": int(a.size)}


def last_step(run_dir: Path) -> int:
    """The last meta-step the run logged (``metrics.jsonl``)."""
    return max((int(r.get("step", 0)) for r in RunFolder(run_dir).read_metrics()), default=0)


def run_minutes(run_dir: Path) -> float:
    """The run's own training minutes, over all its resumptions (the last logged ``time``)."""
    return max((float(r.get("time", 0.0)) for r in RunFolder(run_dir).read_metrics()), default=0.0) / 60


def fmt(r: dict) -> str:
    if r["metric"] == "acc":
        return f"{100 * r['mean']:.2f} +- {100 * r['ci']:.2f} %"
    return f"{r['mean']:.4f} +- {r['ci']:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per run (optim.max_minutes)")
    p.add_argument("--episodes", type=int, default=600, help="fixed test episodes per row")
    p.add_argument("--tune-minutes", type=float, default=60.0, help="the study's budget")
    p.add_argument("--trial-minutes", type=float, default=3.0, help="each trial's training budget")
    p.add_argument("--out", type=Path, default=None, help="default results/hyper (--smoke: runs/hyper-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every path, < 1 minute; never writes results/")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--domains", nargs="*", default=list(DOMAINS), choices=list(DOMAINS), help="which part-1 tables to run")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path("runs/hyper-smoke" if args.smoke else "results/hyper")
    episodes = 4 if args.smoke else args.episodes
    minutes = 0.2 if args.smoke else args.minutes
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for domain, presets in DOMAINS.items():
        if domain not in args.domains:
            continue
        for label, preset in presets.items():
            o = overrides_for(domain, label, out, minutes, args.smoke)
            cfg = load_config(preset, o)
            diverged = None
            try:
                fastadapt.train(cfg)
            except TrainingDiverged as e:  # recorded; the run is scored from its last good checkpoint
                diverged = str(e)
                print(f"{domain} {label}: {e}", flush=True)
            train_min = run_minutes(cfg.out_dir)  # the run's own minutes (a resumed run counts its earlier ones)
            folder = RunFolder(cfg.out_dir)
            if not (folder.best_file.is_file() or folder.checkpoint_file.is_file()):  # diverged before its first checkpoint
                rows.append({"domain": domain, "method": label, "select": "-", "preset": preset, "train_minutes": train_min,
                             "diverged": diverged, "steps": last_step(cfg.out_dir), "metric": None, "episodes": 0})
                continue
            for select in ("fixed", "support_cv"):
                sel = [f"eval.select={select}"] + (["eval.select_steps=[1, 3]", "eval.select_lr_scales=[1.0, 2.0]"] if args.smoke else [])
                r = score(cfg.out_dir, test_overrides(domain, episodes) + sel)
                rows.append({"domain": domain, "method": label, "select": select, "preset": preset, "train_minutes": train_min,
                             "diverged": diverged, "steps": last_step(cfg.out_dir), **r})
                print(f"{domain:15s} {label:20s} {select:10s} {fmt(r):24s} {1000 * r['seconds_per_task']:.1f} ms/task", flush=True)
    study = None
    if not args.skip_tune:
        study = run_study(out, args, minutes, episodes)
    (out / "hyper.json").write_text(json.dumps({"rows": rows, "study": study, "smoke": args.smoke, "minutes": minutes,
                                                "torch": torch.__version__, "fastadapt": fastadapt.__version__}, indent=2) + "\n")
    (out / "hyper.md").write_text(markdown(rows, study))
    print(f"wrote {out / 'hyper.json'} and {out / 'hyper.md'}")


def run_study(out: Path, args: argparse.Namespace, minutes: float, episodes: int) -> dict:
    from fastadapt.apps.tune import tune

    folder = out / "runs" / "tune-maml-sinusoid"
    smoke = ["optim.steps=6", "eval.val_every=3", "eval.val_episodes=4", "data.meta_batch=4", "run.checkpoint_every=1000"]
    base = [f"optim.max_minutes={0.1 if args.smoke else args.trial_minutes}"] + (smoke if args.smoke else [])
    space = ['optim.lr={ low = 1e-4, high = 1e-2, log = true }', 'algorithm.inner_lr={ low = 0.001, high = 0.1, log = true }',
             "algorithm.inner_steps=[1, 2, 3, 5]"]
    res = tune("maml-sinusoid", base, folder, space, trials=2 if args.smoke else 100, minutes=0.3 if args.smoke else args.tune_minutes)
    result: dict = {"folder": str(folder), "finished": res.finished, "pruned": res.pruned, "failed": res.failed,
                    "best_value": res.best_value, "best_params": res.best_params, "space": space, "trial_overrides": base}
    if res.best_file is None:
        return result
    common = ["run.progress=false", f"optim.max_minutes={minutes}", "eval.test_episodes=0"] + (SMOKE["sinusoid-5shot"] if args.smoke else [])
    for label, config in (("default", "maml-sinusoid"), ("tuned", str(res.best_file))):
        run_out = out / "runs" / f"tune-compare-{label}"
        cfg = load_config(config, [*common, f"run.out={json.dumps(str(run_out))}"])
        fastadapt.train(cfg)
        result[label] = score(run_out, test_overrides("sinusoid-5shot", episodes))
    result["paired"] = paired(result["default"]["scores"], result["tuned"]["scores"])
    return result


def part1_table(rows: list[dict]) -> list[str]:
    """The comparison table (docs/HYPERPARAMETERS.md): one row per run and selection mode."""
    lines = ["| domain | method | inner rate and steps | score (95% CI) | episodes | ms per task | training (min) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] is None:
            lines.append(f"| {r['domain']} | {r['method']} | - | diverged after step {r['steps']}, before its first checkpoint: "
                         f"nothing to score | 0 | - | {r['train_minutes']:.1f} |")
            continue
        score = fmt(r) + ("" if r["metric"] == "acc" else " (MSE)")
        if r.get("diverged"):
            score += f" (diverged after step {r['steps']}: scored from its last good checkpoint)"
        lines.append(f"| {r['domain']} | {r['method']} | {r['select']} | {score} | {r['episodes']} | "
                     f"{1000 * r['seconds_per_task']:.3g} | {r['train_minutes']:.1f} |")
    return lines


def study_table(study: dict) -> list[str]:
    """The tuning study's summary and its best trial against the preset's default (docs/HYPERPARAMETERS.md)."""
    best = ", ".join(f"`{k} = {v:.4g}`" if isinstance(v, float) else f"`{k} = {v}`" for k, v in study["best_params"].items())
    outcome = "no trial finished" if study["best_value"] is None else f"best validation value {study['best_value']:.4f} with {best}"
    lines = [f"Study: {study['finished']} trials finished, {study['pruned']} pruned, {study['failed']} failed; {outcome}.", "",
             "| config | test MSE (95% CI) | episodes |", "|---|---|---|"]
    for label, name in (("default", "maml-sinusoid (default)"), ("tuned", "best trial (`best.toml`)")):
        if label in study:
            lines.append(f"| {name} | {fmt(study[label])} | {study[label]['episodes']} |")
    if "paired" in study:
        p = study["paired"]
        lines += ["", f"Paired over the same {p['episodes']} episodes, tuned minus default: {p['mean']:+.4f} +- {p['ci']:.4f} MSE (95% CI); "
                  f"median MSE {p['median_tuned']:.4f} tuned vs {p['median_default']:.4f} default; the tuned model is lower on "
                  f"{100 * p['tuned_lower']:.1f} % of the episodes; worst episode {p['worst_tuned']:.2f} tuned vs {p['worst_default']:.2f} default."]
    return lines


def markdown(rows: list[dict], study: dict | None) -> str:
    lines = part1_table(rows) if rows else []
    if study:
        lines += ["", *study_table(study)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
