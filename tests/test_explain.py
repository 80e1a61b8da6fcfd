"""Explanations agree with the predictions they explain (fastadapt/eval/explanations.py), and ``fastadapt explain``
works for every registered algorithm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import fastadapt
from fastadapt import cli
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.mann import MANN
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.config import load_config
from fastadapt.core.episodes import Episode
from fastadapt.core.registry import ALGORITHMS
from fastadapt.eval.explanations import captum_available, explain, input_attribution, ntm_weightings
from fastadapt.nn import NTM, Conv4
from helpers import NEEDS_RUNS, PRESET_OF


def task(ways=3, shots=2, queries=2, side=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    proto = torch.rand(ways, 1, side, side, generator=g, dtype=dtype)
    sx = proto.repeat_interleave(shots, 0) + 0.2 * torch.randn(ways * shots, 1, side, side, generator=g, dtype=dtype)
    qx = proto.repeat_interleave(queries, 0) + 0.2 * torch.randn(
        ways * queries, 1, side, side, generator=g, dtype=dtype
    )
    return Episode(sx, torch.arange(ways).repeat_interleave(shots), qx, torch.arange(ways).repeat_interleave(queries))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_the_nearest_prototype_is_the_predicted_class(distance):
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8, image_size=16), distance=distance).eval()
    t = task()
    e = explain(algo, t)
    d = e.parts["distances"]
    assert e.kind == "prototypes" and e.attribution is None
    assert torch.equal(d.argmin(-1), e.predicted)
    assert torch.equal(e.predicted, algo.adapt(t.support_x, t.support_y)(t.query_x).argmax(-1))
    if distance == "euclidean":  # the logits are the negative squared distances, computed here by a naive loop
        z, protos = algo.model(t.query_x).detach(), e.parts["prototypes"]
        naive = torch.tensor([[float(((zq - c) ** 2).sum()) for c in protos] for zq in z])
        torch.testing.assert_close(d, naive, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(-d, e.outputs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fce", [False, True])
def test_attention_weights_reproduce_the_matching_networks_output(fce):
    torch.manual_seed(0)
    algo = MatchingNet(Conv4(out_features=None, hidden=8, image_size=16), fce=fce).eval()
    t = task()
    e = explain(algo, t)
    a = e.parts["attention"]
    assert e.kind == "attention" and a.shape == (len(t.query_x), len(t.support_x))
    torch.testing.assert_close(a.sum(-1), torch.ones(len(t.query_x)))
    onehot = F.one_hot(t.support_y, 3).float()
    torch.testing.assert_close(torch.log((a @ onehot).clamp_min(1e-8)), e.outputs, rtol=1e-5, atol=1e-5)
    assert torch.equal((a @ onehot).argmax(-1), e.predicted)


def test_layer_changes_equal_one_hand_written_sgd_step_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    algo = MAML(model, inner_lr=0.3, inner_steps=1).eval()
    t = task(side=8, dtype=torch.float64)
    e = explain(algo, t, attribution="none")
    loss = F.cross_entropy(model(t.support_x), t.support_y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = {name: 0.3 * float(g.norm()) for (name, _), g in zip(model.named_parameters(), grads)}
    assert e.kind == "adaptation" and [c.name for c in e.layers] == list(expected)
    for c in e.layers:
        assert c.change == pytest.approx(expected[c.name], rel=1e-9)
        assert c.relative == pytest.approx(
            expected[c.name] / float(dict(model.named_parameters())[c.name].detach().norm()), rel=1e-9
        )


def test_anil_moves_the_head_only():
    torch.manual_seed(0)
    algo = ANIL(Conv4(out_features=3, hidden=8, image_size=16), inner_lr=0.5, inner_steps=2).eval()
    e = explain(algo, task(), attribution="none")
    moved = {c.name: c.change for c in e.layers}
    assert all(v == 0 for k, v in moved.items() if not k.startswith("head."))
    assert all(v > 0 for k, v in moved.items() if k.startswith("head."))


def test_gradient_attribution_of_a_linear_model_is_its_weight_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    algo = MAML(model, inner_steps=0).eval()
    t = task(side=8, dtype=torch.float64)
    e = explain(algo, t, attribution="gradient")
    w = model[1].weight.detach()
    assert e.attribution is not None and e.attribution.method == "gradient" and e.attribution.delta is None
    for q in range(len(t.query_x)):
        torch.testing.assert_close(e.attribution.maps[q].flatten(), w[int(e.predicted[q])], rtol=0, atol=1e-12)


@pytest.mark.skipif(
    not captum_available(), reason="Captum is an extra (pip install fastadapt[explain]); CI installs it"
)
def test_integrated_gradients_sum_to_the_output_difference():
    """Completeness (Sundararajan et al. 2017): sum(attribution) = F(x) - F(0), to Captum's convergence delta;
    on a smooth network (no batch statistics) in float64 the delta is small."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 3)).double()
    algo = MAML(model, inner_lr=0.1, inner_steps=1).eval()
    t = task(side=8, dtype=torch.float64)
    e = explain(algo, t, attribution="integrated_gradients", steps=64)
    a = e.attribution
    assert a is not None and a.method == "integrated_gradients"
    predictor = algo.adapt(t.support_x, t.support_y)
    for q in range(len(t.query_x)):
        c = int(e.predicted[q])
        with torch.no_grad():
            diff = float(
                predictor(t.query_x[q : q + 1])[0, c] - predictor(torch.zeros_like(t.query_x[q : q + 1]))[0, c]
            )
        total = float(a.maps[q].sum())
        assert float(a.delta[q]) == pytest.approx(total - diff, abs=1e-9)  # the delta is what it says
        assert abs(total - diff) <= 1e-4 * max(1.0, abs(diff))  # and complete here


