"""fastadapt.nn.pool: max-pooling through the channels-last kernel's indices gives torch's values, gradients and
second-order gradients bit for bit, and falls back to ``F.max_pool2d`` wherever that argument does not hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from fastadapt.nn import pool
from fastadapt.nn.backbones import Conv4
from fastadapt.nn.pool import MaxPool2d, max_pool2d
from helpers import conv4


@pytest.fixture(autouse=True)
def every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' small tensors take the channels-last path too (in use it starts at ``pool.SMALLEST`` elements)."""
    monkeypatch.setattr(pool, "SMALLEST", 1)


def test_the_path_taken_depends_on_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "SMALLEST", 1000)
    small, large = torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 4, 16, 16, requires_grad=True)
    assert type(max_pool2d(small, 2).grad_fn).__name__.startswith("MaxPool2DWithIndicesBackward")
    assert type(max_pool2d(large, 2).grad_fn).__name__ == "_IndexedMaxPoolBackward"


def ties(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """float64 values in {0, 1, 2}: most 2x2 windows hold a tie, which is where first-maximum rules differ."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).double()


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 9, 7), (1, 64, 28, 28), (2, 3, 3, 3)])
@pytest.mark.parametrize("kernel", [2, 3, (2, 3)])
def test_values_and_gradients_are_torchs_with_ties(shape: tuple[int, ...], kernel: int | tuple[int, int]) -> None:
    x = ties(shape).requires_grad_()
    ref, out = F.max_pool2d(x, kernel), max_pool2d(x, kernel)
    assert torch.equal(out, ref)
    grad_out = torch.randn(ref.shape, dtype=torch.float64, requires_grad=True)
    g_ref = torch.autograd.grad(ref, x, grad_out, create_graph=True)[0]
    g_out = torch.autograd.grad(out, x, grad_out, create_graph=True)[0]
    assert torch.equal(g_out, g_ref)
    assert g_out.is_contiguous()
    probe = torch.randn_like(g_ref)  # second order: d<probe, dL/dx>/d grad_out, as MAML's meta-gradient takes it
    assert torch.equal(
        torch.autograd.grad((g_out * probe).sum(), grad_out)[0], torch.autograd.grad((g_ref * probe).sum(), grad_out)[0]
    )


def test_nan_and_infinities_pick_torchs_element() -> None:
    x = ties((2, 3, 6, 6), seed=1)
    x[0, 0, 0, 0], x[0, 0, 1, 1], x[1, 2, 4, 5] = float("nan"), float("nan"), float("inf")
    x[1, 1, 2, 2] = float("-inf")
    x.requires_grad_()
    ref, out = F.max_pool2d(x, 2), max_pool2d(x, 2)
    assert torch.equal(ref.isnan(), out.isnan()) and torch.equal(ref.nan_to_num(), out.nan_to_num())
    g = torch.ones_like(ref)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_float32_and_bfloat16_values_are_torchs() -> None:
    x = torch.randn(4, 16, 14, 14)
    assert torch.equal(max_pool2d(x, 2), F.max_pool2d(x, 2))
    xb = x.bfloat16()
    assert torch.equal(max_pool2d(xb, 2), F.max_pool2d(xb, 2))


def test_inside_vmap_and_grad_transforms_it_is_the_plain_kernel() -> None:
    x = ties((3, 2, 4, 6, 6))
    assert torch.equal(vmap(lambda t: max_pool2d(t, 2))(x), vmap(lambda t: F.max_pool2d(t, 2))(x))
    g = torch.func.grad(lambda t: max_pool2d(t, 2).sum())(x[0])
    assert torch.equal(g, torch.func.grad(lambda t: F.max_pool2d(t, 2).sum())(x[0]))


@pytest.mark.parametrize(
    "module",
    [
        MaxPool2d(2, stride=1),
        MaxPool2d(3, stride=2, padding=1),
        MaxPool2d(2, ceil_mode=True),
        MaxPool2d(2, dilation=2),
        MaxPool2d(2, return_indices=True),
    ],
)
def test_other_configurations_are_nn_maxpool2d(module: MaxPool2d) -> None:
    x = ties((2, 3, 9, 9)).requires_grad_()
    plain = nn.MaxPool2d(
        module.kernel_size, module.stride, module.padding, module.dilation, module.return_indices, module.ceil_mode
    )
    out, ref = module(x), plain(x)
    if module.return_indices:
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        return
    assert torch.equal(out, ref)
    assert torch.equal(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


def test_channels_last_input_keeps_its_layout() -> None:
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    out = MaxPool2d(2)(x)
    assert torch.equal(out, F.max_pool2d(x, 2))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv4_matches_the_papers_block_order_and_pooling_to_second_order() -> None:
    """The whole backbone in float64: Conv4 (pool before ReLU, fastadapt.nn.pool's pooling) against the same weights
    as conv -> BatchNorm -> ReLU -> nn.MaxPool2d: the logits, the gradient of one inner SGD step's query loss
    (second order, through the step, as MAML's meta-gradient) equal bit for bit."""
    model = conv4(3, 5, hidden=8, side=28)
    reference = Conv4(1, 5, hidden=8, image_size=28).double()
    reference.load_state_dict(model.state_dict())
    for i, block in enumerate(reference.features):
        reference.features[i] = nn.Sequential(block[0], block[1], nn.ReLU(), nn.MaxPool2d(2))
    assert [type(m).__name__ for m in model.features[0]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    assert any(type(m) is MaxPool2d for m in model.modules())
    g = torch.Generator().manual_seed(4)
    xs, ys = torch.randn(5, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(5)
    xq, yq = torch.randn(10, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(10) % 5

    def meta_gradient(m: nn.Module) -> tuple[torch.Tensor, ...]:
        names, params = zip(*m.named_parameters())
        inner = F.cross_entropy(m(xs), ys)
        grads = torch.autograd.grad(inner, params, create_graph=True)
        fast = {n: p - 0.4 * d for n, p, d in zip(names, params, grads)}
        outer = F.cross_entropy(torch.func.functional_call(m, fast, (xq,)), yq)
        return (outer.detach(), *torch.autograd.grad(outer, params))

    assert torch.equal(model(xq), reference(xq))
    for a, b in zip(meta_gradient(model), meta_gradient(reference)):
        assert torch.equal(a, b)


def saved_bytes(fn, x: torch.Tensor) -> int:  # noqa: ANN001
    """Bytes autograd keeps for the backward pass of ``fn(x)``, each storage counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def test_the_block_keeps_less_for_backward_than_torchs() -> None:
    """Conv4's pool -> ReLU keeps the int64 indices and the pooled ReLU output (3/4 of the float32 input's bytes);
    torch's ReLU -> pool keeps the ReLU output and the indices (3/2)."""
    x = torch.randn(4, 16, 12, 12, requires_grad=True)
    ours = saved_bytes(lambda t: F.relu(max_pool2d(t, 2)), x)
    torchs = saved_bytes(lambda t: F.max_pool2d(F.relu(t), 2), x)
    assert ours == x.numel() * 4 * 3 // 4
    assert torchs == x.numel() * 4 * 3 // 2
