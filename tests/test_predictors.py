"""The declared Predictor (fastadapt/core/contract.py) and its shared pieces (fastadapt/algorithms/predictors.py):
every built-in predictor keeps the protocol, the one sliding window keeps each learner's sizes, and a user's
algorithm from outside the package, whose predictor explains itself, is trained, updated online and explained
through the CLI with its own explanation."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt import cli
from fastadapt.algorithms.baseline import Baseline
from fastadapt.algorithms.mann import MANN
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.algorithms.predictors import recent, slide
from fastadapt.core.contract import ExplainablePredictor, Predictor
from fastadapt.core.errors import DataError
from fastadapt.data.streams import ClassStream
from helpers import labelled, mlp

DIM = 4


def embedder() -> torch.nn.Module:
    return mlp(0, hidden=(8,), inp=DIM, out=5).double()


BUILT_IN = {  # name -> (algorithm, whether its predictor explains itself)
    "maml": (lambda: fastadapt.MAML(mlp(0, inp=DIM, out=3).double()), True),
    "anil": (lambda: fastadapt.ANIL(mlp(0, inp=DIM, out=3).double(), head="net.4"), True),
    "protonet": (lambda: fastadapt.ProtoNet(embedder()), True),
    "matching": (lambda: MatchingNet(embedder(), fce=False), True),
    "meta_lstm": (lambda: MetaLSTM(mlp(0, inp=DIM, out=3).double(), inner_steps=1, hidden_size=4).double(), True),
    "mann": (lambda: MANN(torch.nn.Flatten(), ways=3, input_shape=(DIM,), controller_size=8).double(), True),
    "baseline": (lambda: Baseline(embedder(), num_classes=10, embedding_dim=5, finetune_steps=1), False),
}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_built_in_predictor_keeps_the_declared_protocol(name):
    make, explains = BUILT_IN[name]
    predictor = make().adapt(*labelled(6, 0, ways=3, dim=DIM))
    assert isinstance(predictor, Predictor)
    assert isinstance(predictor, ExplainablePredictor) == explains
    if explains:
        parts = predictor.explain(labelled(2, 1, ways=3, dim=DIM)[0])
        assert isinstance(parts, dict) and isinstance(parts["kind"], str)


@pytest.mark.parametrize(
    ("name", "support", "window"), [("maml", 6, 10), ("maml", 12, 12), ("meta_lstm", 6, 10), ("matching", 6, 50)]
)
def test_the_shared_window_keeps_each_learners_size(name, support, window):
    predictor = BUILT_IN[name][0]().adapt(*labelled(support, 0, ways=3, dim=DIM))
    assert predictor.window == window and len(predictor.window_y) == support
    for i in range(window):  # the window fills up, then slides
        predictor.update(*labelled(1, 10 + i, ways=3, dim=DIM))
    assert len(predictor.window_y) == window
    predictor.configure(window=3)
    assert predictor.window == 3 and len(predictor.window_x) == 3


def test_slide_checks_the_batch_and_leaves_the_window_alone():
    wx, wy = recent(*labelled(6, 0, dim=DIM), size=4)
    before = wx.clone()
    with pytest.raises(DataError, match="label -1 is negative"):
        slide(wx, wy, wx[:1], torch.tensor([-1]), 4)
    x, y = labelled(3, 1, dim=DIM)
    nx, ny = slide(wx, wy, x, y, 4)
    assert torch.equal(wx, before) and torch.equal(nx, torch.cat([before[-1:], x])) and torch.equal(ny[1:], y)


# --- a user's algorithm, from outside the package ---------------------------------------------------------

USER = '''
import torch
from torch import nn

from fastadapt import ClassDataset, MetaOutput


def blobs(request):
    """10 classes of 4-d Gaussian blobs, 20 examples each; another draw per part."""
    g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[request.part])
    centers = torch.randn(10, 4, generator=g) * 3
    x = centers.repeat_interleave(20, 0) + torch.randn(200, 4, generator=g)
    return ClassDataset.from_arrays(x, torch.arange(10).repeat_interleave(20), name=f"blobs-{request.part}")


class Net(nn.Module):
    def __init__(self, input_shape, out_features=None):
        super().__init__()
        self.lin = nn.Linear(input_shape[-1], 6)

    def forward(self, x):
        return self.lin(x)


class CentroidPredictor:
    """A user's Predictor: nearest running class mean, which explains itself by its margins."""

    def __init__(self, model, x, y):
        self.model, self.sums, self.counts = model, torch.zeros(0, 6), torch.zeros(0)
        self.update(x, y)

    def centroids(self):
        return self.sums / self.counts.clamp_min(1).unsqueeze(1)

    def __call__(self, x):
        with torch.no_grad():
            return -torch.cdist(self.model(x), self.centroids()) ** 2

    def update(self, x, y):
        n = max(len(self.counts), int(y.max()) + 1)
        sums, counts = torch.zeros(n, 6), torch.zeros(n)
        sums[: len(self.counts)], counts[: len(self.counts)] = self.sums, self.counts
        with torch.no_grad():
            sums.index_add_(0, y, self.model(x))
        self.sums, self.counts = sums, counts.index_add_(0, y, torch.ones(len(y)))

    def reset(self):
        self.sums, self.counts = self.sums[:0], self.counts[:0]

    def configure(self, **options):
        return self

    def explain(self, x):
        with torch.no_grad():
            d = (torch.cdist(self.model(x), self.centroids()) ** 2).sort(dim=-1).values
        return {"kind": "centroid-margin", "margin": d[:, 1] - d[:, 0], "seen": int(self.counts.sum()),
                "notes": ["the margin between the nearest and the second centroid"], "attribute": False}


