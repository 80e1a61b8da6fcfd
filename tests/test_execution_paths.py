"""Execution paths against the plain per-task loop, in float64: ``execution="shared_first"`` (the first inner step
of all tasks as one computation), ``run.compile`` against eager, and every path on CUDA (skipped without one)."""

from __future__ import annotations

import os
import shutil
from functools import partial

import pytest
import torch
from torch import nn

import helpers
from fastadapt import TaskBatch
from fastadapt.algorithms import compiled, inner
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError
from fastadapt.nn import MLP, Conv4
from helpers import assert_same_grads, conv4, grads

images = partial(helpers.images, tasks=5)  # 3-way 2-shot, 2 queries, 16x16, float64


def images28() -> TaskBatch:
    """4 random 5-way 1-shot tasks of 28x28 float32 images in [0, 1], 5 queries a class (Omniglot's sizes)."""
    return images(tasks=4, ways=5, shots=1, queries=5, side=28, dtype=torch.float32, draw=torch.rand)


pytestmark = pytest.mark.usefixtures("one_thread")


def loss_and_grads(make, batch, execution: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    algo = make(execution)
    out = algo.meta_loss(batch)
    out.loss.backward()
    return out.loss.detach(), algo.predict(batch), grads(algo)


def assert_paths_equal(make, batch=None) -> None:
    batch = images() if batch is None else batch
    loss_a, pred_a, grads_a = loss_and_grads(make, batch, "loop")
    loss_b, pred_b, grads_b = loss_and_grads(make, batch, "shared_first")
    assert abs(float(loss_a - loss_b)) <= 1e-9 * abs(float(loss_a))
    assert float((pred_a - pred_b).abs().max()) <= 1e-9 * float(pred_a.abs().max())
    assert_same_grads(grads_a, grads_b)


CASES = {
    "maml_second_order_1_step": lambda ex: MAML(conv4(), inner_lr=0.3, inner_steps=1, execution=ex),
    "maml_second_order_3_steps": lambda ex: MAML(conv4(), inner_lr=0.3, inner_steps=3, execution=ex),
    "fomaml_2_steps": lambda ex: FOMAML(conv4(), inner_lr=0.3, inner_steps=2, execution=ex),
    "maml_plus_plus_msl_lslr": lambda ex: MAML(
        conv4(),
        inner_lr=0.3,
        inner_steps=3,
        multi_step_loss=True,
        learn_inner_lr=True,
        msl_anneal_steps=50,
        execution=ex,
    ),
    "metasgd_2_steps": lambda ex: MetaSGD(conv4(), init_lr=0.2, inner_steps=2, execution=ex),
    "metasgd_first_order": lambda ex: MetaSGD(conv4(), init_lr=0.2, inner_steps=1, first_order=True, execution=ex),
    "anil_second_order": lambda ex: ANIL(conv4(), inner_lr=0.3, inner_steps=2, execution=ex),
}


@pytest.mark.parametrize("case", CASES)
def test_shared_first_equals_the_per_task_loop_in_float64(case):
    """Meta-loss, predictions and meta-gradient (theta, learnt rates) equal to 1e-9, BatchNorm with per-task batch
    statistics."""
    assert_paths_equal(CASES[case])


def test_shared_first_with_batchnorm_tracking_running_statistics_in_training_mode():
    """BatchNorm layers that keep running statistics, in training mode: still per-task batch statistics, buffers
    untouched."""

    def make(ex):
        model = conv4(track_running_stats=True)
        model.train()
        return MAML(model, inner_lr=0.3, inner_steps=2, execution=ex)

    before = {k: v.clone() for k, v in make("loop").model.named_buffers()}
    assert_paths_equal(make)
    algo = make("shared_first")
    algo.meta_loss(images())
    assert all(torch.equal(before[k], v) for k, v in algo.model.named_buffers())


def test_shared_first_on_linear_layers_and_regression():
    g = torch.Generator().manual_seed(1)
    batch = TaskBatch(
        torch.randn(4, 6, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 6, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 5, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 5, 2, generator=g, dtype=torch.float64),
        torch.zeros(4, 1, dtype=torch.int64),
    )

    def make(ex):
        torch.manual_seed(0)
        return MAML(MLP(3, 2, (8, 8)).double(), inner_lr=0.1, inner_steps=2, execution=ex)

    assert_paths_equal(make, batch)


def test_shared_first_gives_each_task_its_own_first_gradient():
    """``first_step`` row t is task t's own SGD step, computed alone (an independent reference)."""
    from fastadapt.algorithms.base import task_loss
    from fastadapt.algorithms.shared_first import first_step

    model, batch = conv4(), images()
    algo = MAML(model, inner_lr=0.3, inner_steps=1)
    params = inner.trainable_params(model)
    rates = dict.fromkeys(params, 0.3)
    phi = first_step(algo._forward, params, batch.support_x, batch.support_y, rates, True, task_loss)
    for t in range(batch.support_x.shape[0]):
        g = torch.autograd.grad(
            task_loss(algo._forward(params, batch.support_x[t]), batch.support_y[t]), list(params.values())
        )
        for (k, p), gk in zip(params.items(), g):
            assert torch.allclose(phi[k][t], p - 0.3 * gk, rtol=0, atol=1e-12), k


def test_shared_first_under_bf16_autocast_keeps_float32_gradients_close_to_fp32():
    """bf16 autocast through the shared step (conv, its backward, BatchNorm in float32): meta-gradient float32,
    relative error to fp32 measured 0.21 (the loop's bf16: 0.21) on these random 28x28 tasks; bound 0.3."""
    batch = images28()
    flat = {}
    for ex, bf16 in (("loop", False), ("shared_first", True)):
        torch.manual_seed(0)
        algo = MAML(Conv4(1, 5, 16, 28), inner_lr=0.4, inner_steps=1, execution=ex)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = algo.meta_loss(batch).loss
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in algo.parameters())
        flat[bf16] = torch.cat([p.grad.flatten() for p in algo.parameters()])
    error = float((flat[True] - flat[False]).norm() / flat[False].norm())
    assert 1e-4 < error < 0.3


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def test_shared_first_refuses_a_model_it_cannot_share_in_one_line():
    batch = TaskBatch(
        torch.randn(2, 4, 3),
        torch.randint(0, 2, (2, 4)),
        torch.randn(2, 4, 3),
        torch.randint(0, 2, (2, 4)),
        torch.arange(2).repeat(2, 1),
    )
    with pytest.raises(ConfigError, match="shared_first.*execution='loop'"):
        MAML(Scaled(), execution="shared_first").meta_loss(batch)


