"""The inner loop in bounded memory (``algorithm.checkpoint_inner``): each inner step is recomputed in the backward
pass instead of kept, so K steps hold K sets of fast weights and, in the backward pass, one step's graph.

Each step is one :class:`torch.autograd.Function`: its forward takes ``phi_k`` (and Adam's moments, and the learnt
rates) and returns ``phi_{k+1}`` without a graph; its backward recomputes the step from ``phi_k`` with the graph
(``create_graph`` for second order: ``d phi_{k+1} / d phi_k = I - alpha * H``) and multiplies by the incoming
gradient. The recomputed step is the stored step's arithmetic, so the meta-gradient is the same
(``tests/test_checkpoint_inner.py``: float64, 1e-12, second and first order, learnt rates, Adam). The cost is one
more support forward and backward per step in the outer backward pass (``benchmarks/inner_memory.py``).

``torch.utils.checkpoint`` was measured first and kept about 3 MB a step of a Conv4-64 5-way support set alive
(half the stored path's), hence a function of our own. Its limits: the support loss may depend on the fast weights
and on tensors without a graph only (a closure over a tensor that requires grad is refused), and the meta-gradient
is differentiable once (no gradient of the meta-gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fastadapt.algorithms.updates import Params, Rate, adam_update, sgd_update
from fastadapt.core.errors import ConfigError


def differentiable(params: Mapping[str, Tensor]) -> bool:
    """Whether an outer backward pass can reach ``params`` (grad enabled and one of them requires grad): only then
    is there a graph to bound; otherwise the plain loop keeps nothing anyway."""
    return torch.is_grad_enabled() and any(v.requires_grad for v in params.values())


class _Step:
    """Inner step ``k`` as a function of flat tensors: the weights, Adam's two moments (Adam only), the rates that are
    tensors; the same update as :func:`fastadapt.algorithms.inner.inner_loop`'s."""

    def __init__(self, loss_of: Callable[..., Tensor], names: list[str], rates: Mapping[str, Rate], k: int, **how: Any):
        self.loss_of, self.names, self.k, self.how = loss_of, names, k, how
        self.rate_names = [n for n, r in rates.items() if isinstance(r, Tensor)]
        self.rates = dict(rates)

    def inputs(self, phi: Params, state: tuple[Params, Params] | None) -> tuple[Tensor, ...]:
        moments = () if state is None else (*state[0].values(), *state[1].values())
        return (*phi.values(), *moments, *(self.rates[n] for n in self.rate_names))

    def __call__(self, flat: Sequence[Tensor], graph: bool) -> tuple[Tensor, ...]:
        """``phi_{k+1}`` (and the moments) from ``flat``; ``graph``: keep the graph of the support gradient (the
        backward's recomputation of a second-order step)."""
        n, adam = len(self.names), self.how["optimizer"] == "adam"
        phi = dict(zip(self.names, flat[:n]))
        state = (dict(zip(self.names, flat[n : 2 * n])), dict(zip(self.names, flat[2 * n : 3 * n]))) if adam else None
        rates = {**self.rates, **dict(zip(self.rate_names, flat[(3 if adam else 1) * n :]))}
        second = graph and not self.how["first_order"]
        with torch.enable_grad():
            base = {k: v if second else v.detach().requires_grad_() for k, v in phi.items()}
            # aliases: partial derivatives, as torch.func.grad's (a prototype head computed from the encoder's weights
            # is an input of its own, not a path back to them); a tensor without a graph becomes a leaf
            at = {k: v.view_as(v) if v.requires_grad else v.detach().requires_grad_() for k, v in base.items()}
            loss = self.loss_of(at, *((self.k,) if self.how["per_step"] else ()))
            if not graph:  # the forward pass: everything the loss reaches is a leaf made here
                _check_closure(loss, [*base.values(), *at.values()])
            found = torch.autograd.grad(loss, list(at.values()), create_graph=second, allow_unused=True)
        grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(at.items(), found)}
        grads = grads if second else {k: g.detach() for k, g in grads.items()}
        if state is None:
            return tuple(sgd_update(phi, grads, rates).values())
        phi, (m, v) = adam_update(phi, grads, rates, state, self.k + 1, self.how["betas"], self.how["eps"])
        return (*phi.values(), *m.values(), *v.values())


def _check_closure(loss: Tensor, leaves: Collection[Tensor]) -> None:
    """Refuse a support loss that reaches a tensor requiring grad other than the fast weights (its gradient would be
    lost by the recomputation)."""
    own = {id(t) for t in leaves}
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in own:
            raise ConfigError(
                "checkpoint_inner: the support loss depends on a tensor with a graph other than the fast "
                "weights; use checkpoint_inner=False for this algorithm"
            )
        todo.extend(next_fn for next_fn, _ in node.next_functions)


class _Recomputed(torch.autograd.Function):
    """One inner step without a graph in the forward pass, recomputed with its graph in the backward pass."""

    @staticmethod
    def forward(ctx: Any, step: _Step, *flat: Tensor) -> tuple[Tensor, ...]:
        ctx.step, ctx.rng = step, torch.get_rng_state()
        ctx.save_for_backward(*flat)
        return tuple(t.detach() for t in step(flat, graph=False))

    @staticmethod
    def backward(ctx: Any, *grad_out: Tensor) -> tuple[Tensor | None, ...]:
        flat = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.set_rng_state(ctx.rng)
            out = ctx.step(flat, graph=True)
        wanted = [i for i, t in enumerate(flat) if t.requires_grad]
        pairs = [(o, g) for o, g in zip(out, grad_out) if o.requires_grad and g is not None]
        found = (
            torch.autograd.grad(
                [o for o, _ in pairs], [flat[i] for i in wanted], [g for _, g in pairs], allow_unused=True
            )
            if pairs and wanted
            else ()
        )
        grads: list[Tensor | None] = [None] * len(flat)
        for i, g in zip(wanted, found):
            grads[i] = g
        return (None, *grads)


def inner_loop(
    loss_of: Callable[..., Tensor],
    params: Params,
    rates: Sequence[Mapping[str, Rate]],
    first_order: bool = False,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    keep: Collection[int] = (),
    per_step: bool = False,
) -> dict[int, Params]:
    """:func:`fastadapt.algorithms.inner.inner_loop` (same arguments, same result) with every step recomputed in the
    outer backward pass from ``phi_k`` (and Adam's moments), so the steps' graphs are never held. One task at a time
    (not under ``vmap``)."""
    names = list(params)
    how = {"first_order": first_order, "optimizer": optimizer, "betas": betas, "eps": eps, "per_step": per_step}
    phi = dict(params)
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    state = (zeros, zeros) if optimizer == "adam" else None
    kept = {0: params} if 0 in keep else {}
    for k, step_rates in enumerate(rates):
        step = _Step(loss_of, names, step_rates, k, **how)
        out = _Recomputed.apply(step, *step.inputs(phi, state))
        phi = dict(zip(names, out[: len(names)]))
        if state is not None:
            state = (dict(zip(names, out[len(names) : 2 * len(names)])), dict(zip(names, out[2 * len(names) :])))
        if k + 1 in keep:
            kept[k + 1] = phi
    kept[len(rates)] = phi
    return kept


__all__ = ["differentiable", "inner_loop"]
