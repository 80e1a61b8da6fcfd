"""The ``fastadapt`` command: :func:`build_parser` names the subcommands, :func:`main` runs one.

Exit status: 0 done; 2 a usage, config, data or file error (one line on stderr); 130 interrupted (Ctrl-C, SIGINT)
and 143 terminated (SIGTERM): a training saves its checkpoint first, an evaluation writes nothing. Anything else is
a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import typing
from pathlib import Path

from fastadapt.core.cancel import signal_name, terminate_raises
from fastadapt.core.errors import ConfigError, FastAdaptError

MEMORY_FIX = (
    "lower data.meta_batch, data.ways, data.image_size or eval.batch (fastadapt train ... --dry-run shows the estimate)"
)


def _cmd_train(args: argparse.Namespace) -> int:
    from fastadapt.training.commands import train_command

    return train_command(args.config, args.overrides, restart=args.restart, check_only=args.dry_run, force=args.force)


def _cmd_config(args: argparse.Namespace) -> int:
    from fastadapt.config import load_config, to_toml

    cfg = load_config(args.config, args.overrides)
    command = " ".join(["fastadapt config", args.config, *args.overrides])
    print(
        to_toml(cfg, f"{command}\nSave it (fastadapt config ... > my.toml), edit it, then: fastadapt train my.toml"),
        end="",
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fastadapt.training.commands import eval_command

    return eval_command(args.run_dir, args.overrides)


def _cmd_list(args: argparse.Namespace) -> int:
    from fastadapt.config.toml import catalogue

    print(catalogue(), end="")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fastadapt.apps.tuning import is_tune_folder, plot_study
    from fastadapt.report import plot_run
    from fastadapt.report.streams import is_streams_record, plot_stream_record

    draw = (
        plot_study
        if is_tune_folder(args.run_dir)
        else plot_stream_record
        if is_streams_record(args.run_dir)
        else plot_run
    )
    for path in draw(args.run_dir):
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
    from fastadapt.config import load_config
    from fastadapt.config.build import task_sources
    from fastadapt.report import save_episode_grid

    if not 1 <= args.tasks <= 1000:
        raise ConfigError(f"--tasks={args.tasks} is invalid; sample 1 to 1000 tasks")
    cfg = load_config(args.config, args.overrides)
    batch = task_sources(cfg).train.sample_tasks(0, 0, args.tasks)
    print(
        f"sampled {len(batch)} tasks: support_x {tuple(batch.support_x.shape)}, query_x {tuple(batch.query_x.shape)}, "
        f"classes of task 0: {batch.classes[0].tolist() if batch.classes is not None else 'regression'}"
    )
    if args.out:
        print(f"wrote {save_episode_grid(batch, args.out)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fastadapt.runs.export import export_run

    for path in export_run(args.run_dir, args.out, args.format):
        print(f"wrote {path}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from fastadapt.apps.tuning import tune

    res = tune(
        args.config, args.overrides, args.dir, args.space, args.trials, args.minutes, args.storage, args.heartbeat
    )
    score = (
        "none finished"
        if res.best_value is None
        else (f"{res.metric} {res.best_value if res.metric == 'acc' else -res.best_value:.6g} with {res.best_params}")
    )
    print(f"study {res.folder}: {res.finished} finished, {res.pruned} pruned, {res.failed} failed; best: {score}")
    if res.best_file is not None:
        print(f"wrote {res.best_file} (fastadapt train {res.best_file}); fastadapt plot {res.folder} draws the study")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from fastadapt.apps.explain import explain_command

    png, js = explain_command(
        args.run_dir,
        args.overrides,
        args.episode,
        args.support,
        args.query,
        args.queries,
        args.attribution,
        args.out,
        args.invert,
    )
    print(f"wrote {png}\nwrote {js}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fastadapt.apps.serve import serve_command

    return serve_command(args.run_dir, args.host, args.port, args.dir, args.pool, args.invert, args.allow_remote)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (a :class:`ConfigError`: exit 2) instead of the usage text."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.prog}: {message}; see {self.prog} --help")


class _Version(argparse.Action):
    """``--version``: fastadapt's, torch's and Python's versions (torch is imported only here, not at start-up)."""

    def __init__(
        self,
        option_strings,
        dest=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
        help="print the fastadapt, torch and Python versions and exit",
    ):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import platform

        import torch

        from fastadapt.core.version import __version__

        print(f"fastadapt {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        parser.exit(0)


INVERT: dict[str, typing.Any] = {"default": "auto", "choices": ["auto", "never", "always"]}  # explain, serve
TRAIN_EPILOG = """\
A config has the sections [data], [model], [algorithm], [optim], [eval] and [run]; override any key as
section.key=value (data.ways=20 algorithm.inner_lr=0.1 run.device=cpu). To see every key of a preset, its
value and what it means, as a TOML file to save and edit: fastadapt config PRESET > my.toml

exit status: 0 done, 2 usage/config/data/file error, 130 interrupted (Ctrl-C) or 143 terminated (SIGTERM):
the checkpoint of the last completed step is saved first (a partial validation or test is dropped); the same
command resumes
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``fastadapt`` command.

    Its subcommands::

        fastadapt train PRESET|FILE [key=value ...]    train (resumes from the run folder's checkpoint;
                                                       --dry-run: check)
        fastadapt config PRESET|FILE [key=value ...]   the resolved config as TOML: every key, its value, its comment
        fastadapt eval RUN_DIR [key=value ...]         test a trained run (writes RUN_DIR/evals/<setting>.json)
        fastadapt list                                 algorithms, models, task sources, presets
        fastadapt plot RUN_DIR                         learning curves (PNG); a tune folder: the study (objective,
                                                       importance); a record of online runs (streams.json): the
                                                       stream plot
        fastadapt tune PRESET|FILE [key=value ...]     hyperparameter search with Optuna (resumes from
                                                       TUNEDIR/study.db)
        fastadapt report RUN_DIR...                    a Markdown table comparing runs
        fastadapt study FILE                           a study file: presets x overrides x evaluations (resumable)
        fastadapt sample [key=value ...]               sample episodes and save a picture of them
        fastadapt export RUN_DIR [--format F] [--out DIR]
                                                       the trained weights + config.json (load_run reads it)
        fastadapt explain RUN_DIR [--episode N | --support DIR --query FILE]
                                                       why a run predicts what (PNG + JSON)
        fastadapt serve RUN_DIR [--port P]             a local web app: teach the run new classes with a person
                                                       in the loop
        fastadapt analyze RUN_DIR|PRESET [key=value ...] [--step-sizes A ...] [--tasks N] [--k K]
                                                       the meta-gradient's terms, Taylor predictions, curvature
                                                       and first-order error over step sizes (JSON + PNG)
        fastadapt --version                            fastadapt, torch and Python versions
        python -m fastadapt ...                        the same command
    """
    p = _Parser(
        prog="fastadapt",
        description="Meta-learning on PyTorch: train, evaluate and compare few-shot learners.",
        epilog="exit status: 0 done, 2 usage/config/data/file error, 130 interrupted (Ctrl-C), 143 terminated",
    )
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a preset or TOML config; resumes from the run folder's checkpoint",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="preset name (see `fastadapt list`) or path to a .toml file")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.ways=20 optim.steps=100")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, build the data, model and algorithm, estimate the memory; train nothing, write nothing",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="train a plan estimated far beyond its training (validation and test over 10x the training and 5 min, "
        "or over a week in all), which is otherwise refused",
    )
    t.set_defaults(fn=_cmd_train)
    c = sub.add_parser(
        "config", help="print a preset's or file's resolved config as TOML: every key, its value and its comment"
    )
    c.add_argument("config", help="preset name (see `fastadapt list`) or path to a .toml file")
    c.add_argument("overrides", nargs="*", help="section.key=value, applied before printing")
    c.set_defaults(fn=_cmd_config)
    e = sub.add_parser(
        "eval", help="evaluate a trained run on fixed test episodes; writes RUN_DIR/evals/<setting>.json"
    )
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="e.g. data.test_shots=5 eval.test_episodes=600")
    e.set_defaults(fn=_cmd_eval)
    sub.add_parser("list", help="algorithms, models, task sources and presets").set_defaults(fn=_cmd_list)
    pl = sub.add_parser(
        "plot", help="PNG: a run's learning curves, a tune folder's study, or a record of online runs (streams.json)"
    )
    pl.add_argument("run_dir")
    pl.set_defaults(fn=_cmd_plot)
    tu = sub.add_parser(
        "tune", help="hyperparameter search with Optuna (TPE, pruning on the validation curve); resumable"
    )
    tu.add_argument("config", help="preset name or .toml file; its [tune] section (if any) holds ranges and the budget")
    tu.add_argument("overrides", nargs="*", help="section.key=value applied to every trial, e.g. optim.steps=2000")
    tu.add_argument(
        "--space",
        action="append",
        default=[],
        help='a range, e.g. "optim.lr={ low = 1e-4, high = 1e-2, log = true }" '
        'or "algorithm.inner_steps=[1, 3, 5]" (repeatable; wins over [tune])',
    )
    tu.add_argument(
        "--trials", type=int, help="trials in all, finished ones included (default: [tune] trials, else 20)"
    )
    tu.add_argument(
        "--minutes",
        type=float,
        help="stop starting trials after this many minutes (default: [tune] minutes, else none)",
    )
    tu.add_argument(
        "--dir", help="the tune folder (default runs/tune-<run.name>): study.db, tune.json, trials/, best.toml"
    )
    from fastadapt.apps.storage import add_arguments  # --storage URL (default TUNEDIR/study.db), --heartbeat

    add_arguments(tu, "trials")
    tu.set_defaults(fn=_cmd_tune)
    r = sub.add_parser("report", help="Markdown table comparing runs")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="write the table to this file")
    r.set_defaults(fn=_cmd_report)
    from fastadapt.apps.study import add_study_parser  # fastadapt study FILE (no torch at import)

    add_study_parser(sub)
    s = sub.add_parser("sample", help="sample episodes from a preset's data and save a picture")
    s.add_argument("config", nargs="?", default="protonet-quick")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--tasks", type=int, default=4)
    s.add_argument("--out", default="episodes.png", help="PNG path ('' to skip the picture)")
    s.set_defaults(fn=_cmd_sample)
    ex = sub.add_parser(
        "export",
        help="write a run's trained weights (safetensors or torch) and its config.json to a folder "
        "that fastadapt.load_run reads",
    )
    ex.add_argument("run_dir")
    ex.add_argument("--format", default="safetensors", choices=["safetensors", "torch"])
    ex.add_argument("--out", help="the export folder (default RUN_DIR/export)")
    ex.set_defaults(fn=_cmd_export)
    x = sub.add_parser(
        "explain",
        help="explain a run's predictions on one task: distances, attention, layer changes, gates, "
        "memory or input attributions (PNG + JSON)",
    )
    x.add_argument("run_dir")
    x.add_argument("overrides", nargs="*", help="section.key=value applied to the run's config, e.g. data.test_shots=5")
    x.add_argument("--episode", type=int, help="explain test episode N of the run (default 0)")
    x.add_argument("--support", help="your own support set: a folder with one subfolder of PNG/JPEG images per class")
    x.add_argument("--query", help="with --support: a query image (or a folder of them)")
    x.add_argument("--queries", type=int, default=5, help="queries of the episode to explain (one per class first)")
    x.add_argument("--attribution", default="auto", choices=["auto", "integrated_gradients", "gradient", "none"])
    x.add_argument("--invert", **INVERT, help="make your images bright ink on dark (auto: invert mostly light images)")
    x.add_argument(
        "--out", help="path stem of the files (default: <run>-episode<N> in this folder): STEM.png and STEM.json"
    )
    x.set_defaults(fn=_cmd_explain)
    sv = sub.add_parser(
        "serve", help="a local web app to teach the run new classes by drawing, with uncertainty sampling"
    )
    sv.add_argument("run_dir")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--dir", help="the app's folder: its SQLite state (default RUN_DIR/app)")
    sv.add_argument(
        "--pool",
        default="omniglot",
        help="unlabelled examples to propose: 'omniglot' (test characters) or a folder <pool>/<class>/<image>",
    )
    sv.add_argument("--invert", **INVERT, help="uploads: make them bright ink on dark")
    sv.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than 127.0.0.1/localhost; other machines need the token printed at start",
    )
    sv.set_defaults(fn=_cmd_serve)
    from fastadapt.apps.analyze import add_analyze_parser  # fastadapt analyze RUN|PRESET (no torch at import)

    add_analyze_parser(sub)
    return p


