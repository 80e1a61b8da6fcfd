"""``run.memory_format``: the convolution weights' layout changes how, never what, the library computes (float64
gradients equal in both layouts); ``"auto"`` lays out NHWC only on a CPU under an algorithm that declares
``prefers_channels_last``; the trainer records what it took."""

from __future__ import annotations

import json

import pytest
import torch

from fastadapt import train
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm
from fastadapt.core.errors import ConfigError
from fastadapt.runtime.layout import (
    apply_memory_format,
    check_memory_format,
    model_memory_format,
    resolve_memory_format,
)
from helpers import TINY, assert_same_grads, conv4, grads, images, mlp


def test_auto_is_channels_last_on_the_cpu_for_conv_models_under_algorithms_that_declare_it():
    conv = conv4(out=None)
    assert resolve_memory_format("auto", ProtoNet, conv, "cpu") == "channels_last"
    assert resolve_memory_format("auto", MatchingNet, conv, "cpu") == "channels_last"
    assert resolve_memory_format("auto", MAML, conv4(), "cpu") == "contiguous"  # second order: measured slower
    assert resolve_memory_format("auto", ProtoNet, mlp(), "cpu") == "contiguous"  # no convolution
    assert resolve_memory_format("auto", ProtoNet, conv, "cuda") == "contiguous"  # not measured there
    assert resolve_memory_format("channels_last", MAML, conv4(), "cpu") == "channels_last"  # a choice is kept
    assert resolve_memory_format("contiguous", ProtoNet, conv, "cpu") == "contiguous"


def test_a_bad_memory_format_is_refused_in_one_line():
    calls = (lambda: check_memory_format("nhwc"), lambda: load_config("protonet-quick", ["run.memory_format=nhwc"]))
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "run.memory_format" in message and "channels_last" in message


@pytest.mark.parametrize("algorithm", ["protonet", "matching", "maml"])
def test_float64_meta_gradients_are_equal_in_both_layouts(algorithm):
    batch = images(3, tasks=2, side=28)
    results = []
    for layout in ("contiguous", "channels_last"):
        model = conv4(seed=1, out=None if algorithm != "maml" else 5, side=28)
        algo = {"protonet": ProtoNet, "matching": MatchingNet}.get(algorithm, MAML)(model).double()
        apply_memory_format(model, layout)
        assert model_memory_format(model) == layout
        algo.meta_loss(batch).loss.backward()
        results.append(grads(algo))
        for p in model.parameters():  # each gradient takes its weight's layout (the optimizer's state follows)
            if p.dim() == 4 and p.shape[1] > 1:  # (a single input channel is both layouts)
                assert p.grad.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert_same_grads(results[0], results[1], tol=1e-12)


def test_build_algorithm_lays_the_model_out_as_run_memory_format_says():
    auto = ["model.hidden=8", "run.device=cpu", "run.memory_format=auto"]
    protonet = build_algorithm(load_config("protonet-omniglot-5w1s", auto))
    assert model_memory_format(protonet.model) == "channels_last"
    kept = build_algorithm(load_config("protonet-omniglot-5w1s", ["model.hidden=8", "run.device=cpu"]))
    assert model_memory_format(kept.model) == "contiguous"  # the default
    maml = build_algorithm(load_config("maml-omniglot-5w1s", auto))
    assert model_memory_format(maml.model) == "contiguous"


def test_the_trainer_records_the_layout_it_took_and_resumes_in_it(tmp_path):
    auto = ["run.device=cpu", "run.memory_format=auto"]
    cfg = load_config("protonet-quick", [*TINY, f"run.out={tmp_path}", *auto, "optim.steps=4"])
    train(cfg)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["provenance"]["resolved"]["run.memory_format"] == ["auto", "channels_last"]
    resumed = load_config("protonet-quick", [*TINY, f"run.out={tmp_path}", *auto, "optim.steps=6"])
    assert train(resumed).steps == 6  # resumes from the NHWC checkpoint


def test_the_config_check_accepts_exactly_the_layouts_the_runtime_knows():
    from fastadapt.config import validate
    from fastadapt.runtime.layout import MEMORY_FORMATS

    assert set(validate.MEMORY_FORMATS) == set(MEMORY_FORMATS)
    for choice in MEMORY_FORMATS:
        assert load_config("protonet-quick", [f"run.memory_format={choice}"]).run.memory_format == choice
    with pytest.raises(ConfigError, match="run.memory_format"):
        load_config("protonet-quick", ["run.memory_format=nhwc"])
