"""``fastadapt analyze RUN|PRESET``: the theory measured on a run or a config's initial model
(:mod:`fastadapt.analysis`); the parser and the command, with the analysis imported on use (no torch at import)."""

from __future__ import annotations

import argparse


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``analyze`` to the ``fastadapt`` command's subparsers."""
    an = sub.add_parser(
        "analyze",
        help="measure the theory on a run or a config's initial model: the meta-gradient's terms and their Taylor "
        "predictions, the Hessian's top eigenvalue, the first-order error and its bound; for an embedding method "
        "(ProtoNets) the episode loss's curvature and the task gradients' alignment (RUN/analysis/)",
    )
    an.add_argument("source", help="a run folder, a preset name or a .toml file (then: the model at initialization)")
    an.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.shots=5")
    an.add_argument(
        "--step-sizes",
        type=float,
        nargs="+",
        help="inner step sizes a to sweep (default: 1e-4 to 1e-2 divided by the Hessian's top |eigenvalue|)",
    )
    an.add_argument("--tasks", type=int, default=8, help="training tasks to average over (>= 2; default 8)")
    an.add_argument(
        "--k", type=int, default=2, help="mini-batches per task, MAML's k - 1 inner steps (>= 2; default 2)"
    )
    an.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    an.add_argument("--seed", type=int, default=0, help="which training tasks and mini-batches (default 0)")
    an.add_argument("--out", help="the folder for analysis.json and analysis.png (default RUN_DIR/analysis)")
    an.set_defaults(fn=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """Run the analysis of ``args``; print its main numbers and the files it wrote."""
    from fastadapt.analysis.runner import analyze, describe

    record, paths = analyze(
        args.source, args.overrides, args.step_sizes, args.tasks, args.k, args.dtype, args.seed, args.out
    )
    print(describe(record))
    for path in paths:
        print(f"wrote {path}")
    return 0