@pytest.mark.skipif(
    not captum_available(), reason="Captum is an extra (pip install fastadapt[explain]); CI installs it"
)
def test_the_convergence_delta_is_reported_for_batch_statistics_networks():
    torch.manual_seed(0)
    algo = MAML(Conv4(out_features=3, hidden=8, image_size=16), inner_steps=1).eval()
    t = task(queries=1)
    e = explain(algo, t, attribution="integrated_gradients", steps=16)
    a = e.attribution
    predictor = algo.adapt(t.support_x, t.support_y)
    with torch.no_grad():
        for q in range(len(t.query_x)):
            c = int(e.predicted[q])
            diff = float(
                predictor(t.query_x[q : q + 1])[0, c] - predictor(torch.zeros_like(t.query_x[q : q + 1]))[0, c]
            )
            assert float(a.delta[q]) == pytest.approx(float(a.maps[q].sum()) - diff, abs=1e-4)


def test_fallback_attribution_for_an_algorithm_without_its_own_explanation():
    torch.manual_seed(0)
    algo = MANN(nn.Flatten(), ways=3, input_shape=(1, 8, 8), core="lstm", controller_size=16).eval()
    t = task(side=8)
    e = explain(algo, t, attribution="gradient")
    assert e.kind == "attribution" and e.attribution is not None and "fallback" in e.notes[0]
    x = t.query_x[:1].clone().requires_grad_(True)
    out = algo.adapt(t.support_x, t.support_y)(x)
    (g,) = torch.autograd.grad(out[0, int(e.predicted[0])], x)
    torch.testing.assert_close(e.attribution.maps[0], g[0])


def test_meta_lstm_gates_are_recorded_per_step_and_parameter_tensor():
    torch.manual_seed(0)
    algo = MetaLSTM(Conv4(out_features=3, hidden=4, image_size=16), inner_steps=3).eval()
    e = explain(algo, task(), attribution="none")
    g = e.parts["gates"]
    assert e.kind == "gates" and g.input_gate.shape == (3, len(g.names)) == g.forget_gate.shape
    assert bool(((g.input_gate > 0) & (g.input_gate < 1) & (g.forget_gate > 0) & (g.forget_gate < 1)).all())
    assert len(e.layers) == len(g.names) and all(c.change > 0 for c in e.layers)


def test_mann_memory_trace_reproduces_the_predictor_and_weightings_are_distributions():
    torch.manual_seed(0)
    algo = MANN(
        nn.Flatten(), ways=3, input_shape=(1, 8, 8), memory_size=16, memory_width=6, read_heads=2, controller_size=16
    ).eval()
    t = task(side=8)
    e = explain(algo, t)
    m = e.parts
    s, q = len(t.support_y), len(t.query_x)
    assert e.kind == "memory" and m["read_weights"].shape == (s + q, 2, 16) == m["write_weights"].shape
    torch.testing.assert_close(m["query_outputs"], e.outputs)
    torch.testing.assert_close(m["read_weights"].sum(-1), torch.ones(s + q, 2))
    w = m["write_weights"]  # sigmoid(alpha) * previous read weights + (1 - sigmoid(alpha)) * the R least-used slots
    assert bool((w >= 0).all()) and bool(
        ((w[1:].sum(-1) > 1 - 1e-5) & (w[1:].sum(-1) < 2 + 1e-5)).all()
    )  # reads sum to 1, R = 2 slots
    assert bool((w[0, :, 2:] == 0).all()) and bool((w[0, :, :2] > 0).all())  # the first write goes to slots 0..R-1
    assert m["phase"] == ["support"] * s + ["query"] * q and sorted(m["order"].tolist()) == list(range(s))


def test_ntm_weightings_are_recorded_at_every_step():
    torch.manual_seed(0)
    ntm = NTM(4, 3, memory_size=8, memory_width=5)
    out, rw, ww = ntm_weightings(ntm, torch.rand(6, 2, 4))
    assert out.shape == (6, 2, 3) and rw.shape[:2] == (6, 2) and ww.shape[:2] == (6, 2) and rw.shape[-1] == 8
    torch.testing.assert_close(rw.sum(-1), torch.ones(rw.shape[:-1]))


def test_input_attribution_refuses_an_unknown_method():
    with pytest.raises(fastadapt.ConfigError, match="unknown"):
        input_attribution(lambda x: x, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "shap")


