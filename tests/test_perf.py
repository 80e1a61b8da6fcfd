"""Faster paths against the plain ones, in float64: chunked meta-gradient accumulation
(``optim.task_chunk``), MAML++ schedules counting updates, Reptile without its logging forward pass,
batched evaluation, and the bf16 precision's error bound."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch
from torch import nn

import helpers
from fastadapt import TaskBatch
from fastadapt.algorithms import inner
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError
from fastadapt.nn import Conv4
from fastadapt.runtime.precision import autocast, check_precision
from fastadapt.training.accumulate import check_task_chunk, meta_gradient, task_chunks
from fastadapt.training.loop import train
from helpers import assert_same_grads, conv4, grads

WAYS, SHOTS, QUERIES, TASKS, SIDE = 3, 2, 2, 5, 16


pytestmark = pytest.mark.usefixtures("one_thread")


images = partial(helpers.images, tasks=TASKS)


# --- chunked meta-gradient accumulation ------------------------------------------------------


ALGORITHMS = {
    "maml-2nd-order-2-steps": lambda m: MAML(m, inner_lr=0.1, inner_steps=2),
    "fomaml": lambda m: FOMAML(m, inner_lr=0.1, inner_steps=2),
    "metasgd": lambda m: MetaSGD(m, init_lr=0.1, inner_steps=2),
    "maml++": lambda m: MAML(
        m,
        inner_lr=0.1,
        inner_steps=3,
        learn_inner_lr=True,
        multi_step_loss=True,
        msl_anneal_steps=4,
        first_order_until=1,
    ),
    "anil": lambda m: ANIL(m, inner_lr=0.1, inner_steps=2),
    "reptile-persistent-minibatches": lambda m: Reptile(m, inner_lr=0.01, inner_steps=3, inner_batch=4),
    "reptile-fresh-sgd": lambda m: Reptile(m, inner_lr=0.05, inner_steps=2, inner_optimizer="sgd"),
    "matching-fce-per-task": lambda m: MatchingNet(
        conv4(out=None), fce=True, encode="per_task"
    ).double(),  # tasks encoded apart
}


def test_task_chunks_cover_the_batch_in_order():
    assert task_chunks(5, 0) == [slice(0, 5)] == task_chunks(5, 5) == task_chunks(5, 9)
    assert task_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_chunked_gradient_equals_one_pass(name):
    """Chunks of 2, 2 and 1 tasks accumulate the gradient of one pass over 5 tasks (float64, 1e-9), with the same
    metrics (task-weighted means) and, for MAML++, over three updates of its schedules (DA ends after the first)."""
    whole = ALGORITHMS[name](conv4())
    chunked = copy.deepcopy(whole)
    for update in range(3):
        batch = images(update)
        results = []
        for algo, chunk in ((whole, 0), (chunked, 2)):
            algo.zero_grad(set_to_none=True)
            torch.manual_seed(10 + update)  # Reptile's mini-batches come from torch's RNG
            results.append(meta_gradient(algo, batch, chunk))
        assert_same_grads(grads(whole), grads(chunked))
        (obj_w, met_w), (obj_c, met_c) = results
        assert met_w.keys() == met_c.keys()
        for k in met_w:
            if k != "surrogate":  # Reptile's surrogate is a weighted mean of the chunks' (its gradient is the same)
                assert met_c[k] == pytest.approx(met_w[k], rel=1e-9, abs=1e-6 if k == "acc" else 1e-12), (
                    k
                )  # acc: a float32 mean
        if not name.startswith("reptile"):
            assert obj_c == pytest.approx(obj_w, rel=1e-9)
        for b_w, b_c in zip(whole.buffers(), chunked.buffers()):  # MAML++'s meta_step, Reptile's Adam state
            assert torch.allclose(b_w, b_c, rtol=1e-9, atol=1e-12)
    if isinstance(whole, MAML):
        assert int(whole.meta_step) == int(chunked.meta_step) == 3  # one count per update, not per meta_loss call


def test_chunked_maml_plus_plus_schedule_is_that_of_updates():
    """Derivative-order annealing and the multi-step-loss weights read the update count inside every chunk."""
    algo = MAML(conv4(), inner_lr=0.1, inner_steps=2, multi_step_loss=True, msl_anneal_steps=2, first_order_until=1)
    seen = []
    original = algo.loss_weights

    def spy():
        seen.append((algo.is_first_order(), tuple(original().tolist())))
        return original()

    algo.loss_weights = spy
    for _ in range(2):
        meta_gradient(algo, images(), task_chunk=2)
    assert int(algo.meta_step) == 2
    first, second = seen[:3], seen[3:]
    assert len(set(first)) == 1 and len(set(second)) == 1  # every chunk of an update reads one schedule
    assert first[0] == (True, (0.5, 0.5)) and second[0] == (False, (0.25, 0.75))


def test_distributed_scale_multiplies_every_chunk():
    algo = MAML(conv4(), inner_lr=0.1, inner_steps=1)
    meta_gradient(algo, images(), 0)
    ref = grads(algo)
    algo.zero_grad(set_to_none=True)
    meta_gradient(algo, images(), 2, scale=0.25)
    assert_same_grads({k: 0.25 * v for k, v in ref.items()}, grads(algo))


def test_chunks_of_a_meta_batch_encoder_with_batchnorm_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"optim.task_chunk=2: ProtoNet encodes the whole meta-batch .* BatchNorm"):
        check_task_chunk(ProtoNet(conv4(out=None)), 2, 4)
    check_task_chunk(ProtoNet(conv4(out=None)), 4, 4)  # one chunk: nothing changes
    check_task_chunk(MAML(conv4()), 2, 4)  # per-task statistics: exact


def test_chunked_protonet_without_batchnorm_equals_one_pass():
    whole = ProtoNet(conv4(out=None, batch_norm=False))
    chunked = copy.deepcopy(whole)
    check_task_chunk(chunked, 2, TASKS)
    meta_gradient(whole, images(3), 0)
    meta_gradient(chunked, images(3), 2)
    assert_same_grads(grads(whole), grads(chunked))


TINY = [
    "data.ways=3",
    "data.test_ways=3",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=3",
    "data.image_size=16",
    "model.hidden=4",
    "algorithm.name='maml'",
    "algorithm.inner_steps=1",
    "optim.steps=2",
    "optim.optimizer='sgd'",
    "optim.lr=0.5",
    "optim.clip_grad=0.05",
    "eval.val_every=0",
    "eval.test_episodes=0",
    "run.log_every=1",
    "run.progress=false",
    "run.threads=1",
    "run.keep_freed_memory=false",
]


def test_training_with_task_chunks_follows_the_one_pass_run(tmp_path):
    """The loop with optim.task_chunk=1 (clipping after accumulation) ends at the weights of task_chunk=0 (float32
    rounding; SGD, because Adam turns the rounding noise of a ~0 gradient into a full step), with the same logged
    loss."""
    finals, logged = {}, {}
    for chunk in (0, 1):
        cfg = load_config("protonet-quick", [*TINY, f"optim.task_chunk={chunk}", f"run.out={tmp_path / str(chunk)}"])
        train(cfg)
        finals[chunk] = torch.load(cfg.out_dir / "checkpoint.pt", weights_only=False)["algorithm"]
        logged[chunk] = [
            json.loads(line)["loss"]
            for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("split") == "train"
        ]
    for k, v in finals[0].items():
        if v.is_floating_point():
            assert torch.allclose(v, finals[1][k], rtol=1e-5, atol=1e-6), k
    assert len(logged[0]) == 2 and logged[1] == pytest.approx(logged[0], rel=1e-5)


def test_task_chunk_and_precision_are_checked_config_keys():
    with pytest.raises(ConfigError, match="optim.task_chunk=-1 is invalid"):
        load_config("protonet-quick", ["optim.task_chunk=-1"])
    with pytest.raises(ConfigError, match="run.precision=.fp16. is not allowed; choose one of fp32, bf16, auto"):
        load_config("protonet-quick", ["run.precision='fp16'"])
    with pytest.raises(ConfigError, match="precision='half' is unknown"):
        check_precision("half")


# --- Reptile: no forward pass only for logging ------------------------------------------------


def reference_reptile(
    model: nn.Module,
    batch: TaskBatch,
    lr: float,
    steps: int,
    optimizer: str,
    state,
    idx: torch.Tensor | None,
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
):
    """Plain per-task loop with torch.autograd.grad and a hand-written Adam carrying ``state = (m, v, step)`` from
    task to task (None: SGD). Returns theta - mean phi (the surrogate's gradient), the state and the mean last
    support loss."""
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    finals, last = [], []
    for t in range(batch.num_tasks):
        phi = dict(theta)
        for k in range(steps):
            sel = idx[t, k] if idx is not None else slice(None)
            leaves = {n: x.detach().requires_grad_() for n, x in phi.items()}
            loss = torch.nn.functional.cross_entropy(
                torch.func.functional_call(model, leaves, (batch.support_x[t][sel],)), batch.support_y[t][sel]
            )
            g = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            if optimizer == "sgd":
                phi = {n: phi[n] - lr * g[n] for n in phi}
                continue
            m, v, step = state
            step += 1
            m = {n: betas[0] * m[n] + (1 - betas[0]) * g[n] for n in g}
            v = {n: betas[1] * v[n] + (1 - betas[1]) * g[n] ** 2 for n in g}
            phi = {
                n: phi[n] - lr * (m[n] / (1 - betas[0] ** step)) / ((v[n] / (1 - betas[1] ** step)).sqrt() + eps)
                for n in phi
            }
            state = (m, v, step)
        finals.append(phi)
        last.append(float(loss.detach()))
    grad = {n: theta[n] - torch.stack([f[n] for f in finals]).mean(0) for n in theta}
    return grad, state, sum(last) / len(last)


@pytest.mark.parametrize(("optimizer", "inner_batch"), [("adam", 4), ("adam", None), ("sgd", None)])
def test_reptile_update_and_metrics_against_a_plain_loop(optimizer, inner_batch):
    """The meta-gradient (theta - mean phi), the carried Adam state over two meta-steps and the logged support loss
    of the last inner step equal a plain loop's (float64, 1e-10; 1e-8 with Adam, see below)."""
    algo = Reptile(
        conv4(),
        inner_lr=0.01 if optimizer == "adam" else 0.05,
        inner_steps=3,
        inner_optimizer=optimizer,
        inner_batch=inner_batch,
    )
    model = copy.deepcopy(algo.model)
    zeros = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    state = (zeros, zeros, 0) if optimizer == "adam" else None
    for update in range(2):
        batch = images(update)
        torch.manual_seed(update)
        idx = (
            None
            if inner_batch is None
            else torch.stack([inner.minibatch_indices(SHOTS * WAYS, inner_batch, 3) for _ in range(TASKS)])
        )
        ref, state, last_loss = reference_reptile(model, batch, algo.inner_lr, 3, optimizer, state, idx)
        torch.manual_seed(update)
        algo.zero_grad(set_to_none=True)
        out = algo.meta_loss(batch)
        out.loss.backward()
        # Adam divides a conv bias's ~1e-16 gradient (BatchNorm follows it) by eps=1e-8: steps of ~1e-10 made of
        # rounding noise
        assert_same_grads(
            ref,
            {k.removeprefix("model."): v for k, v in grads(algo).items()},
            tol=1e-8 if optimizer == "adam" else 1e-10,
        )
        assert out.metrics["loss"] == pytest.approx(last_loss, rel=1e-10)
        assert 0.0 <= out.metrics["acc"] <= 1.0
        if optimizer == "adam":
            (m, v), step = algo._adam_state()
            assert step == state[2] == 3 * TASKS * (update + 1)
            assert all(torch.allclose(m[k], state[0][k], rtol=1e-9, atol=1e-14) for k in m)
        with torch.no_grad():  # the outer SGD step (epsilon = 0.5), applied to both
            for (name, p), q in zip(algo.model.named_parameters(), model.parameters()):
                p -= 0.5 * p.grad
                q -= 0.5 * ref[name]


@pytest.mark.parametrize("persistent", [True, False])
def test_reptile_step_is_bit_exact_with_the_library_inner_loops(persistent):
    """The training steps with scores keep the operations of inner.adam_steps / inner.inner_loop: the same bits."""
    algo = Reptile(conv4(), inner_lr=0.01, inner_steps=3, inner_state="persistent" if persistent else "fresh")
    batch = images(4)
    theta = inner.detached(inner.trainable_params(algo.model))
    rates = inner.constant_rates(list(theta), algo.inner_lr, 3)
    (m, v), step = algo._adam_state() if persistent else ((None, None), 0)
    targets = []
    for t in range(TASKS):
        loss = algo._support_loss(batch.support_x[t], batch.support_y[t], None)
        with torch.enable_grad():
            if persistent:
                phi, (m, v) = inner.adam_steps(loss, theta, rates, (m, v), step, algo.betas)
                step += 3
            else:
                phi = inner.inner_loop(loss, theta, rates, first_order=True, optimizer="adam", betas=algo.betas)[3]
        targets.append(phi)
    mean = {k: torch.stack([f[k] for f in targets]).mean(0) for k in theta}
    algo.meta_loss(batch).loss.backward()
    for k, p in inner.trainable_params(algo.model).items():
        assert torch.equal(p.grad, p.detach() - mean[k]), k


def test_plain_grad_equals_torch_func_grad_and_reptile_adapt_uses_it():
    """inner.plain_grad (autograd on leaf copies) gives torch.func.grad's gradients (float64, BatchNorm, an unused
    parameter, with and without aux); Reptile's adaptation from the persistent Adam state is the torch.func path's."""
    algo = Reptile(conv4(), inner_lr=0.01, inner_steps=3, inner_steps_eval=4)
    batch = images(1)
    sx, sy = batch.support_x[0], batch.support_y[0]
    theta = inner.detached(inner.trainable_params(algo.model))
    theta["unused"] = torch.ones(3, dtype=torch.float64)

    def loss_of(p):
        return task_loss(algo._forward({k: v for k, v in p.items() if k != "unused"}, sx), sy)

    ref = torch.func.grad(loss_of)(theta)
    got = inner.plain_grad(loss_of)(theta)
    got_aux, aux = inner.plain_grad(lambda p: (loss_of(p), 7), has_aux=True)(theta)
    assert aux == 7 and torch.equal(got["unused"], torch.zeros(3, dtype=torch.float64))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got_aux[k], ref[k], rtol=1e-12, atol=1e-14)
    del theta["unused"]
    state, step = algo._adam_state()
    rates = inner.constant_rates(list(theta), algo.inner_lr, 4)
    with torch.enable_grad():
        expected = inner.adam_steps(
            lambda p: task_loss(algo._forward(p, sx), sy), theta, rates, state, step, algo.betas
        )[0]
    fast = algo._adapt_from(theta, sx, sy, 4)
    for k in expected:
        torch.testing.assert_close(fast[k], expected[k], rtol=1e-12, atol=1e-14)


