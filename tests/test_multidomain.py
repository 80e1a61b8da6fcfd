"""Multi-domain pretraining with a head per domain (fastadapt/algorithms/multidomain.py): the per-domain softmax
against separate heads in float64, the engine's domain sizes from a ``domains`` source, and a run loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
from fastadapt import TaskBatch
from fastadapt.algorithms.multidomain import MultiDomain, domain_of_class
from fastadapt.config import load_config
from fastadapt.config.build import task_sources, train_domains
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.runs import load_run


class Flat(nn.Module):
    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__()
        self.lin, self.embedding_dim = nn.Linear(d_in, dim), dim

    def forward(self, x):
        return torch.tanh(self.lin(x.flatten(1)))


def batch_of(classes: list[list[int]], shots: int, queries: int, d_in: int, gen) -> TaskBatch:
    t, n = len(classes), len(classes[0])
    labels = torch.arange(n)
    return TaskBatch(
        torch.randn(t, n * shots, d_in, generator=gen, dtype=torch.float64),
        labels.repeat_interleave(shots).repeat(t, 1),
        torch.randn(t, n * queries, d_in, generator=gen, dtype=torch.float64),
        labels.repeat_interleave(queries).repeat(t, 1),
        torch.tensor(classes),
    )


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_loss_and_its_gradient_equal_separate_per_domain_heads_in_float64(head):
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 5, 4]
    algo = MultiDomain(Flat(6, 4), num_classes=12, domain_sizes=sizes, head=head).double()
    with torch.no_grad():
        algo.classifier.weight.normal_(generator=gen)
        if algo.classifier.bias is not None:
            algo.classifier.bias.normal_(generator=gen)
    # tasks from domain 1 (classes 3..7) and domain 2 (8..11): per-domain batches
    batch = batch_of([[3, 5, 7], [8, 11, 9]], shots=2, queries=1, d_in=6, gen=gen)
    out = algo.meta_loss(batch)
    grads = torch.autograd.grad(out.loss, list(algo.parameters()))

    # reference: one head per domain (its own rows of W, b), a plain loop over images, the softmax over that domain
    params = list(algo.parameters())
    w, lin_w, lin_b = algo.classifier.weight, algo.model.lin.weight, algo.model.lin.bias
    b = algo.classifier.bias
    starts = [0, 3, 8]
    losses = []
    for t in range(2):
        xs = torch.cat([batch.support_x[t], batch.query_x[t]])
        ys = torch.cat([batch.classes[t][batch.support_y[t]], batch.classes[t][batch.query_y[t]]])
        for x, y in zip(xs, ys):
            d = next(i for i in reversed(range(3)) if int(y) >= starts[i])
            rows = slice(starts[d], starts[d] + sizes[d])
            z = torch.tanh(lin_w @ x + lin_b)
            if head == "linear":
                logits = w[rows] @ z + b[rows]
            else:
                scale = algo.pretrain_scale()
                logits = scale * (w[rows] @ z) / (w[rows].norm(dim=1) * z.norm())
            losses.append(F.cross_entropy(logits[None], (y - starts[d])[None]))
    ref = torch.stack(losses).mean()
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(out.loss, ref, atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-12, rtol=0)


def test_one_domain_is_baseline():
    torch.manual_seed(0)
    a = MultiDomain(Flat(6, 4), num_classes=5).double()
    assert a.domain_sizes == (5,) and torch.equal(domain_of_class([2, 3]), torch.tensor([0, 0, 1, 1, 1]))


@pytest.mark.parametrize("sizes", [[3, 4], [0, 12], [6, 6.0]])
def test_domain_sizes_must_add_up_to_the_classes(sizes):
    with pytest.raises(ConfigError, match="adding up to num_classes=12"):
        MultiDomain(Flat(6, 4), num_classes=12, domain_sizes=sizes)


def toy(classes: int, value: int):
    def build(request):
        rng = np.random.default_rng(value)
        x = rng.integers(0, 255, (classes * 6, 1, 12, 12), dtype=np.uint8)
        y = np.repeat(np.arange(classes), 6)
        return fastadapt.ClassDataset.from_arrays(x, y, name=f"toy{value}-{request.part}")

    return build


@pytest.fixture
def two_domains():
    TASK_SOURCES.register("toy-a", toy(6, 1), replace=True)
    TASK_SOURCES.register("toy-b", toy(8, 2), replace=True)
    yield
    TASK_SOURCES.unregister("toy-a")
    TASK_SOURCES.unregister("toy-b")


def test_the_engine_gives_the_domain_sizes_and_a_loaded_run_keeps_them(two_domains, tmp_path):
    cfg = load_config(
        "multidomain-domains",
        [
            'data.options={ domains = ["toy-a", "toy-b"] }',
            "data.image_size=16",
            "data.ways=3",
            "data.shots=1",
            "data.queries=2",
            "data.test_ways=3",
            "data.test_queries=2",
            "model.hidden=4",
            "optim.steps=3",
            "eval.val_every=0",
            "eval.test_episodes=4",
            "run.progress=false",
            f"run.out={tmp_path / 'run'}",
        ],
    )
    assert train_domains(task_sources(cfg)) == [6, 8]
    result = fastadapt.train(cfg)
    assert result.steps == 3
    run = load_run(tmp_path / "run")
    assert run.algorithm.domain_sizes == (6, 8) and run.algorithm.classifier.weight.shape[0] == 14


def test_a_test_task_is_classified_by_nearest_centroid_or_by_baselines_head():
    from fastadapt.algorithms.protonet import ProtoNet

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batch = batch_of([[0, 1, 2]], shots=2, queries=3, d_in=6, gen=gen)
    ncc = MultiDomain(Flat(6, 4), num_classes=5, domain_sizes=[2, 3]).double()
    expected = ProtoNet(ncc.model, "cosine").predict(batch)
    assert torch.equal(ncc.predict(batch), expected)
    task = batch.task(0)
    assert torch.equal(ncc.adapt(task.support_x, task.support_y)(task.query_x), expected[0])
    head = MultiDomain(Flat(6, 4), num_classes=5, classifier="head", finetune_steps=3).double()
    from fastadapt.algorithms.baseline import Baseline

    assert torch.equal(head.predict(batch), Baseline.predict(head, batch))
    with pytest.raises(ConfigError, match="classifier='knn' is not supported"):
        MultiDomain(Flat(6, 4), num_classes=5, classifier="knn")
