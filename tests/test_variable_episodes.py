"""Meta-Dataset's variable-way, variable-shot, class-imbalanced episodes: the sampling rules, ProtoNets on them, the
engine's data.episodes = "variable" and the refusal of fixed-head algorithms."""

from __future__ import annotations

import inspect
import json
import math
import random

import pytest
import torch
from torch import nn

import fastadapt
from fastadapt import ClassDataset, ConfigError, DataError
from fastadapt.algorithms.base import per_task_scores
from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.config.build import task_sources
from fastadapt.core.registry import ALGORITHMS
from fastadapt.data import class_groups
from fastadapt.data.sampler import fixed_episodes
from fastadapt.data.variable import VariableEpisodeSampler, episode_shape
from fastadapt.eval.finetune import FineTuned
from helpers import conv4, tiny

GROUPS = {"a": 60, "b": 12, "c": 7, "d": 3}  # classes per domain; "d" has too few for a 5-way episode


def rows_dataset(dtype: torch.dtype = torch.float64) -> ClassDataset:
    """Classes of 2..400 examples in four domains; example ``r`` is ``[r, class, noise...]`` so a task's rows can be
    traced back to the dataset."""
    rng = random.Random(7)
    names, counts = [], []
    for group, n in GROUPS.items():
        for i in range(n):
            names.append(f"{group}:{i}")
            counts.append(rng.choice([2, 3, 5, 9, 20, 40, 150, 400]))
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    m = int(offsets[-1])
    cls = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    noise = torch.randn(m, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    data = torch.cat([torch.arange(m, dtype=dtype)[:, None], cls[:, None].to(dtype), noise], 1)
    return ClassDataset(data, offsets, tuple(names), "rows")


@pytest.fixture(scope="module")
def sampler() -> VariableEpisodeSampler:
    data = rows_dataset()
    return VariableEpisodeSampler(data, seed=11, groups=class_groups(data, "domain"))


def test_episodes_keep_meta_datasets_bounds_over_many_seeded_draws(sampler):
    data = sampler.dataset
    counts, groups = data.counts.tolist(), class_groups(data, "domain")
    largest_b, imbalanced, seen_groups = 0, 0, set()
    for i in range(300):
        b = sampler.sample_tasks(0, i, 1)
        rows_s, rows_q = b.support_x[0, :, 0].long(), b.query_x[0, :, 0].long()
        classes = b.classes[0].tolist()
        n = len(classes)
        group = {groups[c] for c in classes}
        assert len(group) == 1 and "d" not in group  # one domain, one with >= 5 classes
        seen_groups |= group
        assert 5 <= n <= min(50, GROUPS[group.pop()])  # max ways clamped by the group's classes
        if groups[classes[0]] == "b":
            largest_b = max(largest_b, n)
        q = min(10, min(counts[c] // 2 for c in classes))
        assert b.query_y[0].tolist() == torch.arange(n).repeat_interleave(q).tolist()
        shots = torch.bincount(b.support_y[0], minlength=n)
        assert b.support_y[0].tolist() == sorted(b.support_y[0].tolist())  # class-major
        assert len(rows_s) <= 500 and int(shots.sum()) == len(rows_s)
        for label, c in enumerate(classes):
            assert 1 <= int(shots[label]) <= counts[c] - q
        imbalanced += int(shots.max() > shots.min())
        # every row belongs to its label's class, and no example is used twice in the episode
        assert b.support_x[0, :, 1].long().tolist() == [classes[y] for y in b.support_y[0].tolist()]
        assert b.query_x[0, :, 1].long().tolist() == [classes[y] for y in b.query_y[0].tolist()]
        both = torch.cat([rows_s, rows_q])
        assert len(set(both.tolist())) == len(both)
    assert seen_groups == {"a", "b", "c"}
    assert largest_b == 12  # the clamp is reached, not just respected
    assert imbalanced > 250


def test_an_episode_is_a_pure_function_of_seed_step_and_index(sampler):
    again = VariableEpisodeSampler(sampler.dataset, seed=11, groups=class_groups(sampler.dataset, "domain"))
    order = [5, 0, 3]
    for i in order:  # drawn in another order, by another sampler
        a, b = sampler.sample_tasks(2, i, 1), again.sample_tasks(2, i, 1)
        for f in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
    other = VariableEpisodeSampler(sampler.dataset, seed=12, groups=class_groups(sampler.dataset, "domain"))
    assert not torch.equal(sampler.sample_tasks(2, 0, 1).classes, other.sample_tasks(2, 0, 1).classes)
    assert not torch.equal(sampler.sample_tasks(2, 0, 1).classes, sampler.sample_tasks(3, 0, 1).classes)
    fixed = list(sampler.fixed(4, batch_size=50))  # one episode per batch, whatever the batch size
    assert [len(b) for b in fixed] == [1, 1, 1, 1]
    assert [len(b) for b in fixed_episodes(sampler, 3, 25)] == [1, 1, 1]  # the free function, as choose_schedule calls
    assert torch.equal(fixed[2].support_x, sampler.sample_tasks(-1, 2, 1).support_x)
    state = sampler.state_dict()
    first = sampler.sample()
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample().support_x, first.support_x)


class ScriptedRandom(random.Random):
    """A generator whose draws are given: ``randint`` records its bounds and returns its upper one, ``sample`` keeps the
    order given, ``random`` returns ``u`` and ``uniform`` the next of ``alphas``."""

    def __init__(self, u: float, alphas: list[float]) -> None:
        super().__init__(0)
        self.u, self.alphas, self.bounds = u, list(alphas), None

    def randint(self, a, b):
        self.bounds = (a, b)
        return b

    def sample(self, population, k):
        return list(population)[:k]

    def random(self):
        return self.u

    def uniform(self, a, b):
        assert (a, b) == (math.log(0.5), math.log(2.0))
        return self.alphas.pop(0)


def test_the_shape_rules_match_a_hand_computation():
    counts = [20, 40, 7, 300, 9]
    log = math.log
    rng = ScriptedRandom(0.5, [log(0.5), 0.0, 0.0, log(2.0) - 1e-12, 0.0])  # beta = 1 - 0.5
    shape = episode_shape(rng, counts, [0, 1, 2, 3, 4], 5, 50, 500, 10, 100)
    assert rng.bounds == (5, 5)  # N's upper bound is the 5 classes available
    # q = min(10, 20//2, 40//2, 7//2, 300//2, 9//2) = 3; |S| = ceil(.5*17) + ceil(.5*37) + ceil(.5*4) +
    # ceil(.5*min(100, 297)) + ceil(.5*6) = 9 + 19 + 2 + 50 + 3 = 83; weights 0.5*20, 40, 7, 2*300, 9 (sum 666);
    # K_c = floor(w_c / 666 * 78) + 1
    assert (shape.queries, shape.support_size, shape.shots) == (3, 83, (2, 5, 1, 71, 2))
    rng = ScriptedRandom(0.5, [log(0.5), 0.0, 0.0, log(2.0) - 1e-12, 0.0])
    capped = episode_shape(rng, counts, [0, 1, 2, 3, 4], 5, 50, 50, 10, 100)  # |S| = min(50, 83); K from 45
    assert (capped.support_size, capped.shots) == (50, (1, 3, 1, 41, 1))
    rng = ScriptedRandom(0.0, [log(1.9), log(0.5), log(0.5), log(0.5), log(0.5)])  # beta = 1
    full = episode_shape(rng, [6] * 5, [0, 1, 2, 3, 4], 5, 50, 500, 10, 100)
    # q = 3, |S| = 5 * 3 = 15; R = 11.4 / 23.4 for the first class -> floor(4.87) + 1 = 5, capped at 6 - 3 = 3
    assert (full.queries, full.support_size, full.shots) == (3, 15, (3, 2, 2, 2, 2))


def test_protonet_predicts_an_imbalanced_episode_as_the_nearest_class_mean_in_float64(sampler):
    batch = sampler.sample_tasks(0, 1, 1)
    shots = torch.bincount(batch.support_y[0])
    assert shots.max() > shots.min()
    encoder = nn.Linear(5, 4, dtype=torch.float64)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        encoder.weight[:, :2] = 0  # the row ids would dominate
    algo = fastadapt.ProtoNet(encoder).eval()
    logits = algo.predict(batch)[0]
    n = batch.ways
    assert logits.shape == (batch.query_x.shape[1], n) and logits.dtype == torch.float64
    zs, zq = encoder(batch.support_x[0]).detach(), encoder(batch.query_x[0]).detach()
    for i in range(zq.shape[0]):
        for c in range(n):
            members = [zs[j] for j in range(zs.shape[0]) if int(batch.support_y[0, j]) == c]
            mean = sum(members) / len(members)
            d2 = sum(float(v) ** 2 for v in zq[i] - mean)
            assert math.isclose(float(logits[i, c]), -d2, rel_tol=1e-9, abs_tol=1e-9)
    hits = (logits.argmax(-1) == batch.query_y[0]).double()
    assert float(per_task_scores(logits[None], batch.query_y)[0]) == pytest.approx(float(hits.mean()), abs=0)


def test_every_algorithm_that_declares_variable_ways_predicts_a_variable_episode():
    counts = [3, 4, 6, 9, 12, 5, 7, 8]
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 256, (sum(counts), 1, 16, 16), generator=g, dtype=torch.uint8)
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    images = ClassDataset(data, offsets, tuple(f"c{i}" for i in range(len(counts))), "images")
    batch = VariableEpisodeSampler(images, seed=4).sample_tasks(0, 0, 1).to(dtype=torch.float64)
    n, queries = batch.ways, batch.query_x.shape[1]
    able = [name for name in ALGORITHMS.names() if getattr(ALGORITHMS.get(name), "variable_ways", False)]
    assert {"protonet", "matching", "baseline", "linear_probe", "protomaml"} <= set(able)
    assert not {"maml", "fomaml", "metasgd", "anil", "reptile", "meta_lstm", "mann", "alfa"} & set(able)
    for name in able:
        cls = ALGORITHMS.get(name)
        options = {"num_classes": len(counts)} if "num_classes" in inspect.signature(cls).parameters else {}
        if name == "url":  # a trained URL as load_run rebuilds it (pretrained=False): it predicts without teachers
            options |= {"domain_sizes": [3, 5], "domain_names": ["a", "b"], "teachers": {"a": "-", "b": "-"}}
            options |= {"pretrained": False}
        algo = cls(conv4(out=None), **options).double().eval()
        out = algo.predict(batch)
        assert out.shape == (1, queries, n) and bool(out.isfinite().all()), name
    tuned = FineTuned(fastadapt.ProtoNet(conv4(out=None)), "head", 2, 0.01)
    assert tuned.variable_ways and tuned.predict(batch).shape == (1, queries, n)


def test_many_tasks_at_once_too_small_groups_and_bad_bounds_are_one_line_data_errors(sampler):
    for call, match in (
        (lambda: sampler.sample_tasks(0, 0, 2), "drawn one per batch"),
        (
            lambda: VariableEpisodeSampler(
                sampler.dataset, min_ways=61, max_ways=70, groups=class_groups(sampler.dataset, "domain")
            ),
            "no group of rows has 61 classes",
        ),
        (lambda: VariableEpisodeSampler(sampler.dataset, max_ways=60, max_support=50), "max_ways <= max_support"),
        (lambda: VariableEpisodeSampler(sampler.dataset, max_query=0), "max_query=0 is invalid"),
    ):
        with pytest.raises(DataError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    one = ClassDataset(torch.zeros(11, 2), torch.tensor([0, 1, 3, 5, 7, 9, 11]), tuple("uvwxyz"), "small")
    with pytest.raises(DataError, match="class 'u' of small has 1 example"):
        VariableEpisodeSampler(one, strict=True)
    lenient = VariableEpisodeSampler(one, seed=0)  # the single-example class is never drawn
    assert all(0 not in lenient.sample_tasks(0, i, 1).classes[0].tolist() for i in range(20))


def test_data_episodes_variable_validates_and_tests_with_variable_episodes(tmp_path):
    with pytest.raises(ConfigError, match="data.episodes='mixed' is not allowed; choose fixed or variable"):
        tiny(tmp_path, "data.episodes=mixed")
    cfg = tiny(tmp_path, "data.episodes=variable", "data.test_ways=20")  # test_ways is ignored
    result = fastadapt.train(cfg)
    assert set(result.tests) == {"variable"}
    record = json.loads((cfg.out_dir / "eval_variable.json").read_text())
    assert len(record["scores"]) == 6 and record["settings"]["episodes"]["kind"] == "variable"
    assert record["settings"]["episodes"]["max_ways"] == 50 and record["settings"]["ways"] == 0
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [3, 6]  # validated on variable episodes
    sources = task_sources(cfg)
    assert isinstance(sources.val, VariableEpisodeSampler) and sources.train.ways == 5  # training stays fixed
    # the scores are those of the fixed variable episodes, one per batch, whatever eval.batch
    algo = fastadapt.load_run(cfg.out_dir).algorithm
    again = fastadapt.evaluate(algo, sources.tests["variable"].fixed(6, 3))
    assert again.scores == pytest.approx(record["scores"], abs=1e-12)


def test_fastadapt_eval_of_a_fixed_run_on_variable_episodes_writes_a_record(tmp_path):
    cfg = tiny(tmp_path, "eval.test_episodes=0")
    fastadapt.train(cfg)
    assert cli_main(["eval", str(cfg.out_dir), "data.episodes=variable", "eval.test_episodes=4"]) == 0
    (file,) = (cfg.out_dir / "evals").glob("variable*.json")
    record = json.loads(file.read_text())
    assert len(record["scores"]) == 4 and 0 <= record["mean"] <= 1 and record["settings"]["queries"] == 0


def test_fixed_head_algorithms_are_refused_in_one_line_and_training_sources_must_be_fixed(tmp_path):
    cfg = load_config("maml-omniglot-5w1s", ["data.episodes=variable", "optim.steps=1", f"run.out={tmp_path / 'maml'}"])
    with pytest.raises(ConfigError) as e:
        fastadapt.train(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("variable-way episodes need an algorithm that reads N from the support set; maml ")
    able = msg.split("one of ")[1].split(", ")
    assert "protonet" in able and "protomaml" in able and "maml" not in able and "anil" not in able
    with pytest.raises(ConfigError, match="variable-way episodes are for validation and test only"):
        fastadapt.train(tiny(tmp_path), tasks={"train": VariableEpisodeSampler(rows_dataset())})
    sinusoid = load_config("maml-sinusoid", ["data.episodes=variable"])
    with pytest.raises(ConfigError, match="data.episodes=variable draws episodes from a dataset's classes"):
        task_sources(sinusoid)
