"""URL (fastadapt/algorithms/url.py): the distillation loss and its gradient against a hand-written per-image loop in
float64, with tiny teachers trained here by the library and loaded from their run folders; frozen teachers; one-line
refusals; training through the engine and a run loaded back without its teachers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import fastadapt
from fastadapt import TaskBatch
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.url import URL, feature_distances, logit_divergences
from fastadapt.config import load_config
from fastadapt.config.build import config_domains, task_sources, train_domains
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.runs import load_run

NAMES = ["toy-a", "toy-b"]
SIZES = [6, 8]  # classes of each toy domain: class ids 0..5 and 6..13 in the domains source
SIDE = 16  # data.image_size
SMALL = [  # a few seconds: 3 steps of 3-way 1-shot tasks on 16x16 images, a tiny Conv4
    f"data.image_size={SIDE}",
    "data.ways=3",
    "data.shots=1",
    "data.queries=2",
    "data.test_ways=3",
    "data.test_shots=1",
    "data.test_queries=2",
    "model.hidden=4",
    "optim.steps=3",
    "eval.val_every=0",
    "eval.test_episodes=4",
    "run.progress=false",
    "run.threads=1",
]


def toy(classes: int, value: int):
    def build(request):
        rng = np.random.default_rng(value + {"train": 0, "val": 10, "test": 20}[request.part])
        x = rng.integers(0, 255, (classes * 6, 1, 12, 12), dtype=np.uint8)
        return fastadapt.ClassDataset.from_arrays(x, np.repeat(np.arange(classes), 6), name=f"toy{value}")

    return build


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Run folders trained by the library: a Baseline teacher per toy domain (4 features), one with 8 features, and a
    ProtoNets run (no classifier)."""
    for name, size, value in zip(NAMES, SIZES, (1, 2)):
        TASK_SOURCES.register(name, toy(size, value), replace=True)
    root = tmp_path_factory.mktemp("teachers")
    runs = {}
    for key, preset, extra in (
        ("toy-a", "baseline-omniglot", ["data.dataset=toy-a"]),
        ("toy-b", "baseline-omniglot", ["data.dataset=toy-b"]),
        ("wide-b", "baseline-omniglot", ["data.dataset=toy-b", "model.hidden=8"]),
        ("proto-b", "protonet-quick", ["data.dataset=toy-b"]),
    ):
        runs[key] = root / key
        fastadapt.train(load_config(preset, [*SMALL, *extra, f"run.out={runs[key]}"]))
    yield runs
    for name in NAMES:
        TASK_SOURCES.unregister(name)


class Flat(nn.Module):
    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__()
        self.lin, self.embedding_dim = nn.Linear(d_in, dim), dim

    def forward(self, x):
        return torch.tanh(self.lin(x.flatten(1)))


def student(runs, side: int = SIDE, **options) -> URL:
    given = {"toy-a": str(runs["toy-a"]), "toy-b": str(runs["toy-b"])}
    options = {"domain_sizes": SIZES, "domain_names": NAMES, "teachers": given} | options
    return URL(Flat(side * side, 4), num_classes=sum(SIZES), **options)


def batch_of(classes: list[list[int]], shots: int, queries: int, gen, side: int = SIDE) -> TaskBatch:
    t, n = len(classes), len(classes[0])
    labels = torch.arange(n)
    return TaskBatch(
        torch.randn(t, n * shots, 1, side, side, generator=gen, dtype=torch.float64),
        labels.repeat_interleave(shots).repeat(t, 1),
        torch.randn(t, n * queries, 1, side, side, generator=gen, dtype=torch.float64),
        labels.repeat_interleave(queries).repeat(t, 1),
        torch.tensor(classes),
    )