def _os_error(e: OSError) -> str:
    """An OS error in one line: the path, the cause, the fix."""
    path = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    cause = os.strerror(e.errno).lower() if e.errno else (e.strerror or type(e).__name__).lower()
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {path} ({cause}); free space there or choose another run.out"
    if e.errno == errno.EROFS:
        return f"{path} is on a read-only file system; choose another run.out (a writable folder)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}; check its permissions (and its folder's) or choose another run.out"
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return f"{path}: {cause}; a file is where a folder should be (or the other way round): choose another run.out"
    if e.errno == errno.ENAMETOOLONG:
        return f"{path}: {cause}; choose a shorter run.out"
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return f"{cause} while opening {path}; raise the limit (ulimit -n) or lower eval.batch"
    return f"{path}: {cause}; check the path, the disk and run.out"


def _out_of_memory(e: BaseException) -> str | None:
    """The reason in a few words when ``e`` is running out of memory (Python's, torch's CPU or CUDA allocator)."""
    if isinstance(e, MemoryError):
        return str(e) or "Python could not allocate"
    if not isinstance(e, RuntimeError):
        return None
    text = " ".join(str(e).split())
    if type(e).__name__ != "OutOfMemoryError" and not any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory")
    ):
        return None
    if "] " in text and text.startswith("["):  # "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: ..."
        text = text.split("] ", 1)[1]
    return text.split(". ")[0][:160] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``fastadapt`` command on ``argv`` (default: ``sys.argv[1:]``); the exit status.

    Every failure a user or the machine can cause prints one line, ``fastadapt: error: <cause>; <fix>``,
    and exits with status 2: a bad config or input (:class:`~fastadapt.core.errors.FastAdaptError`), a file
    system error (no space, read-only, permission), running out of memory. An interrupt exits with 128 + the
    signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM (:class:`~fastadapt.core.cancel.Interrupted` says which).
    ``FASTADAPT_DEBUG=1`` raises instead, with the traceback; any other exception is a bug and keeps its
    traceback. The command (not the library) applies the process settings of
    :mod:`fastadapt.runtime.allocator` when ``run.keep_freed_memory`` is true.
    """
    debug = os.environ.get("FASTADAPT_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        with terminate_raises():  # SIGTERM stops any phase as Ctrl-C does (exit 143); a training saves first
            return int(args.fn(args) or 0)
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = getattr(e, "signum", signal.SIGINT)  # fastadapt.core.cancel.Interrupted says which; Ctrl-C: SIGINT
        print(f"fastadapt: interrupted ({signal_name(signum)})", file=sys.stderr)
        return 128 + signum
    except FastAdaptError as e:
        if debug:
            raise
        print(f"fastadapt: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            raise
        print(f"fastadapt: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        reason = _out_of_memory(e)
        if debug or reason is None:
            raise
        print(f"fastadapt: error: out of memory ({reason}); {MEMORY_FIX}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
