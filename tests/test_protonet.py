import torch
from torch import nn

from fastadapt.algorithms.protonet import ProtoNet, prototype_logits, prototypes
from fastadapt.core.episodes import TaskBatch
from fastadapt.data import EpisodeSampler, load_omniglot
from fastadapt.nn import Conv4


def _naive_logits(zs, ys, zq, ways):
    """Per query, per class: -||f(q) - mean_{y_i = n} f(x_i)||^2 with plain loops."""
    out = torch.empty(zq.shape[0], ways, dtype=zq.dtype)
    for n in range(ways):
        members = [zs[i] for i in range(len(ys)) if int(ys[i]) == n]
        c = sum(members) / len(members)
        for q in range(zq.shape[0]):
            out[q, n] = -sum((zq[q, d] - c[d]) ** 2 for d in range(zq.shape[1]))
    return out


def test_logits_equal_naive_per_query_per_class_computation():
    g = torch.Generator().manual_seed(0)
    t, ways, shots, q, d = 3, 4, 3, 5, 6
    zs = torch.randn(t, ways * shots, d, generator=g, dtype=torch.float64)
    ys = torch.stack([torch.randperm(ways * shots, generator=g) % ways for _ in range(t)])
    zq = torch.randn(t, q, d, generator=g, dtype=torch.float64)
    fast = prototype_logits(zq, prototypes(zs, ys, ways))
    for i in range(t):
        torch.testing.assert_close(fast[i], _naive_logits(zs[i], ys[i], zq[i], ways), rtol=1e-12, atol=1e-12)


def test_cosine_logits_are_scaled_cosines():
    zq = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    c = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    got = prototype_logits(zq, c, "cosine", scale=2.0)
    want = 2.0 * torch.tensor([[[1.0, 2**-0.5], [0.0, 2**-0.5]]], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def _batch(shots=2):
    s = EpisodeSampler(load_omniglot("vinyals", "val"), 5, shots, 3, seed=0)
    return s.sample(2)


def test_support_order_does_not_change_the_result():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8, batch_norm=False)).double()
    b = _batch().to(dtype=torch.float64)
    perm = torch.randperm(b.support_x.shape[1])
    shuffled = TaskBatch(b.support_x[:, perm], b.support_y[:, perm], b.query_x, b.query_y, b.classes)
    torch.testing.assert_close(algo.predict(b), algo.predict(shuffled), rtol=1e-10, atol=1e-10)


def test_adapt_does_not_change_the_model_and_matches_prototypes():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8, batch_norm=False)).double()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    b = _batch().to(dtype=torch.float64)
    pred = algo.adapt(b.support_x[0], b.support_y[0])
    logits = pred(b.query_x[0])
    assert logits.shape == (15, 5)
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k])
    # without BatchNorm, one task alone gives the same logits as the batched path
    torch.testing.assert_close(logits, algo.predict(b)[0])
    want = algo.model(b.support_x[0]).view(5, 2, -1).mean(1)
    torch.testing.assert_close(pred.state.prototypes, want)


def test_encoder_runs_once_per_batch():
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(784, 4)

        def forward(self, x):
            calls.append(x.shape[0])
            return self.lin(x.flatten(1))

    b = _batch()
    out = ProtoNet(Counting()).meta_loss(b)
    assert calls == [2 * (10 + 15)]
    assert out.loss.requires_grad and 0 <= out.metrics["acc"] <= 1


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=16))
    opt = torch.optim.Adam(algo.parameters(), 1e-3)
    s = EpisodeSampler(load_omniglot("vinyals", "train"), 5, 1, 5, seed=0)
    fixed = s.sample(8)
    first = algo.meta_loss(fixed).metrics["loss"]
    for _ in range(25):
        out = algo.meta_loss(s.sample(8))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert algo.meta_loss(fixed).metrics["loss"] < 0.7 * first


def test_predict_scores_each_task_on_its_own():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8)).double()  # with BatchNorm: statistics per task
    b = _batch().to(dtype=torch.float64)
    both = algo.predict(b)
    for i in range(len(b)):
        torch.testing.assert_close(both[i], algo.predict(b.select(slice(i, i + 1)))[0], rtol=1e-12, atol=1e-12)