def test_the_distances_are_zero_for_the_same_direction_and_the_same_logits():
    v = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(feature_distances(v, 3 * v), torch.zeros(5, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(feature_distances(v, -v), torch.full((5,), 4.0, dtype=torch.float64))
    s = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(logit_divergences(s, s + 7.0, 4.0), torch.zeros(5, dtype=torch.float64), atol=1e-14)
    assert bool((logit_divergences(s, torch.randn(5, 3, dtype=torch.float64), 2.0) > 0).all())


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_loss_and_its_gradient_equal_a_per_image_loop_in_float64(teachers, head):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    algo = student(teachers, head=head, beta_f=0.7, beta_l=1.3, temperature=2.5).double()
    for t in algo.teachers:  # the teachers in float64 too, so that the reference matches to rounding
        t.algorithm.double()
    with torch.no_grad():
        algo.classifier.weight.normal_(generator=gen)
        if algo.classifier.bias is not None:
            algo.classifier.bias.normal_(generator=gen)
    batch = batch_of([[0, 2, 5], [7, 13, 9]], shots=2, queries=1, gen=gen)  # a task of each domain
    out = algo.meta_loss(batch)
    params = list(algo.parameters())
    grads = torch.autograd.grad(out.loss, params)

    # reference: the teachers loaded again from their folders, one image at a time, each formula written out
    ref_teachers = [load_run(teachers[n]).algorithm.double() for n in NAMES]
    w, b, adapters = algo.classifier.weight, algo.classifier.bias, algo.adapters
    lin_w, lin_b, big_t = algo.model.lin.weight, algo.model.lin.bias, 2.5
    starts = [0, 6, 14]
    terms = []
    for t in range(2):
        xs = torch.cat([batch.support_x[t], batch.query_x[t]])
        ys = torch.cat([batch.classes[t][batch.support_y[t]], batch.classes[t][batch.query_y[t]]])
        d = 0 if int(ys[0]) < 6 else 1  # every task is from one domain
        with torch.no_grad():  # Conv4's BatchNorm keeps no running statistics: a teacher sees its domain's images
            teacher_features = ref_teachers[d].model(xs)  # together (here one task's), as in its own training
        for x, y, zt in zip(xs, ys, teacher_features):
            rows = slice(starts[d], starts[d + 1])
            z = torch.tanh(lin_w @ x.flatten() + lin_b)
            if head == "linear":
                s = w[rows] @ z + b[rows]
            else:
                s = algo.pretrain_scale() * (w[rows] @ z) / (w[rows].norm(dim=1) * z.norm())
            ce = torch.logsumexp(s, 0) - s[int(y) - starts[d]]
            teacher = ref_teachers[d].classifier
            st = teacher.weight @ zt + teacher.bias
            a = adapters[d] @ z
            feature = ((a / a.norm() - zt / zt.norm()) ** 2).sum()
            log_pt = st / big_t - torch.logsumexp(st / big_t, 0)
            log_ps = s / big_t - torch.logsumexp(s / big_t, 0)
            kl = big_t**2 * (log_pt.exp() * (log_pt - log_ps)).sum()
            terms.append(ce + 0.7 * feature + 1.3 * kl)
    ref = torch.stack(terms).mean()
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(out.loss, ref, atol=1e-12, rtol=0)
    assert out.metrics["feature"] > 0 and out.metrics["kl"] > 0
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-12, rtol=0)
    assert float(grads[params.index(adapters)].abs().max()) > 0  # the adapters learn


def test_the_teachers_receive_no_gradient_and_stay_as_loaded(teachers):
    torch.manual_seed(0)
    algo = student(teachers).double()
    before = [{k: v.clone() for k, v in t.algorithm.state_dict().items()} for t in algo.teachers]
    own = {id(p) for p in algo.parameters()}
    assert not any(id(p) in own for t in algo.teachers for p in t.algorithm.parameters())
    assert not any(k.startswith("_teachers") or "teacher" in k for k in algo.state_dict())
    opt = torch.optim.SGD(algo.parameters(), lr=0.5)
    for step in range(2):
        algo.train()
        opt.zero_grad()
        algo.meta_loss(batch_of([[1, 3, 4], [6, 8, 12]], 1, 2, torch.Generator().manual_seed(step))).loss.backward()
        opt.step()
    for t, state in zip(algo.teachers, before):
        assert not t.algorithm.training and all(
            not p.requires_grad and p.grad is None for p in t.algorithm.parameters()
        )
        assert all(torch.equal(v, state[k]) for k, v in t.algorithm.state_dict().items())
    fresh = load_run(teachers["toy-b"]).algorithm
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in algo.teachers[1].algorithm.state_dict().items())