# --- the command, for every registered algorithm -------------------------------------------------------


def write_folder(root, classes=6, per_class=4, side=28, seed=0):
    """``root/<part>/<class>/<i>.png``: per class a random stroke pattern (bright on dark) plus noise."""
    rng = np.random.default_rng(seed)
    for part in ("train", "val", "trainval", "test"):
        for c in range(classes):
            d = root / part / f"{part}-c{c}"
            d.mkdir(parents=True)
            base = (rng.random((side, side)) > 0.85).astype(np.float64)
            for i in range(per_class):
                img = np.clip(base + 0.3 * rng.random((side, side)), 0, 1)
                Image.fromarray((img * 255).astype(np.uint8), "L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"))


def tiny_run(name, folder, out):
    cfg = load_config(PRESET_OF[name])
    overrides = [
        "optim.steps=1",
        "eval.val_every=0",
        "eval.test_episodes=0",
        "run.progress=false",
        f"run.out={out}",
        "data.meta_batch=1",
    ]
    if cfg.data.dataset in ("omniglot", "domains"):  # image learners: a small folder instead, small 5-way tasks
        overrides += [
            f"data.dataset=folder:{folder}",
            "data.options={}",
            "data.episode_scope=dataset",
            "data.train_part=train",
            "data.val_part=val",
            "data.test_part=test",
            "data.ways=5",
            "data.shots=1",
            "data.queries=2",
            "data.test_ways=5",
            "data.test_shots=1",
            "data.test_queries=2",
        ]
    if cfg.model.name == "conv4":
        overrides.append("model.hidden=4")
    if cfg.algorithm == "mann":
        overrides += ["algorithm.memory_size=16", "algorithm.controller_size=16", "algorithm.core=mann"]
    fastadapt.train(load_config(PRESET_OF[name], overrides))
    return out


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.skip(reason=NEEDS_RUNS[n])) if n in NEEDS_RUNS else n
        for n in ALGORITHMS.names()
    ],
)
def test_fastadapt_explain_works_for_every_registered_algorithm(name, image_folder, tmp_path, capsys):
    assert PRESET_OF[name] is not None, f"algorithm {name} has no shipped preset"
    run = tiny_run(name, image_folder, tmp_path / "run")
    stem = tmp_path / "why"
    if name == "maml-rl":  # tasks are environments: no example to explain, one line and exit 2
        assert (
            cli.main(
                [
                    "explain",
                    str(run),
                    "--episode",
                    "1",
                    "--queries",
                    "2",
                    "--attribution",
                    "gradient",
                    "--out",
                    str(stem),
                ]
            )
            == 2
        )
        assert "reinforcement-learning run" in capsys.readouterr().err and not stem.with_suffix(".json").exists()
        return
    assert (
        cli.main(
            ["explain", str(run), "--episode", "1", "--queries", "2", "--attribution", "gradient", "--out", str(stem)]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    record = json.loads(stem.with_suffix(".json").read_text())
    with Image.open(stem.with_suffix(".png")) as png:
        assert png.size[0] > 100 and png.size[1] > 100
    expected_kind = {
        "protonet": "prototypes",
        "matching": "attention",
        "meta_lstm": "gates",
        "mann": "memory",
        "baseline": "attribution",
        "linear_probe": "attribution",
        "ntm": "attribution",
        "multidomain": "prototypes",
        "relation": "relations",
        "attentive": "comparisons",
        "siamese": "verification",
    }.get(name, "adaptation")
    assert record["kind"] == expected_kind and len(record["queries"]) >= 1
    for q in record["queries"]:
        if "probabilities" in q:  # classification: the explanation's prediction is the predictor's argmax
            assert q["predicted"] == int(np.argmax(q["outputs"]))
        if expected_kind == "prototypes":
            assert q["predicted"] == int(np.argmin(q["distances"]))
        if name not in ("protonet", "matching", "mann", "ntm"):  # ntm predicts bits (thresholds): no input gradient
            assert q["attribution"]["method"] == "gradient" and np.isfinite(q["attribution"]["sum"])


def test_explain_takes_your_own_support_folder_and_query_image(image_folder, tmp_path, capsys):
    run = tiny_run("protonet", image_folder, tmp_path / "run")
    support = image_folder / "test"
    query = next((support / "test-c2").iterdir())
    stem = tmp_path / "own"
    assert cli.main(["explain", str(run), "--support", str(support), "--query", str(query), "--out", str(stem)]) == 0
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["class_names"] == sorted(d.name for d in support.iterdir())
    assert record["queries"][0]["name"] == query.name and record["queries"][0]["label"] is None
    assert record["queries"][0]["predicted"] == int(np.argmin(record["queries"][0]["distances"]))
    assert record["support_labels"] == sorted(record["support_labels"]) and len(record["support_labels"]) == 6 * 4
    assert cli.main(["explain", str(run), "--support", str(support)]) == 2
    assert "--support and --query go together" in capsys.readouterr().err