# --- run.compile ------------------------------------------------------------------------------


def has_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c)


@pytest.mark.skipif(not has_cxx(), reason="inductor compiles C++ kernels on the CPU and no C++ compiler is on PATH")
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # raised inside torch.compile
def test_compiled_per_task_function_equals_eager_second_order(tmp_path):
    """One compile (a tiny MLP, second-order MAML, 1 step): loss, outputs and meta-gradient equal to eager in fp32,
    the function really compiled (no silent eager fallback), the cache in the session's folder, the environment
    restored."""
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(3)
    batch = TaskBatch(
        torch.randn(3, 6, 3, generator=g),
        torch.randn(3, 6, 2, generator=g),
        torch.randn(3, 5, 3, generator=g),
        torch.randn(3, 5, 2, generator=g),
        torch.zeros(3, 1, dtype=torch.int64),
    )
    torch.manual_seed(0)
    algo = MAML(MLP(3, 2, (8,)), inner_lr=0.1, inner_steps=1, execution="loop")
    out = algo.meta_loss(batch)
    out.loss.backward()
    eager = grads(algo)
    algo.zero_grad(set_to_none=True)
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    ok = counters["frames"]["ok"]
    session = compiled.CompileSession(cache=tmp_path / "inductor")
    try:
        with compiled.compiling(session):
            out_c = algo.meta_loss(batch)
            out_c.loss.backward()
        assert counters["frames"]["ok"] > ok and len(session.compiled) == 1
        assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == env
        assert any((tmp_path / "inductor").iterdir())
        assert abs(float(out.loss.detach() - out_c.loss.detach())) <= 1e-5 * abs(float(out.loss.detach()))
        scale = max(float(v.abs().max()) for v in eager.values())
        for k, v in grads(algo).items():
            assert float((v - eager[k]).abs().max()) <= 1e-5 * scale, k
    finally:
        torch._dynamo.reset()