# --- precision -----------------------------------------------------------------------------------


def omniglot_batch(tasks: int = 4) -> TaskBatch:
    import fastadapt

    return fastadapt.EpisodeSampler(fastadapt.load_omniglot("vinyals", "train"), 5, 1, 5, seed=0).sample(tasks)


@pytest.mark.filterwarnings("ignore::fastadapt.runtime.precision.EmulatedBF16Warning")  # a CPU without native bf16
@pytest.mark.parametrize(("cls", "bound", "cosine"), [(MAML, 0.25, 0.97), (FOMAML, 0.25, 0.97)])
def test_bf16_meta_gradient_error_against_fp32_is_bounded(cls, bound, cosine):
    """MAML on 4 fixed Omniglot 5-way 1-shot tasks, Conv4 with 64 filters, 1 step at 0.4, first weights of seed 0:
    the bf16 meta-gradient's relative error ||g_bf16 - g_fp32|| / ||g_fp32|| measured 0.167 (second order) and 0.172
    (first order), cosine 0.986 and 0.985; bounds 0.25 and 0.97. Parameters and gradients stay float32."""
    batch = omniglot_batch()
    torch.manual_seed(0)
    fp32 = cls(Conv4(1, 5, 64, 28), inner_lr=0.4, inner_steps=1)
    bf16 = copy.deepcopy(fp32)
    meta_gradient(fp32, batch)
    meta_gradient(bf16, batch, around=lambda: autocast("bf16", "cpu"))
    g32 = torch.cat([p.grad.flatten() for p in fp32.parameters()])
    g16 = torch.cat([p.grad.flatten() for p in bf16.parameters()])
    assert g16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in bf16.parameters())
    error = float((g16 - g32).norm() / g32.norm())
    assert 1e-4 < error < bound  # bf16 did run (not an fp32 copy), within the bound
    assert float(torch.nn.functional.cosine_similarity(g16, g32, 0)) > cosine


