"""The NTM through the one engine: the copy and associative-recall task sources, the sequence models'
state in / state out, the ntm algorithm's metric, training through fastadapt.train and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import fastadapt
from fastadapt.algorithms.ntm import NTMLearner, bits_wrong
from fastadapt.cli import main as cli_main
from fastadapt.config.build import SourceRequest
from fastadapt.core.errors import ConfigError
from fastadapt.data.sequences import copy_source, recall_source
from fastadapt.nn.sequence import lstm_seq, ntm, transformer_seq

D = torch.float64


def _request(role="train", seed=0, **options):
    return SourceRequest("train", 1, 1, 1, seed, options=options, role=role)


def test_copy_tasks_are_a_pure_function_of_seed_step_and_index():
    src = copy_source(_request(seed=3))
    a, b = src.sample_tasks(5, 0, 6), src.sample_tasks(5, 0, 6)
    part = src.sample_tasks(5, 2, 3)  # tasks 2..4 of the same step, asked for alone (another rank's shard)
    for f in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
        assert torch.equal(getattr(a, f)[2:5], getattr(part, f))
    other = copy_source(_request(seed=4)).sample_tasks(5, 0, 6)
    assert not torch.equal(a.query_y, other.query_y) or a.query_y.shape != other.query_y.shape
    lengths = {src.sample_tasks(s, 0, 1).query_y.shape[2] for s in range(60)}
    assert lengths <= set(range(1, 21)) and len(lengths) > 10  # uniform in 1..20, one length per step


def test_copy_task_layout():
    b = copy_source(_request(seed=1, bits=8, min_length=7, max_length=7)).sample_tasks(0, 0, 4)
    assert b.support_x.shape == (4, 1, 8, 9) and b.query_x.shape == (4, 1, 7, 9) and b.query_y.shape == (4, 1, 7, 8)
    x = b.support_x[:, 0]
    assert torch.equal(x[:, :7, :8], b.query_y[:, 0])  # the answer is the sequence shown
    assert torch.equal(x[:, :7, 8], torch.zeros(4, 7)) and torch.equal(
        x[:, 7], torch.cat([torch.zeros(4, 8), torch.ones(4, 1)], 1)
    )
    assert torch.equal(b.query_x, torch.zeros_like(b.query_x))
    assert set(b.query_y.unique().tolist()) == {0.0, 1.0}


def test_test_and_validation_tasks_have_the_test_length():
    src = copy_source(_request(role="test", min_length=1, max_length=20, test_length=120))
    batches = list(src.fixed(5, 2))
    assert [b.num_tasks for b in batches] == [2, 2, 1] and all(b.query_y.shape[2] == 120 for b in batches)
    assert (
        copy_source(_request(role="val", max_length=13)).sample_tasks(0, 0, 1).query_y.shape[2] == 13
    )  # default: max_length


def _parse_recall(x, bits):
    """An independent reading of one recall sequence ``[S, bits + 2]``: the items, the query item."""
    items, query, i = [], None, 0
    while i < len(x):
        if x[i, bits] == 1:  # item delimiter: the item follows
            j = i + 1
            while j < len(x) and x[j, bits] == 0 and x[j, bits + 1] == 0:
                j += 1
            items.append(x[i + 1 : j, :bits])
            i = j
        elif x[i, bits + 1] == 1:  # query delimiter, the query item, the query delimiter
            j = i + 1
            while x[j, bits + 1] == 0:
                j += 1
            query = x[i + 1 : j, :bits]
            assert j == len(x) - 1  # the second query delimiter ends what is shown
            i = j + 1
        else:
            raise AssertionError(f"step {i} is neither a delimiter nor inside an item")
    return items, query


@pytest.mark.parametrize("items", [2, 3, 6])
def test_associative_recall_construction(items):
    src = recall_source(
        _request(role="test", seed=items, bits=6, item_length=3, min_items=2, max_items=6, test_items=items)
    )
    b = src.sample_tasks(0, 0, 20)
    assert (
        b.support_x.shape == (20, 1, items * 4 + 5, 8)
        and b.query_x.shape == (20, 1, 3, 8)
        and b.query_y.shape == (20, 1, 3, 6)
    )
    assert torch.equal(b.query_x, torch.zeros_like(b.query_x))
    positions = set()
    for t in range(20):
        parsed, query = _parse_recall(b.support_x[t, 0], 6)
        assert len(parsed) == items and all(p.shape == (3, 6) for p in parsed)
        assert torch.equal(torch.cat(parsed), b.support_y[t, 0])
        k = next(k for k in range(items) if torch.equal(parsed[k], query))  # the query is one of the items ...
        assert k < items - 1  # ... never the last (it has a successor)
        assert torch.equal(b.query_y[t, 0], parsed[k + 1])  # the answer: the item after the query item
        positions.add(k)
    assert len(positions) == (items - 1 if items <= 3 else len(positions)) and len(positions) >= min(
        items - 1, 3
    )  # query positions vary


def test_bad_task_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="takes no option 'length'"):
        copy_source(_request(length=3))
    with pytest.raises(ConfigError, match="min_items"):
        recall_source(_request(min_items=1))
    with pytest.raises(ConfigError, match="positive integer"):
        copy_source(_request(bits=0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ntm((5, 9), 8, controller_size=12, memory_size=16, memory_width=6),
        lambda: ntm(
            (5, 9), 8, controller="transformer", controller_size=8, transformer_heads=2, memory_size=16, memory_width=6
        ),
        lambda: lstm_seq((5, 9), 8, hidden_size=10, num_layers=2),
        lambda: transformer_seq((5, 9), 8, d_model=8, heads=2),
    ],
    ids=["ntm-lstm", "ntm-transformer", "lstm", "transformer"],
)
def test_state_out_then_in_equals_one_run(make):
    """Running the support, then the query from the returned state, equals one run over both (float64)."""
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(3, 11, 9, dtype=D)
    whole = model.run(x).outputs
    first = model.run(x[:, :6])
    second = model.run(x[:, 6:], first.state)
    torch.testing.assert_close(torch.cat([first.outputs, second.outputs], 1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), whole[:, -1], rtol=1e-12, atol=1e-12)


def test_predict_adapt_and_metrics_count_bits_wrong():
    torch.manual_seed(1)
    algo = NTMLearner(ntm((5, 9), 8, controller_size=12, memory_size=16, memory_width=6)).double()
    b = copy_source(_request(min_length=5, max_length=5)).sample_tasks(0, 0, 4).to(dtype=D)
    logits = algo.model.run(torch.cat([b.support_x[:, 0], b.query_x[:, 0]], 1)).outputs[:, 6:]  # the 5 answer steps
    by_hand = ((logits > 0).double() - b.query_y[:, 0]).abs().sum((1, 2))
    assert torch.equal(bits_wrong(logits, b.query_y[:, 0]), by_hand)
    pred = algo.predict(b)
    assert pred.shape == b.query_y.shape and torch.equal(pred[:, 0], (logits > 0).double())
    for t in range(4):
        assert torch.equal(algo.adapt(b.support_x[t], b.support_y[t])(b.query_x[t]), pred[t])
    out = algo.meta_loss(b)
    assert out.metrics["bits_wrong"] == pytest.approx(float(by_hand.mean()))
    assert out.metrics["mse"] == pytest.approx(float(by_hand.mean()) / 40)  # fraction of the 5 x 8 bits
    res = fastadapt.evaluate(algo, [b])  # the engine's metric: mse of the predicted bits = bits wrong / (length x bits)
    assert res.metric == "mse" and res.scores == pytest.approx((by_hand / 40).tolist())


def test_ntm_trains_through_fastadapt_train_and_longer_lengths_evaluate(tmp_path):
    small = [
        'model.options={controller="lstm", controller_size=12, memory_size=16, memory_width=6}',
        "data.options={bits=8, min_length=1, max_length=4, test_length=4}",
        "data.meta_batch=2",
    ]
    res = fastadapt.train(
        "ntm-copy",
        [*small, "optim.steps=2", "eval.test_episodes=4", "eval.batch=2", f"run.out={tmp_path}", "run.progress=false"],
    )
    assert res.steps == 2 and res.tests["1shot"].metric == "mse" and 0 <= res.tests["1shot"].mean <= 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"bits_wrong", "mse", "loss"} <= set(rows[-1])
    code = cli_main(
        [
            "eval",
            str(tmp_path),
            "data.options={bits=8, min_length=1, max_length=4, test_length=9}",
            "eval.test_episodes=3",
        ]
    )
    assert code == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "evals").glob("*.json")]
    assert record["episodes"] == 3 and record["metric"] == "mse"


@pytest.mark.parametrize(
    "preset", ["ntm-copy-transformer", "ntm-recall", "lstm-copy", "lstm-recall", "transformer-copy"]
)
def test_sequence_presets_train_two_steps_from_the_cli(preset, tmp_path):
    shrink = {
        "ntm-copy-transformer": (
            'model.options={controller="transformer", controller_size=8, transformer_heads=2, memory_size=16, '
            "memory_width=6}"
        ),
        "ntm-recall": 'model.options={controller="lstm", controller_size=12, memory_size=16, memory_width=6}',
        "lstm-copy": "model.options={hidden_size=10}",
        "lstm-recall": "model.options={hidden_size=10}",
        "transformer-copy": "model.options={d_model=8, heads=2, layers=1}",
    }[preset]
    args = [
        "train",
        preset,
        shrink,
        "optim.steps=2",
        "data.meta_batch=2",
        "eval.test_episodes=2",
        "eval.batch=2",
        f"run.out={tmp_path}",
        "run.progress=false",
    ]
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 2


def test_a_sequence_model_is_required():
    with pytest.raises(ConfigError, match="sequence model"):
        NTMLearner(torch.nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="takes sequences"):
        ntm((1, 28, 28), 5)