def test_compile_session_reports_the_cold_start_after_two_steps_and_is_off_by_default():
    session = compiled.CompileSession(cache=compiled.cache_dir())
    assert session.step_done(5.0) is None
    row = session.step_done(1.5)
    assert row is not None and row["compile_seconds"] == 3.5 and row["step_s"] == 1.5
    assert session.step_done(1.4) is None
    assert compiled.maybe_compiled(len) is len  # outside compiling(): the function itself
    assert load_config("protonet-quick").run.compile is False
    assert load_config("protonet-quick", ["run.compile=true"]).run.compile is True
    with pytest.raises(ConfigError):
        load_config("protonet-quick", ["run.compile='yes'"])


# --- CUDA (run by benchmarks/gpu.sh on a GPU machine; skipped elsewhere) ---------------------------

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (benchmarks/gpu.sh runs these on a GPU machine)")


@needs_cuda
def test_cuda_auto_device_is_cuda():
    from fastadapt.runtime.devices import resolve_device

    assert resolve_device("auto") == "cuda"


@needs_cuda
@pytest.mark.parametrize("execution", ["auto", "vmap", "loop", "shared_first"])
def test_cuda_execution_paths_equal_the_cpu_loop_in_float64(execution):
    """Second-order MAML, 2 steps, BatchNorm per task: every path on CUDA equals the CPU per-task loop (float64,
    1e-9)."""
    batch = images()
    ref = MAML(conv4(), inner_lr=0.3, inner_steps=2, execution="loop")
    ref.meta_loss(batch).loss.backward()
    algo = MAML(conv4(), inner_lr=0.3, inner_steps=2, execution=execution).cuda()
    algo.meta_loss(batch.to("cuda")).loss.backward()
    assert_same_grads(grads(ref), {k: v.cpu() for k, v in grads(algo).items()})


@needs_cuda
def test_cuda_bf16_autocast_meta_gradient_is_close_to_fp32():
    """The CPU bound of tests/test_perf.py (relative error < 0.25, cosine > 0.97) on CUDA, random 28x28 images,
    Conv4-64."""
    import copy

    from fastadapt.runtime.precision import autocast
    from fastadapt.training.accumulate import meta_gradient

    batch = images28().to("cuda")
    torch.manual_seed(0)
    fp32 = MAML(Conv4(1, 5, 64, 28), inner_lr=0.4, inner_steps=1).cuda()
    bf16 = copy.deepcopy(fp32)
    meta_gradient(fp32, batch)
    meta_gradient(bf16, batch, around=lambda: autocast("bf16", "cuda"))
    g32 = torch.cat([p.grad.flatten() for p in fp32.parameters()])
    g16 = torch.cat([p.grad.flatten() for p in bf16.parameters()])
    assert g16.dtype == torch.float32
    error = float((g16 - g32).norm() / g32.norm())
    assert 1e-5 < error < 0.25
    assert float(torch.nn.functional.cosine_similarity(g16, g32, 0)) > 0.97


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_short_training(tmp_path, precision):
    from fastadapt.training.loop import train

    overrides = [
        "data.ways=3",
        "data.test_ways=3",
        "data.shots=1",
        "data.queries=2",
        "data.meta_batch=4",
        "optim.steps=3",
        "eval.test_episodes=4",
        "eval.batch=2",
        "eval.val_every=0",
        "run.progress=false",
        "run.device='auto'",
        f"run.precision='{precision}'",
        f"run.out={tmp_path / precision}",
    ]
    result = train(load_config("maml-omniglot-5w1s", overrides))
    assert result.steps == 3
    test = next(iter(result.tests.values()))
    assert 0.0 <= test.mean <= 1.0
    rows = [r for r in result.out_dir.joinpath("metrics.jsonl").read_text().splitlines() if r]
    assert rows