def one_line(match: str, call) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_refusals_are_one_line(teachers, tmp_path):
    a, b = str(teachers["toy-a"]), str(teachers["toy-b"])
    one_line("url needs algorithm.teachers = ", lambda: student(teachers, teachers={}))
    one_line("url needs algorithm.teachers = ", lambda: student(teachers, teachers=None))
    one_line("no teacher for the training domain 'toy-b'", lambda: student(teachers, teachers={"toy-a": a}))
    one_line(
        "names 'emoji', which is not a training domain",
        lambda: student(teachers, teachers={"toy-a": a, "toy-b": b, "emoji": a}),
    )
    missing = str(tmp_path / "nowhere")
    one_line(
        "algorithm.teachers.toy-b=.*no run folder there .*run.out=",
        lambda: student(teachers, teachers={"toy-a": a, "toy-b": missing}),
    )
    one_line(
        "has 8 features but the student has 4",
        lambda: student(teachers, teachers={"toy-a": a, "toy-b": str(teachers["wide-b"])}),
    )
    one_line("was trained on data.dataset='toy-b'", lambda: student(teachers, teachers={"toy-a": b, "toy-b": a}))
    one_line(
        "is a protonet run; a teacher is a classifier",
        lambda: student(teachers, teachers={"toy-a": a, "toy-b": str(teachers["proto-b"])}),
    )
    one_line("url trains on several domains", lambda: student(teachers, domain_names=None))
    one_line("temperature=0 is invalid", lambda: student(teachers, temperature=0))
    one_line("beta_f=-1 is invalid", lambda: student(teachers, beta_f=-1))
    small = student(teachers, side=12).double()  # 12x12 inputs; the teachers were trained on 16x16
    one_line(
        r"the teacher of toy-a .* was trained on inputs \[1, 16, 16\] but the student's are \[1, 12, 12\]",
        lambda: small.meta_loss(batch_of([[0, 1, 2]], 1, 1, torch.Generator().manual_seed(0), side=12)),
    )


def test_trains_through_the_engine_and_loads_back_without_its_teachers(teachers, tmp_path, capsys):
    copies = {n: shutil.copytree(teachers[n], tmp_path / f"teacher-{n}") for n in NAMES}
    table = ", ".join(f'{n} = "{copies[n]}"' for n in NAMES)
    overrides = [*SMALL, 'data.options={ domains = ["toy-a", "toy-b"] }', f"algorithm.teachers={{ {table} }}"]
    cfg = load_config("url-domains", [*overrides, "run.log_every=1", f"run.out={tmp_path / 'run'}"])
    assert train_domains(task_sources(cfg)) == SIZES and config_domains(cfg) == NAMES
    result = fastadapt.train(cfg)
    assert result.steps == 3 and 0 <= result.tests["3w1s"].mean <= 1
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(r["feature"] > 0 and r["kl"] >= 0 and r["ce"] > 0 for r in rows if r.get("split") == "train")
    for folder in copies.values():  # a trained run needs no teacher to be evaluated
        shutil.rmtree(folder)
    run = load_run(tmp_path / "run")
    algo = run.algorithm
    assert isinstance(algo, URL) and algo.teachers == () and algo.domain_names == tuple(NAMES)
    batch = next(iter(run.tasks("test").tests.values())).sample_tasks(0, 0, 2)
    expected = ProtoNet(algo.model, "cosine").predict(batch)
    assert torch.equal(algo.predict(batch), expected)
    task = batch.task(0)
    nearest = ProtoNet(algo.model, "cosine").adapt(task.support_x, task.support_y)(task.query_x)
    assert torch.equal(algo.adapt(task.support_x, task.support_y)(task.query_x), nearest)
    one_line("url: built without its teachers", lambda: algo.meta_loss(batch))
    stem = tmp_path / "why"
    explain = ["explain", str(tmp_path / "run"), "--episode", "1", "--queries", "2", "--attribution", "gradient"]
    assert fastadapt.cli.main([*explain, "--out", str(stem)]) == 0
    assert json.loads(stem.with_suffix(".json").read_text())["kind"] == "prototypes"
    code = fastadapt.cli.main(["train", "url-domains", *overrides, f"run.out={tmp_path / 'again'}"])
    err = capsys.readouterr().err  # the teachers are gone: refused in one line
    assert code == 2 and "no run folder there" in err and err.count("\n") == 1
    assert not (tmp_path / "again" / "checkpoint.pt").exists()


def test_the_preset_names_a_teacher_for_each_of_its_domains_and_refuses_without_them(tmp_path, monkeypatch):
    cfg = load_config("url-domains")
    teachers = cfg.algorithm_options["teachers"]
    assert cfg.algorithm == "url" and config_domains(cfg) == ["omniglot", "glyphs", "kanji"] == list(teachers)
    assert all(path == f"runs/url-teacher-{name}" for name, path in teachers.items())
    monkeypatch.chdir(tmp_path)  # no teacher has been trained here
    one_line(
        "algorithm.teachers.omniglot='runs/url-teacher-omniglot': no run folder there",
        lambda: URL(Flat(4, 4), 6, [1, 2, 3], config_domains(cfg), teachers),
    )