class Centroids(nn.Module):
    needs_head = False

    def __init__(self, model):
        super().__init__()
        self.model = model

    def _logits(self, sx, sy, qx):
        predictor = CentroidPredictor(self.model, sx, sy)
        c = (nn.functional.one_hot(sy).T.float() @ self.model(sx)) / predictor.counts.unsqueeze(1)
        return -torch.cdist(self.model(qx), c) ** 2

    def meta_loss(self, batch):
        logits = torch.stack([self._logits(*t) for t in zip(batch.support_x, batch.support_y, batch.query_x)])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        acc = float((logits.argmax(-1) == batch.query_y).float().mean())
        return MetaOutput(loss, {"loss": float(loss.detach()), "acc": acc})

    def adapt(self, support_x, support_y):
        return CentroidPredictor(self.model, support_x, support_y)

    def predict(self, batch):
        with torch.no_grad():
            tasks = zip(batch.support_x, batch.support_y, batch.query_x)
            return torch.stack([self.adapt(sx, sy)(qx) for sx, sy, qx in tasks])
'''

CONFIG = """
[data]
target = "userpred:blobs"
train_part = "train"
val_part = "val"
test_part = "test"
ways = 3
shots = 2
queries = 3
meta_batch = 2

[model]
target = "userpred:Net"

[algorithm]
target = "userpred:Centroids"

[optim]
steps = 3
lr = 0.01

[eval]
val_every = 0
test_episodes = 0

[run]
progress = false
threads = 1
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "userpred.py").write_text(USER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("userpred", None)


def test_a_users_predictor_is_trained_updated_online_and_explained_by_its_own_method(user_module, tmp_path, capsys):
    (tmp_path / "user.toml").write_text(CONFIG)
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(tmp_path / "user.toml"), f"run.out={run_dir}"]) == 0, capsys.readouterr().err
    run = fastadapt.load_run(run_dir)
    algo = run.algorithm
    assert type(algo).__module__ == "userpred"

    # updated online: by hand, then test-then-train over a stream of its classes
    data = sys.modules["userpred"].blobs(type("Request", (), {"part": "test"})())
    sx, sy = data.data[[0, 20, 40]], torch.tensor([0, 1, 2])
    predictor = algo.adapt(sx, sy)
    assert isinstance(predictor, ExplainablePredictor)
    predictor.update(data.data[[1, 21]], torch.tensor([0, 1]))
    episode = fastadapt.Episode(sx, sy, data.data[[2, 22, 42]], torch.tensor([0, 1, 2]))
    own = fastadapt.explain(algo, episode, predictor=predictor)
    assert own.kind == "centroid-margin" and own.parts["seen"] == 5 and own.attribution is None
    assert own.notes == ("the margin between the nearest and the second centroid",)
    online = fastadapt.online(algo, ClassStream(data, [[0, 1, 2], [3, 4, 5]], [4, 4], per_class=2), probe=False)
    assert np.isfinite(online.error).all() and online.error[-1] < 0.5

    # explained through the CLI: the JSON holds the predictor's own parts
    stem = tmp_path / "why"
    args = ["explain", str(run_dir), "--episode", "0", "--queries", "3", "--out", str(stem)]
    assert cli.main(args) == 0, capsys.readouterr().err
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["kind"] == "centroid-margin" and record["notes"] == list(own.notes)
    from fastadapt.apps.explain import episode_task

    task = episode_task(run, 0, 3).task
    expected = algo.adapt(task.support_x, task.support_y).explain(task.query_x)
    assert record["parts"]["seen"] == len(task.support_y) == 6
    np.testing.assert_allclose(record["parts"]["margin"], expected["margin"].double().numpy(), rtol=1e-6)
    assert all("attribution" not in q for q in record["queries"])
    assert [q["predicted"] for q in record["queries"]] == [int(np.argmax(q["outputs"])) for q in record["queries"]]
    assert stem.with_suffix(".png").stat().st_size > 1000
