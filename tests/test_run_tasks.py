"""A loaded run hands over what it was trained on: ``Run.tasks(part)``, built once, with the input conversion
that ``fastadapt eval data.test_dataset=...`` applies; the eval command uses it and builds nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastadapt
from fastadapt.cli import main as cli_main
from fastadapt.config import build, preflight
from fastadapt.core.errors import FastAdaptError
from helpers import smoke_run


def rgb_folder(root, classes: int = 5, per_class: int = 4):
    """``root/test/c<k>/<i>.png``: RGB 40x40 images, another domain than Omniglot's grey 28x28."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / "test" / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB").save(
                root / "test" / f"c{c}" / f"{i}.png"
            )
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return smoke_run(tmp_path_factory.mktemp("runs") / "run")


def test_the_test_tasks_are_built_once_with_the_conversion_to_the_runs_input(run_dir, tmp_path, monkeypatch):
    folder = rgb_folder(tmp_path / "imgs")
    calls = {"task_sources": 0, "check_conversion": 0}
    real_sources, real_check = build.task_sources, preflight.check_conversion

    def counted_sources(*a, **k):
        calls["task_sources"] += 1
        return real_sources(*a, **k)

    def counted_check(*a, **k):
        calls["check_conversion"] += 1
        return real_check(*a, **k)

    monkeypatch.setattr(build, "task_sources", counted_sources)
    monkeypatch.setattr(preflight, "check_conversion", counted_check)
    run = fastadapt.load_run(run_dir, [f"data.test_dataset=folder:{folder}", "data.test_queries=2"])
    assert calls == {"task_sources": 0, "check_conversion": 0}  # the model is rebuilt from the recorded shapes
    tests = run.tasks("test")
    assert run.tasks("test") is tests and calls == {"task_sources": 1, "check_conversion": 1}
    assert tests.train is None and list(tests.tests) == ["5w1s"]
    assert tests.tests["5w1s"].sample_tasks(0, 0, 1).support_x.shape[2:] == run.input_shape == (1, 28, 28)
    assert tests.conversions["5w1s"] == "test: RGB to grey (ITU-R 601 luma)"
    everything = run.tasks("train")
    assert everything.train is not None and run.tasks("val") is everything and run.tasks("test") is tests
    with pytest.raises(FastAdaptError, match="^part 'query' is not one of train, val, test$"):
        run.tasks("query")


def test_fastadapt_eval_builds_the_task_sources_once_and_records_the_conversion(run_dir, tmp_path, monkeypatch):
    folder = rgb_folder(tmp_path / "imgs")
    calls = []
    real = build.task_sources
    monkeypatch.setattr(build, "task_sources", lambda *a, **k: calls.append(k) or real(*a, **k))
    args = [f"data.test_dataset=folder:{folder}", "data.test_queries=2", "eval.test_episodes=3", "eval.batch=3"]
    assert cli_main(["eval", str(run_dir), *args]) == 0
    assert len(calls) == 1 and calls[0]["tests_only"]
    record = json.loads(next((run_dir / "evals").glob("5w1s__*.json")).read_text())
    assert record["settings"]["conversion"] == "test: RGB to grey (ITU-R 601 luma)" and record["episodes"] == 3


def test_a_run_trained_on_sources_given_in_python_cannot_rebuild_them(run_dir):
    run = fastadapt.load_run(run_dir)
    run.provenance["tasks_given"] = "mypackage.MyTasks"
    with pytest.raises(FastAdaptError, match="trained on task sources given in Python \\(mypackage.MyTasks\\)"):
        run.tasks("test")


def test_input_shape_and_environments_come_from_the_provenance(run_dir):
    run = fastadapt.load_run(run_dir)
    assert run.input_shape == (1, 28, 28) and not run.on_environments
    run.provenance["task_shapes"] = {"labels": "environment", "observation": [4], "action_size": 2}
    assert run.on_environments and run.input_shape == (4,)
    run.provenance.pop("task_shapes")
    with pytest.raises(FastAdaptError, match="records no input shape"):
        run.input_shape  # noqa: B018
