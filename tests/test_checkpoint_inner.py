"""``algorithm.checkpoint_inner``: the inner steps recomputed in the backward pass give the stored path's
meta-gradient (float64, 1e-12) and keep fewer bytes for the backward pass."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadapt.algorithms import checkpointed, inner
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protomaml import ProtoMAML
from fastadapt.config import load_config
from helpers import assert_same_grads, conv4, grads, images

BUILDERS = {
    "maml-second-order": lambda m, c: MAML(m, inner_lr=0.1, inner_steps=3, checkpoint_inner=c),
    "maml-first-order": lambda m, c: FOMAML(m, inner_lr=0.1, inner_steps=3, checkpoint_inner=c),
    "maml++-lslr-msl": lambda m, c: MAML(
        m, inner_lr=0.1, inner_steps=3, learn_inner_lr=True, multi_step_loss=True, checkpoint_inner=c
    ),
    "metasgd": lambda m, c: MetaSGD(m, init_lr=0.1, inner_steps=3, checkpoint_inner=c),
    "protomaml": lambda m, c: ProtoMAML(m, inner_lr=0.1, inner_steps=3, checkpoint_inner=c),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_checkpointed_inner_loop_gives_the_stored_meta_gradient(name):
    """3 inner steps on 2 random float64 tasks, Conv4 with BatchNorm (perturbed affine): every parameter's gradient
    (learnt rates too) equal to 1e-12 of the largest, the loss bit for bit close."""
    out = None if name == "protomaml" else 5
    stored = BUILDERS[name](conv4(out=out), False)
    recomputed = BUILDERS[name](copy.deepcopy(stored.model), True)
    recomputed.load_state_dict(stored.state_dict())
    batch = images(3, tasks=2)
    losses = []
    for algo in (stored, recomputed):
        out_ = algo.meta_loss(batch)
        out_.loss.backward()
        losses.append(float(out_.loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-13)
    assert_same_grads(grads(stored), grads(recomputed), tol=1e-12)


@pytest.mark.parametrize(("optimizer", "first_order"), [("sgd", False), ("sgd", True), ("adam", True)])
def test_checkpointed_inner_loop_with_kept_steps_and_adam_equals_the_stored_one(optimizer, first_order):
    """The inner loop itself, with a kept intermediate step, and with Adam (its moments carried through the
    checkpoints; first order: through Adam's sqrt at a zero second moment the second-order gradient is NaN on
    both paths). The recomputing loop is called directly: ``checkpoint_inner`` leaves first-order steps stored."""
    model = conv4()
    batch = images(4, tasks=1)
    sx, sy = batch.support_x[0], batch.support_y[0]
    params = inner.trainable_params(model)
    rates = inner.constant_rates(list(params), 0.05, 3)

    def loss_of(p):
        return torch.nn.functional.cross_entropy(inner.call(model, p, sx), sy)

    results = []
    for checkpoint in (False, True):
        model.zero_grad(set_to_none=True)
        loop = checkpointed.inner_loop if checkpoint else inner.inner_loop  # first order too (the flag skips it)
        kept = loop(loss_of, params, rates, first_order, optimizer, keep=(1,))
        (loss_of(kept[3]) + loss_of(kept[1])).backward()
        results.append(grads(model))
    assert all(torch.isfinite(g).all() for g in results[0].values())
    assert_same_grads(results[0], results[1], tol=1e-12)


BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "inner_memory.py"


def peak_growth(steps: int, checkpoint: bool) -> float:
    """MB the meta-gradient adds to a fresh process's peak resident memory (``benchmarks/inner_memory.py --one``:
    Conv4-32, one 5-way 1-shot task with 5 queries a class, second order)."""
    cmd = [sys.executable, str(BENCHMARK), "--one", str(steps), str(int(checkpoint))]
    cmd += ["--tasks", "1", "--hidden", "32", "--queries", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


def test_recomputed_inner_steps_bound_the_peak_memory():
    """60 second-order steps: the stored path's peak grows with every step's support graph; the recomputed one holds
    the fast weights of each step and one step's graph. Measured 316 MB stored against 80-83 MB recomputed (up to
    137 MB for 30 steps in one run: the first call's one-off allocations vary), and 5 stored steps 131 MB; the bounds
    fail if the recomputation stops freeing the steps' graphs."""
    stored, recomputed, short = peak_growth(60, False), peak_growth(60, True), peak_growth(5, False)
    assert recomputed < 0.5 * stored, (recomputed, stored)
    assert recomputed < 2 * short, (recomputed, short)


def test_checkpoint_inner_is_an_algorithm_option_and_off_by_default():
    cfg = load_config("maml-omniglot-5w1s", ["algorithm.checkpoint_inner=true"])
    assert cfg.algorithm_options["checkpoint_inner"] is True
    assert MAML(conv4()).checkpoint_inner is False
