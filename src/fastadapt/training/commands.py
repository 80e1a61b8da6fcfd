"""What ``fastadapt train`` and ``fastadapt eval`` do once their arguments are parsed.

The command line (not the library) applies the process settings of :mod:`fastadapt.runtime.allocator`
when ``run.keep_freed_memory`` is true, and says so.
"""

from __future__ import annotations

import copy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastadapt.config import Config
from fastadapt.config.plan import Plan, Timings, check_plan, estimate_plan
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


PROBE_AGAIN_S = 0.3  # a probed training step faster than this was a warm-up: it is timed a second time
PROBE_STEP_S = 0.8  # a step of more tasks than fit in this time is interpolated from 1 task and k that fit
PROBE_EVAL_S = 0.25  # seconds to spend on each source's timed evaluation batch (its size: 2 to eval.batch episodes)


def _timed(fn: Callable[[], Any], device: Any, again: bool = True) -> float:
    """Seconds one call of ``fn`` takes (CUDA synchronised); with ``again``, a first call under ``PROBE_AGAIN_S``
    is a warm-up (lazy initialisation, caches) and a second call is timed."""
    import torch

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    first = once()
    return once() if again and first < PROBE_AGAIN_S else first


def _validating(trainer: Any) -> bool:
    """The run validates: it has a validation source, ``eval.val_every`` and ``eval.val_episodes``."""
    e = trainer.cfg.eval
    return trainer.sources.val is not None and bool(e.val_every) and bool(e.val_episodes)


def probe_timings(trainer: Any) -> Timings:
    """Time, on a copy of ``trainer.algo`` (a :class:`~fastadapt.training.loop.Trainer` after its build), the
    sampling and meta-gradient of the first step's tasks (no optimizer step, no compilation; when they do not fit
    in ``PROBE_STEP_S``, a line through the times of 1 task and of as many as fit) and, for the validation source
    and each test source of another shape, a batch of 2 episodes (a warm-up) then batches of 2 and of as many
    episodes as fit in ``PROBE_EVAL_S`` (at most ``eval.batch``): an episode costs their difference over the extra
    episodes. The test is wrapped as testing wraps it (fine-tuning, selection, views). The copy and a
    saved-and-restored RNG state leave the run exactly as it would be without the probe (BatchNorm statistics,
    gradients, random streams). The probe lasts about 1 to 2 s, longer when one evaluation episode alone takes
    more than half a second."""
    from fastadapt.eval import evaluate
    from fastadapt.runs.checkpoint import rng_state, set_rng_state
    from fastadapt.runtime.precision import autocast
    from fastadapt.training.accumulate import meta_gradient
    from fastadapt.training.testing import evaluated

    cfg, device, sources = trainer.cfg, trainer.device, trainer.sources
    t0 = time.perf_counter()
    saved = rng_state()
    try:
        algo = copy.deepcopy(trainer.algo)

        def step(tasks: int) -> Callable[[], Any]:
            def run() -> None:
                batch = sources.train.sample_tasks(0, trainer.task_start, tasks).to(device)
                algo.train()
                algo.zero_grad(set_to_none=True)
                meta_gradient(algo, batch, cfg.optim.task_chunk, None, lambda: autocast(cfg.run.precision, device))

            return run

        measured: dict[tuple[Any, ...], float] = {}  # (wrapped?, ways, shots, queries) -> seconds an episode

        def per_episode(model: Any, source: Any) -> float:
            key = (model is algo, getattr(source, "ways", 1), source.shots, source.queries)
            if key in measured:  # validation and test episodes of the same shape, evaluated alike
                return measured[key]

            def run(n: int) -> Callable[[], Any]:
                return lambda: evaluate(model, source.fixed(n, n), cfg.eval.level, device, precision=cfg.run.precision)

            first = _timed(run(2), device, again=False)  # a warm-up, and the size of the timed batch
            n = min(cfg.eval.batch, int(PROBE_EVAL_S * 2 / max(first, 1e-6)))
            if n > 2:  # the time an episode adds to a batch (not evaluate's fixed cost, paid once a validation)
                two, more = _timed(run(2), device, again=False), _timed(run(n), device, again=False)
                measured[key] = max(more - two, 0.0) / (n - 2) or more / n
            else:
                measured[key] = first / 2
            return measured[key]

        tasks = trainer.task_count
        one = _timed(step(1), device)
        k = min(tasks, max(2, int(PROBE_STEP_S / max(one, 1e-6))))  # as many tasks as fit in PROBE_STEP_S
        k_s = _timed(step(k), device, again=False) if tasks > 1 else one
        step_s = k_s if k == tasks else one + (tasks - 1) * max(k_s - one, 0.0) / (k - 1)  # a line through 1 and k
        val_s = per_episode(algo, sources.val) if _validating(trainer) else 0.0
        tested = evaluated(cfg, algo)
        tests = tuple(per_episode(tested, s) if cfg.eval.test_episodes else 0.0 for s in sources.tests.values())
    finally:
        set_rng_state(saved)
    return Timings(step_s, val_s, tests, time.perf_counter() - t0)


def plan_check(force: bool = False, show: Callable[[str], Any] = print) -> Callable[[Any], Plan]:
    """The ``plan`` of :func:`fastadapt.train` that ``fastadapt train`` passes: probe (:func:`probe_timings`),
    estimate the whole run (:func:`fastadapt.config.plan.estimate_plan`), ``show`` its line (rank 0), and refuse a
    plan beyond the bounds of :func:`fastadapt.config.plan.plan_refusal` with a one-line
    :class:`~fastadapt.core.errors.ConfigError` unless ``force``. It runs before anything is written.

    From Python: ``fastadapt.train(cfg, plan=plan_check())``; without ``plan`` nothing is probed or refused.
    """

    def check(trainer: Any) -> Plan:
        plan = estimate_plan(trainer.cfg, probe_timings(trainer), _validating(trainer), trainer.world)
        plan = distributed.broadcast_object(plan)  # every process decides as rank 0 does
        if distributed.is_main():
            show(plan.summary())
        return check_plan(trainer.cfg, plan, force)

    return check


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


def train_command(
    config: str, overrides: list[str], restart: bool = False, check_only: bool = False, force: bool = False
) -> int:
    """``fastadapt train``: the exit status (0 done; 128 + the signal when interrupted with the checkpoint saved:
    130 for SIGINT, 143 for SIGTERM). The run's plan is costed and shown first, and refused beyond its bounds
    unless ``force`` (:func:`plan_check`)."""
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
    result = train(cfg, resume=not restart, plan=plan_check(force))
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
