"""What ``fastadapt train`` and ``fastadapt eval`` do once their arguments are parsed.

The command line (not the library) applies the process settings of :mod:`fastadapt.runtime.allocator`
when ``run.keep_freed_memory`` is true, and says so.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from fastadapt.config import Config
from fastadapt.core.cancel import Cancelled, signal_name
from fastadapt.core.errors import ConfigError
from fastadapt.runtime import distributed
from fastadapt.runtime.devices import check_device
from fastadapt.training.environment import StopFlag


def _apply_process_settings(cfg: Config) -> str:
    """What the command line (not the library) sets for the whole process; returned in words."""
    from fastadapt.runtime.allocator import keep_freed_memory

    if cfg.run.keep_freed_memory and keep_freed_memory():
        return "glibc keeps freed memory for reuse (run.keep_freed_memory=false to leave the allocator alone)"
    return ""


def _check_out_dir(out: Path) -> None:
    """A one-line error when the run folder, or a folder above it, is an existing file."""
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"run.out: {p} is an existing file, not a folder; choose another run.out (or run.name)")


def dry_run(cfg: Config) -> str:
    """Build what training builds (data, model, algorithm; every check, the memory estimate too), write nothing,
    and say so in one line."""
    from torch import nn

    from fastadapt.config.build import build_algorithm, probe_batch, task_sources, train_classes, train_domains
    from fastadapt.config.preflight import estimate_cost

    sources = task_sources(cfg)
    probe = probe_batch(sources, cfg)
    algo = build_algorithm(cfg, probe, num_classes=train_classes(sources), domain_sizes=train_domains(sources))
    model = getattr(algo, "model", None)
    found = estimate_cost(cfg, probe, model) if isinstance(model, nn.Module) else None
    estimate = f"; {found.summary()}" if found is not None else ""
    dataset = cfg.data.target or cfg.data.dataset
    return f"dry run: {cfg.algorithm} on {dataset} builds{estimate}; nothing written to {cfg.out_dir}"


def train_command(config: str, overrides: list[str], restart: bool = False, check_only: bool = False) -> int:
    """``fastadapt train``: the exit status (0 done; 128 + the signal when interrupted with the checkpoint saved:
    130 for SIGINT, 143 for SIGTERM)."""
    from fastadapt.config import load_config  # looked up at each call (a test interrupts it)

    cfg = load_config(config, overrides)
    check_device(cfg.run.device)
    _check_out_dir(cfg.out_dir)
    if check_only:
        print(dry_run(cfg))
        return 0
    from fastadapt.training.loop import train

    main = distributed.is_main()  # under torchrun only rank 0 prints
    note = _apply_process_settings(cfg)
    world = distributed.env_world_size()
    if main:
        print(
            f"run folder: {cfg.out_dir}"
            + (f" ({world} processes)" if world > 1 else "")
            + (f"; {note}" if note else "")
        )
    result = train(cfg, resume=not restart)
    if result.interrupted:
        signum = result.signal or signal.SIGINT  # None: another rank's signal stopped this one after a step
        if main:
            why = f" ({signal_name(result.signal)})" if result.signal else ""
            print(
                f"interrupted at step {result.steps}{why}; checkpoint saved in {cfg.out_dir}/checkpoint.pt; "
                f"run the same command to resume"
            )
        return 128 + signum
    if main:
        for key, res in result.tests.items():
            print(f"test {key}: {res.summary()}")
        print(f"trained {result.steps} steps in {result.train_seconds / 60:.1f} min; results in {cfg.out_dir}")
    return 0


def eval_command(run_dir: str, overrides: list[str]) -> int:
    """``fastadapt eval``: test the run, write ``RUN/evals/<setting>.json`` and print each result.

    SIGINT / SIGTERM stop it between two evaluation batches (:class:`~fastadapt.training.environment.StopFlag`):
    nothing is written, and the exit status is 128 + the signal (130, 143).
    """
    from fastadapt.runs import RunFolder
    from fastadapt.training.testing import evaluate_run

    cfg = RunFolder(run_dir).read_config(overrides)
    check_device(cfg.run.device)
    _apply_process_settings(cfg)
    try:
        with StopFlag():
            results = evaluate_run(run_dir, overrides, progress=cfg.run.progress)
    except Cancelled as stop:
        if distributed.is_main():
            name = signal_name(stop.signum)
            print(f"fastadapt: interrupted ({name}); no evaluation record written; rerun to evaluate", file=sys.stderr)
        return 128 + stop.signum
    if distributed.is_main():
        for key, (res, file) in results.items():
            print(f"test {key}: {res.summary()} -> {file}")
    return 0