@pytest.mark.filterwarnings("ignore::fastadapt.runtime.precision.EmulatedBF16Warning")  # a CPU without native bf16
def test_bf16_training_runs_and_records_its_precision(tmp_path):
    cfg = load_config(
        "protonet-quick",
        [*TINY, "run.precision='bf16'", "eval.test_episodes=2", "eval.batch=2", f"run.out={tmp_path / 'bf16'}"],
    )
    result = train(cfg)
    assert result.steps == 2
    test = next(iter(result.tests.values()))
    assert test.settings["precision"] == "bf16" and 0.0 <= test.mean <= 1.0
    assert all(
        v.dtype != torch.bfloat16
        for v in torch.load(cfg.out_dir / "checkpoint.pt", weights_only=False)["algorithm"].values()
    )


# --- evaluation: batched predict against the per-episode path ------------------------------------


EVALUATED = {
    "maml-10-steps": lambda ex: MAML(conv4(), inner_lr=0.1, inner_steps=1, inner_steps_eval=10, execution=ex),
    "reptile-persistent-adam": lambda ex: Reptile(
        conv4(), inner_lr=0.01, inner_steps=2, inner_steps_eval=6, execution=ex
    ),
    "matching-fce": lambda ex: MatchingNet(conv4(out=None), fce=True).double(),
}


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("name", list(EVALUATED))
def test_batched_predict_equals_the_per_episode_path(name, execution):
    """``predict`` over a batch of episodes (a loop, or every episode in one vmap call; Matching encodes per task) gives
    the outputs of ``adapt(support)(query)`` episode by episode (float64, 1e-9) and so the same accuracies."""
    algo = EVALUATED[name](execution)
    if isinstance(algo, Reptile):  # a non-zero persistent Adam state, as after training
        algo.meta_loss(images(7))
    algo.eval()
    batch = images(5)
    with torch.no_grad():
        batched = algo.predict(batch)
        single = torch.stack(
            [algo.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]) for t in range(TASKS)]
        )
    assert batched.shape == (TASKS, WAYS * QUERIES, WAYS) and batched.dtype == torch.float64
    assert float((batched - single).abs().max()) <= 1e-9 * float(single.abs().max())
    assert torch.equal(batched.argmax(-1), single.argmax(-1))
