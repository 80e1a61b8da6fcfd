"""Several domains as one task source: classes named <domain>:<class>, converted to one size, and with
data.episode_scope = "domain" every task's classes come from one domain."""

from __future__ import annotations

import numpy as np
import pytest

import fastadapt
from fastadapt.config import SourceRequest
from fastadapt.config.build import task_sources
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.domains.mixed import domain_of


def toy(size: int, classes: int, value: int):
    def build(request):
        x = np.full((classes * 4, 1, size, size), value, dtype=np.uint8)
        x[:, 0, 0, : 1 + request.options.get("mark", 0)] = 255
        y = np.repeat(np.arange(classes), 4)
        return fastadapt.ClassDataset.from_arrays(x, y, name=f"toy{value}-{request.part}")

    return build


@pytest.fixture
def two_domains():
    TASK_SOURCES.register("toy-a", toy(12, 6, 10), replace=True)
    TASK_SOURCES.register("toy-b", toy(20, 7, 200), replace=True)
    yield
    TASK_SOURCES.unregister("toy-a")
    TASK_SOURCES.unregister("toy-b")


def config(*extra: str):
    return fastadapt.load_config(
        "protonet-quick",
        [
            "data.dataset=domains",
            'data.options={ domains = ["toy-a", "toy-b"], toy-b = { mark = 2 } }',
            "data.image_size=16",
            "data.ways=3",
            "data.shots=1",
            "data.queries=2",
            "data.test_queries=2",
            "data.meta_batch=8",
            *extra,
        ],
    )


def test_every_domain_becomes_classes_named_by_domain_at_one_size(two_domains):
    source = TASK_SOURCES.get("domains")
    request = SourceRequest(
        part="train", ways=3, shots=1, queries=2, seed=0, image_size=16, options={"domains": ["toy-a", "toy-b"]}
    )
    data = source(request)
    assert data.num_classes == 13 and data.data.shape[1:] == (1, 16, 16)
    assert sorted({domain_of(n) for n in data.names}) == ["toy-a", "toy-b"]


def test_with_the_domain_scope_every_task_comes_from_one_domain(two_domains):
    batch = task_sources(config("data.episode_scope=domain")).train.sample_tasks(0, 0, 8)
    means = batch.support_x.flatten(1).float().mean(1)
    for t in range(8):  # a toy-a task is dark (10/255), a toy-b task bright (200/255): never both in one task
        x = batch.support_x[t].flatten(1)
        levels = (x.median(1).values > 0.5).tolist()
        assert len(set(levels)) == 1, (t, levels)
    assert 0 < float((means > 0.5).float().mean()) < 1  # both domains appear over the batch
    mixed = task_sources(config()).train.sample_tasks(0, 0, 64)
    per_task = [set((mixed.support_x[t].flatten(1).median(1).values > 0.5).tolist()) for t in range(64)]
    assert any(len(s) == 2 for s in per_task)  # without the scope a task may mix domains


def test_a_domain_gets_its_own_options_and_bad_options_are_one_line(two_domains):
    data = TASK_SOURCES.get("domains")(
        SourceRequest(
            part="train",
            ways=3,
            shots=1,
            queries=2,
            seed=0,
            image_size=20,
            options={"domains": ["toy-a", "toy-b"], "toy-b": {"mark": 2}},
        )
    )
    b = [i for i, n in enumerate(data.names) if n.startswith("toy-b:")][0]
    assert int(data.examples(b)[0, 0, 0, :3].min()) == 255  # toy-b's own option reached it
    for options, message in [
        ({"domains": ["toy-a"]}, "name two or more task sources"),
        ({"domains": ["toy-a", "toy-a"]}, "each domain once"),
        ({"domains": ["toy-a", "nope"]}, "'nope' is not a task source"),
        ({"domains": ["toy-a", "toy-b"], "toy-c": {}}, "toy-c is neither a domain of data.options.domains"),
        ({"domains": ["toy-a", "sinusoid"]}, "not classes of images"),
    ]:
        request = SourceRequest(part="train", ways=3, shots=1, queries=2, seed=0, image_size=16, options=options)
        with pytest.raises(DataError, match=message) as e:
            TASK_SOURCES.get("domains")(request)
        assert "\n" not in str(e.value)


def test_an_unknown_episode_scope_names_the_three():
    with pytest.raises(ConfigError, match="choose dataset, alphabet or domain"):
        fastadapt.load_config("protonet-quick", ["data.episode_scope=script"])


def test_under_the_domain_scope_data_of_one_domain_is_one_group():
    from fastadapt.data import class_groups

    plain = fastadapt.ClassDataset.from_arrays(
        np.zeros((6, 1, 4, 4), np.uint8), np.arange(6), class_names=list("abcdef")
    )
    assert class_groups(plain, "domain") == [""] * 6  # e.g. a held-out test domain: any of its classes together
    named = fastadapt.ClassDataset.from_arrays(
        np.zeros((2, 1, 4, 4), np.uint8), np.arange(2), class_names=["x:1", "y:1"]
    )
    assert class_groups(named, "domain") == ["x", "y"]


def test_a_domain_gets_its_own_split_and_part_names(two_domains):
    asked = []

    def spy(request):
        asked.append((request.split, request.part))
        return toy(12, 6, 10)(request)

    TASK_SOURCES.register("toy-spy", spy, replace=True)
    try:
        options = {
            "domains": ["toy-spy", "toy-b"],
            "toy-spy": {"split": "lake", "parts": {"train": "background_train"}},
        }
        source = TASK_SOURCES.get("domains")
        for part in ("train", "test"):
            request = SourceRequest(part=part, ways=3, shots=1, queries=2, seed=0, image_size=16, options=options)
            source(request)
        assert asked == [("lake", "background_train"), ("lake", "test")]
        bad = {**options, "toy-spy": {"parts": ["background_train"]}}
        with pytest.raises(DataError, match="parts a table"):
            source(SourceRequest(part="train", ways=3, shots=1, queries=2, seed=0, image_size=16, options=bad))
    finally:
        TASK_SOURCES.unregister("toy-spy")


def test_a_held_out_test_domain_gets_its_own_options_from_the_run(two_domains):
    asked = []

    def spy(request):
        asked.append((request.split, request.part, dict(request.options)))
        return toy(12, 6, 10)(request)

    TASK_SOURCES.register("toy-held", spy, replace=True)
    try:
        cfg = fastadapt.load_config(
            "protonet-quick",
            [
                "data.dataset=domains",
                'data.options={ domains = ["toy-a", "toy-b"], toy-held = { split = "x", parts = { test = "t2" }, '
                "mark = 1 } }",
                "data.test_dataset=toy-held",
                "data.image_size=16",
                "data.ways=3",
                "data.shots=1",
                "data.queries=2",
                "data.test_queries=2",
            ],
        )
        task_sources(cfg)
        assert asked == [("x", "t2", {"mark": 1})]
    finally:
        TASK_SOURCES.unregister("toy-held")
