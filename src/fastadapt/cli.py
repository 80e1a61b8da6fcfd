"""The ``fastadapt`` command.

    fastadapt train PRESET|FILE [key=value ...]   train (resumes when the run folder has a checkpoint)
    fastadapt eval RUN_DIR [key=value ...]        test a trained run (writes RUN_DIR/evals/<setting>.json)
    fastadapt list                                algorithms, models, task sources, presets
    fastadapt plot RUN_DIR                        learning curves (PNG)
    fastadapt report RUN_DIR...                   a Markdown table comparing runs
    fastadapt sample [key=value ...]              sample episodes and save a picture of them

Errors a user can fix print one line and exit with status 2. The command (not the library) applies
the process settings of :mod:`fastadapt.process` when ``run.keep_freed_memory`` is true.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastadapt.errors import FastAdaptError


def _apply_process_settings(cfg) -> str:
    """What the command line (not the library) sets for the whole process; returned in words."""
    from fastadapt.process import keep_freed_memory

    if cfg.run.keep_freed_memory and keep_freed_memory():
        return "glibc keeps freed memory for reuse (run.keep_freed_memory=false to leave the allocator alone)"
    return ""


def _cmd_train(args: argparse.Namespace) -> int:
    from fastadapt import distributed
    from fastadapt.config import load_config
    from fastadapt.engine.loop import train

    cfg = load_config(args.config, args.overrides)
    main = distributed.is_main()  # under torchrun only rank 0 prints
    note = _apply_process_settings(cfg)
    if main:
        print(f"run folder: {cfg.out_dir}" + (f" ({distributed.env_world_size()} processes)" if distributed.env_world_size() > 1 else "")
              + (f"; {note}" if note else ""))
    result = train(cfg, resume=not args.restart)
    if result.interrupted:
        if main:
            print(f"interrupted at step {result.steps}; checkpoint saved in {cfg.out_dir}/checkpoint.pt; run the same command to resume")
        return 130
    if main:
        for key, res in result.tests.items():
            print(f"test {key}: {res.summary()}")
        print(f"trained {result.steps} steps in {result.train_seconds / 60:.1f} min; results in {cfg.out_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fastadapt import distributed
    from fastadapt.eval.tests import evaluate_run
    from fastadapt.run_folder import RunFolder

    cfg = RunFolder(args.run_dir).read_config(args.overrides)
    _apply_process_settings(cfg)
    results = evaluate_run(args.run_dir, args.overrides, progress=cfg.run.progress)
    if distributed.is_main():
        for key, (res, file) in results.items():
            print(f"test {key}: {res.summary()} -> {file}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from fastadapt.config import preset_names
    from fastadapt.data import SPLITS
    from fastadapt.registry import ALGORITHMS, MODELS, TASK_SOURCES

    for title, registry in (("algorithms", ALGORITHMS), ("models", MODELS), ("task sources (data.dataset)", TASK_SOURCES)):
        have = set(registry.available())
        print(f"{title}:")
        for name in registry.names():
            entry = registry.entry(name)
            flag = "" if name in have else "  (not in this version)"
            print(f"  {name:<10} {entry.description}{flag}")
    print("omniglot parts:")
    for split, parts in SPLITS.items():
        print(f"  split={split}: {', '.join(parts)}")
    print("presets:")
    for name in preset_names():
        print(f"  {name}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fastadapt.report import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fastadapt.report import markdown_report

    text = markdown_report(args.run_dirs)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from fastadapt.build import task_sources
    from fastadapt.config import load_config
    from fastadapt.report import save_episode_grid

    cfg = load_config(args.config, args.overrides)
    batch = task_sources(cfg).train.sample_tasks(0, 0, args.tasks)
    print(f"sampled {len(batch)} tasks: support_x {tuple(batch.support_x.shape)}, query_x {tuple(batch.query_x.shape)}, "
          f"classes of task 0: {batch.classes[0].tolist() if batch.classes is not None else 'regression'}")
    if args.out:
        print(f"wrote {save_episode_grid(batch, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastadapt", description="Meta-learning on PyTorch: train, evaluate and compare few-shot learners.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a preset or TOML config; resumes from the run folder's checkpoint")
    t.add_argument("config", help="preset name (see `fastadapt list`) or path to a .toml file")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.ways=20 optim.steps=100")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    t.set_defaults(fn=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained run on fixed test episodes; writes RUN_DIR/evals/<setting>.json")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="e.g. data.test_shots=5 eval.test_episodes=600")
    e.set_defaults(fn=_cmd_eval)
    sub.add_parser("list", help="algorithms, models, task sources and presets").set_defaults(fn=_cmd_list)
    pl = sub.add_parser("plot", help="learning curves of a run as PNG")
    pl.add_argument("run_dir")
    pl.set_defaults(fn=_cmd_plot)
    r = sub.add_parser("report", help="Markdown table comparing runs")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="write the table to this file")
    r.set_defaults(fn=_cmd_report)
    s = sub.add_parser("sample", help="sample episodes from a preset's data and save a picture")
    s.add_argument("config", nargs="?", default="protonet-quick")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--tasks", type=int, default=4)
    s.add_argument("--out", default="episodes.png", help="PNG path ('' to skip the picture)")
    s.set_defaults(fn=_cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except FastAdaptError as e:
        print(f"fastadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
