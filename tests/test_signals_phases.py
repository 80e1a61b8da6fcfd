"""SIGINT and SIGTERM stop the phases outside training and evaluation too (issue 33): data building and rendering,
in any command. The ``fastadapt`` command makes SIGTERM raise where the work is, as Ctrl-C does
(:func:`fastadapt.core.cancel.terminate_raises`), so ``finally`` blocks run and the exit status is 143; a rendering
that is stopped leaves no file in its cache folder (the temporary file is removed), and the same command renders
again. The phases that keep state (training, evaluation) turn the signal into a flag instead (tests/test_signals.py).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from fastadapt.core import cancel
from fastadapt.core.cancel import Cancelled, Interrupted
from fastadapt.data.domains import cache as domain_cache
from helpers import EXIT, PHASE_START_S, STOP_WITHIN_S, needs_package, signal_and_time, start_command, wait_until


def test_terminate_raises_turns_sigterm_into_an_interrupt_and_restores_the_default():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Interrupted) as got, cancel.terminate_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert got.value.signum == signal.SIGTERM and not isinstance(got.value, Cancelled)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_terminate_raises_leaves_a_handler_someone_else_installed_alone():
    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with cancel.terminate_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_interrupted_cache_write_leaves_no_file_and_the_next_build_writes_it(tmp_path, monkeypatch):
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1])

    def build():
        return images, labels, ["a", "b"]

    real = np.savez_compressed

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the bytes are written, then the signal arrives before the rename
        raise Interrupted(signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(domain_cache.np, "savez_compressed", interrupted)
        with pytest.raises(Interrupted):
            domain_cache.cached("toy", "v1", build, root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary file, no cache, no manifest
    got = domain_cache.cached("toy", "v1", build, root=tmp_path)
    assert np.array_equal(got[0], images) and sorted(p.name for p in tmp_path.iterdir()) == [
        "toy-v1.json",
        "toy-v1.npz",
    ]


@needs_package("fonts-noto-core")
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_rendering_stops_the_command_within_5_s_and_caches_nothing(sig, tmp_path):
    cache = tmp_path / "cache"
    # at 84 px the rendering takes several seconds: at 28 px it could end (about 3 s) before the signal arrived
    args = ["sample", "protonet-quick", "data.dataset=glyphs", "data.image_size=84", "data.ways=2", "data.shots=1"]
    args += ["--out", ""]
    proc = start_command(args, tmp_path / "logs", FASTADAPT_CACHE=str(cache))
    stderr = tmp_path / "logs" / "stderr"  # the bar shows after a second of rendering
    wait_until(lambda: "rendering glyphs" in stderr.read_text(), proc, tmp_path / "logs", "the rendering's bar")
    took = signal_and_time(proc, sig)
    err = (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == EXIT[sig], err[-2000:]
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the rendering"
    assert f"fastadapt: interrupted ({signal.Signals(sig).name})" in err
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_a_stop_asked_inside_a_flagged_phase_abandons_a_rendering_loop():
    """Inside a phase that turns signals into a flag (an evaluation building its source), the rendering loops ask
    :func:`fastadapt.core.cancel.check` between items and give up at once."""
    from fastadapt.data.domains import kanji

    strokes = "M10,10 L90,90"
    data = f'<svg><g id="kvg:04e00"><path d="{strokes}"/></g></svg>'.encode()
    with cancel.cancellable(lambda: signal.SIGTERM), pytest.raises(Cancelled):
        kanji.render_all([("一", data)] * 3, size=16, examples=2)


GRID = """
description = "one cell, long enough to be signalled while it trains"
out = "{out}"
runs = "{out}/runs"
overrides = ["optim.steps={steps}", "data.meta_batch=2", "model.layers=[8]", "eval.val_every=0", "eval.test_episodes=0",
  "run.checkpoint_every=50", "run.log_every=10", "run.progress=false", "run.threads=1"]
episodes = 3

[rows]
MAML = {{ preset = "maml-sinusoid", run = "cell" }}

[evals]
"1 step" = {{ test = "5shot", overrides = ["algorithm.inner_steps_eval=1"] }}
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_study_grid_within_5_s_with_the_cell_checkpointed_and_the_same_command_finishes(sig, tmp_path):
    out = tmp_path / "out"
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.format(out=out, steps=100000))
    proc = start_command(["study", str(grid)], tmp_path / "logs")
    rows = out / "runs" / "cell" / "metrics.jsonl"
    t0 = time.monotonic()
    while not (rows.exists() and rows.read_text().count("\n") >= 3):  # the cell is training
        assert proc.poll() is None, (tmp_path / "logs" / "stderr").read_text()[-2000:]
        assert time.monotonic() - t0 < PHASE_START_S, "the cell never started training"
        time.sleep(0.05)
    took = signal_and_time(proc, sig)
    err = (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == EXIT[sig], err[-2000:]  # the grid stops too: no next cell, no evaluation
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name} took {took:.2f} s to stop the study"
    assert (out / "runs" / "cell" / "checkpoint.pt").is_file() and not (out / "results.json").exists()
    grid.write_text(GRID.format(out=out, steps=30))  # the same study, shortened: it resumes the cell and ends
    proc = start_command(["study", str(grid)], tmp_path / "logs2")
    assert proc.wait(timeout=PHASE_START_S) == 0, (tmp_path / "logs2" / "stderr").read_text()[-2000:]
    assert '"1 step"' in (out / "results.json").read_text()
