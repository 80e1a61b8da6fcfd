"""Explanations of one adapted prediction: why the predictor of ``algo.adapt(support)`` says what it says.

``explain(algo, task)`` adapts ``algo`` to the task's support set (or takes the predictor you give),
predicts its queries, and returns an :class:`Explanation` whose parts depend on the algorithm:

=====================  ===============================================================================
algorithm              what the explanation holds (besides outputs, probabilities, the prediction)
=====================  ===============================================================================
ProtoNet               ``distances [Q, N]`` to every prototype (squared Euclidean; ``1 - cos`` for the
                       cosine variant) and ``prototypes [N, D]``: the prediction is the nearest one
Matching Networks      ``attention [Q, S]``: the weights ``a(x_hat, x_i)`` over the support examples
                       (after full context embeddings when ``fce``); ``attention @ onehot`` is the output
MAML, FOMAML, Meta-SGD ``layers``: how far every parameter tensor moved in adaptation,
ANIL, Reptile, GrBAL   ``||phi - theta||`` and ``||phi - theta|| / ||theta||``; plus an input attribution
meta-LSTM              ``gates``: input and forget gates ``i_t``, ``f_t`` per step and parameter tensor
                       (mean over its coordinates), ``layers`` as above, an input attribution
MANN (``core="mann"``) ``memory``: read weightings ``[steps, R, slots]`` and write weightings
                       ``[steps, R, slots]`` while the support sequence is written and each query read
others (Baseline,      the generic fallback: an input attribution of the predicted class's output
linear probe, MANN
with ``core="lstm"``,
your own)
=====================  ===============================================================================

Input attribution (:func:`input_attribution`): integrated gradients (Sundararajan et al. 2017) by
Captum (``pip install fastadapt[explain]``), from an all-zero baseline, with Captum's convergence
delta (``sum(attribution) - (F(x) - F(0))``: how far the attribution is from complete); without
Captum, the plain input gradient of the same output. ``F`` is the predicted class's output for the
query *alone* (a batch of one): with batch-statistics BatchNorm a query's output depends on the
batch it is predicted in, and one query at a time is what the app does.

For the Neural Turing Machine (not an episodic algorithm) :func:`ntm_weightings` returns its read
and write weightings over time. Nothing here changes ``algo``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.baseline import HeadPredictor, head_logits
from fastadapt.algorithms.maml import FastWeightsPredictor
from fastadapt.algorithms.mann import MANN, previous_onehot
from fastadapt.algorithms.matching import MatchingNet, MatchingPredictor, MatchingState
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.algorithms.protonet import PrototypePredictor, prototype_logits
from fastadapt.core.contract import GateTracing
from fastadapt.core.errors import ConfigError
from fastadapt.nn.mann_memory import LRUMemoryCore, least_used, lru_write_weights

ATTRIBUTIONS = ("auto", "integrated_gradients", "gradient", "none")
IG_STEPS = 32  # integration points of integrated gradients (Gauss-Legendre, Captum's default rule)


@dataclass(frozen=True)
class Attribution:
    """Per-query input attribution of one output.

    method: ``integrated_gradients`` or ``gradient``; maps: ``[Q, *x_shape]``; target: ``[Q]`` the
    output index attributed (the predicted class; 0 for regression); output, baseline_output: ``[Q]``
    ``F(x)`` and ``F(0)``; delta: ``[Q]`` Captum's convergence delta (integrated gradients only).
    """

    method: str
    maps: Tensor
    target: Tensor
    output: Tensor
    baseline_output: Tensor | None = None
    delta: Tensor | None = None


@dataclass(frozen=True)
class LayerChange:
    """How far one parameter tensor moved in adaptation: ``change = ||phi - theta||``, ``relative = change / ||theta||``."""

    name: str
    change: float
    relative: float


@dataclass(frozen=True)
class Explanation:
    """One task's prediction and why. Shapes: ``Q`` queries, ``S`` support examples, ``N`` classes.

    outputs: ``[Q, N]`` what the predictor returned (logits or log-probabilities; ``[Q, *y]`` for
    regression); probabilities: ``[Q, N]`` ``softmax(outputs)`` (None for regression); predicted:
    ``[Q]``; kind: ``prototypes``, ``attention``, ``adaptation``, ``gates``, ``memory`` or
    ``attribution`` (the fallback); parts: the kind's tensors (see the module docstring); layers,
    attribution: when computed; notes: what was left out and why, in words.
    """

    algorithm: str
    kind: str
    support_y: Tensor
    outputs: Tensor
    probabilities: Tensor | None
    predicted: Tensor
    parts: dict[str, Any] = field(default_factory=dict)
    layers: tuple[LayerChange, ...] = ()
    attribution: Attribution | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self, maps: bool = True) -> dict[str, Any]:
        """JSON-ready: lists of floats, one entry per query under ``queries``; ``maps=False`` leaves the attribution maps out."""
        q = self.outputs.shape[0]
        out: dict[str, Any] = {
            "algorithm": self.algorithm,
            "kind": self.kind,
            "support_labels": self.support_y.tolist(),
            "notes": list(self.notes),
        }
        queries = []
        for i in range(q):
            item: dict[str, Any] = {
                "index": i,
                "outputs": _floats(self.outputs[i]),
                "predicted": _scalar(self.predicted[i]),
            }
            if self.probabilities is not None:
                item["probabilities"] = _floats(self.probabilities[i])
            for key in ("distances", "attention"):
                if key in self.parts:
                    item[key] = _floats(self.parts[key][i])
            if self.attribution is not None:
                a = self.attribution
                item["attribution"] = {
                    "method": a.method,
                    "target": int(a.target[i]),
                    "output": float(a.output[i]),
                    "sum": float(a.maps[i].sum()),
                }
                if a.baseline_output is not None:
                    item["attribution"]["baseline_output"] = float(a.baseline_output[i])
                if a.delta is not None:
                    item["attribution"]["convergence_delta"] = float(a.delta[i])
                if maps:
                    item["attribution"]["map"] = _floats(a.maps[i])
            queries.append(item)
        out["queries"] = queries
        if "prototypes" in self.parts:
            out["prototype_norms"] = _floats(self.parts["prototypes"].norm(dim=-1))
        if self.layers:
            out["layers"] = [{"name": c.name, "change": c.change, "relative": c.relative} for c in self.layers]
        if "gates" in self.parts:
            g = self.parts["gates"]
            out["gates"] = {
                "names": list(g.names),
                "input_gate": _floats(g.input_gate),
                "forget_gate": _floats(g.forget_gate),
            }
        if "read_weights" in self.parts:
            out["memory"] = {
                "read_weights": _floats(self.parts["read_weights"]),
                "write_weights": _floats(self.parts["write_weights"]),
                "phase": list(self.parts["phase"]),
            }
        return out


def _floats(t: Tensor) -> Any:
    return t.detach().double().cpu().tolist()


def _scalar(t: Tensor) -> Any:
    return t.item() if t.numel() == 1 else t.tolist()


# --- the explanation ---------------------------------------------------------------------------------


def explain(
    algo: nn.Module,
    task: Any,
    predictor: Any = None,
    attribution: str = "auto",
    steps: int = IG_STEPS,
    classes: int | None = None,
) -> Explanation:
    """Explain ``algo``'s predictions for ``task.query_x`` after adapting to ``task.support_x``, ``task.support_y``.

    Args:
        algo: a (trained) algorithm; only read.
        task: anything with ``support_x [S, *x]``, ``support_y [S]``, ``query_x [Q, *x]`` (an
            :class:`~fastadapt.Episode`, ``TaskBatch.task(i)``).
        predictor: ``algo.adapt(support_x, support_y)`` when you already have it (else it is made here).
        attribution: ``auto`` (integrated gradients with Captum installed, else the input gradient),
            ``integrated_gradients``, ``gradient`` or ``none``. ``auto`` attributes for the
            gradient-based and meta-LSTM learners and for the fallback, not for ProtoNet, Matching
            Networks and MANN, whose explanation is their own state (ask for one to get it anyway).
        steps: integration points of integrated gradients.
        classes: keep the first ``classes`` outputs (a fixed-width head used for fewer classes).
    """
    if attribution not in ATTRIBUTIONS:
        raise ConfigError(f"attribution={attribution!r} is unknown; choose one of {', '.join(ATTRIBUTIONS)}")
    sx, sy, qx = task.support_x, task.support_y, task.query_x
    if predictor is None:
        predictor = algo.adapt(sx, sy)
    with torch.no_grad():
        outputs = predictor(qx)
    classification = not sy.is_floating_point()
    if classification and classes is not None:
        outputs = outputs[:, :classes]
    probs = torch.softmax(outputs.double(), dim=-1).to(outputs.dtype) if classification else None
    predicted = outputs.argmax(-1) if classification else outputs.detach()
    name = type(algo).__name__
    kind, parts, layers, notes = "attribution", {}, (), []
    own_state = False
    if isinstance(predictor, PrototypePredictor):
        kind, parts, own_state = "prototypes", prototype_parts(predictor, qx), True
    elif isinstance(predictor, MatchingPredictor):
        kind, parts, own_state = "attention", {"attention": matching_attention(predictor, qx)}, True
        if predictor.net.fce:
            notes.append("full context embeddings: attention after the support LSTM and the attention LSTM")
    elif isinstance(predictor, FastWeightsPredictor):
        kind, layers = "adaptation", layer_changes(predictor.init, predictor.params)
    elif isinstance(algo, GateTracing):
        kind, parts = "gates", {"gates": algo.gate_trace(sx, sy)}
        if isinstance(algo, MetaLSTM):
            layers = meta_lstm_changes(algo, sx, sy)
    elif isinstance(algo, MANN) and isinstance(algo.core, LRUMemoryCore):
        kind, parts, own_state = "memory", mann_memory_trace(algo, sx, sy, qx), True
    else:
        notes.append(
            f"{name} has no specific explanation: input attribution of the predicted output (the generic fallback)"
        )
    method = attribution
    if attribution == "auto":
        method = "none" if own_state else ("integrated_gradients" if captum_available() else "gradient")
        if method == "gradient":
            notes.append(
                "Captum is not installed (pip install fastadapt[explain]): plain input gradients instead of integrated gradients"
            )
    attr = None
    if method != "none" and qx.is_floating_point():
        forward = differentiable_forward(algo, predictor)
        target = predicted if classification else torch.zeros(len(qx), dtype=torch.long)
        model = getattr(algo, "model", None)
        attr = input_attribution(
            forward,
            qx,
            target,
            method,
            steps,
            batch_free=isinstance(model, nn.Module) and not uses_batch_statistics(model),
        )
        if attr is None:
            notes.append(f"{name}'s predictor is not differentiable in its input: no attribution")
    return Explanation(
        name,
        kind,
        sy,
        outputs.detach(),
        None if probs is None else probs.detach(),
        predicted,
        parts,
        tuple(layers),
        attr,
        tuple(notes),
    )


def prototype_parts(predictor: PrototypePredictor, query_x: Tensor) -> dict[str, Tensor]:
    """``distances [Q, N]`` of the query embeddings to the prototypes (squared Euclidean, or ``1 - cos``) and ``prototypes [N, D]``.

    Labels with no example (a predictor after ``reset``) are at distance ``inf``.
    """
    state = predictor.state
    with torch.no_grad():
        z = predictor.model(query_x)
    if state.distance == "cosine":
        d = 1 - F.normalize(z, dim=-1) @ F.normalize(state.prototypes, dim=-1).T
    else:
        d = -prototype_logits(z.unsqueeze(0), state.prototypes.unsqueeze(0), "euclidean")[0]
    d = d.masked_fill(predictor.counts == 0, float("inf"))
    return {"distances": d, "prototypes": state.prototypes}


def matching_attention(predictor: MatchingPredictor, query_x: Tensor) -> Tensor:
    """``a(x_hat, x_i)``: ``[Q, S]`` attention of each query over the predictor's support examples (rows sum to 1)."""
    net: MatchingNet = predictor.net
    state = predictor.state
    if state is None:
        raise ConfigError("this Matching Networks predictor holds no support example; adapt it first")
    with torch.no_grad():
        z = net.encode(query_x.unsqueeze(0))
        return net.attention(MatchingState(state.embeddings.unsqueeze(0), state.onehot.unsqueeze(0)), z)[0]


def layer_changes(init: dict[str, Tensor], params: dict[str, Tensor]) -> list[LayerChange]:
    """``||phi - theta||`` and ``||phi - theta|| / ||theta||`` per parameter tensor, in the model's order."""
    out = []
    for name, phi in params.items():
        theta = init[name].detach().double()
        change = float((phi.detach().double() - theta).norm())
        out.append(LayerChange(name, change, change / max(float(theta.norm()), 1e-12)))
    return out


def meta_lstm_changes(algo: MetaLSTM, support_x: Tensor, support_y: Tensor) -> list[LayerChange]:
    """How far the meta-LSTM moved each of the learner's parameter tensors (``c_T`` against ``c_0``)."""
    with torch.no_grad():
        theta, _ = algo.unroll(support_x.unsqueeze(0), support_y.unsqueeze(0))
        return layer_changes(algo.unflatten(algo.initial_theta()), algo.unflatten(theta[0]))


def mann_memory_trace(algo: MANN, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> dict[str, Any]:
    """Read and write weightings of the MANN's memory while ``adapt`` writes the support set and each query is read.

    Returns ``read_weights``, ``write_weights`` ``[S + Q, R, slots]`` (rows: the support steps in the
    order ``adapt`` presents them, then one step per query, each from the memory after the support
    set), ``phase`` (``"support"`` / ``"query"`` per row), ``order [S]`` (the presentation order) and
    ``query_outputs [Q, C]``, equal to the predictor's outputs. ``adapt`` presents the support set in
    one fixed shuffled order (:meth:`MANN.adapt` without a generator); it is reproduced here.
    """
    core: LRUMemoryCore = algo.core  # type: ignore[assignment]
    s = support_y.shape[0]
    order = torch.rand(s, generator=torch.Generator().manual_seed(0)).argsort()  # MANN.adapt's default order
    x, y = support_x[order], support_y[order]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    prev = previous_onehot(y.unsqueeze(0), algo.ways, dtype)[0]
    reads, writes = [], []
    with torch.no_grad():
        feats = algo.model(x)
        state = core.initial_state(1, feats)
        for t in range(s):
            _, new = core.step(feats[t : t + 1], prev[t : t + 1], state)
            writes.append(
                lru_write_weights(
                    state.read_weights, least_used(state.usage, core.read_heads), core.alpha(new.controller[0])
                )[0]
            )
            reads.append(new.read_weights[0])
            state = new
        q = query_x.shape[0]
        last = F.one_hot(y[-1:], algo.ways).to(dtype).expand(q, -1)
        rep = type(state)(
            *[
                v.expand(q, *v.shape[1:]) if isinstance(v, Tensor) else tuple(c.expand(q, *c.shape[1:]) for c in v)
                for v in state
            ]
        )
        out, qstate = core.step(algo.model(query_x), last, rep)
        qw = lru_write_weights(
            rep.read_weights, least_used(rep.usage, core.read_heads), core.alpha(qstate.controller[0])
        )
    return {
        "read_weights": torch.cat([torch.stack(reads), qstate.read_weights]),
        "write_weights": torch.cat([torch.stack(writes), qw]),
        "phase": ["support"] * s + ["query"] * q,
        "order": order,
        "query_outputs": out,
    }


def ntm_weightings(ntm: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A Neural Turing Machine's ``(outputs [T, B, out], read_weights [T, B, R, N], write_weights [T, B, W, N])`` over ``inputs [T, B, in]``."""
    with torch.no_grad():
        out = ntm(inputs, record=True)
    return out.outputs, out.read_weights, out.write_weights


# --- input attribution ---------------------------------------------------------------------------------


def captum_available() -> bool:
    return importlib.util.find_spec("captum") is not None


def differentiable_forward(algo: nn.Module, predictor: Any) -> Callable[[Tensor], Tensor]:
    """``x [B, *x] -> outputs [B, N]`` with a graph to ``x``: the predictor itself, or, where it runs under
    ``no_grad`` (ProtoNet, Baseline, linear probe), the same computation with grad."""
    if isinstance(predictor, PrototypePredictor):

        def proto(x: Tensor) -> Tensor:
            state = predictor.state
            logits = prototype_logits(
                predictor.model(x).unsqueeze(0), state.prototypes.unsqueeze(0), state.distance, state.scale
            )[0]
            return (
                logits.masked_fill(predictor.counts == 0, float("-inf"))
                if bool((predictor.counts == 0).any())
                else logits
            )

        return proto
    if isinstance(predictor, HeadPredictor):

        def head(x: Tensor) -> Tensor:
            model = predictor.model
            z = inner_forward(model, x).flatten(1)
            return head_logits(F.normalize(z, dim=-1) if predictor.normalize else z, predictor.head)

        return head
    return predictor


def inner_forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` on copies of its buffers (the module is never changed), with a graph."""
    from torch.func import functional_call

    return functional_call(model, (dict(model.named_parameters()), inner.frozen_state(model)), (x,))


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``model`` normalises with the statistics of the batch it sees (outputs depend on the batch)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        for m in model.modules()
    )


def input_attribution(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    method: str = "gradient",
    steps: int = IG_STEPS,
    batch_free: bool = False,
) -> Attribution | None:
    """Attribution of output ``target[q]`` of ``forward(x[q:q+1])`` to the input, query by query (see the module docstring).

    ``method``: ``integrated_gradients`` (Captum, zero baseline, with the convergence delta) or
    ``gradient`` (``d F / d x``). None when ``forward`` gives no gradient with respect to ``x``.
    ``batch_free``: ``forward`` treats examples independently, so the ``steps`` points of the path run
    as one batch; otherwise one at a time (batch-statistics BatchNorm would mix them).

    With batch-statistics BatchNorm the output barely changes along most of the path (the first
    normalisation removes the input's scale), so the integral is concentrated near the baseline and
    the convergence delta is large: it is reported, not hidden.
    """
    if method not in ("integrated_gradients", "gradient"):
        raise ConfigError(f"attribution method {method!r} is unknown; choose integrated_gradients or gradient")

    def one(inp: Tensor) -> Tensor:
        out = forward(inp)
        return out.reshape(out.shape[0], -1)

    maps, outs, base_outs, deltas = [], [], [], []
    with torch.enable_grad():
        probe = x[:1].detach().clone().requires_grad_(True)
        if not one(probe).requires_grad:
            return None
        for i in range(x.shape[0]):
            xi, t = x[i : i + 1].detach(), int(target[i])
            zero = torch.zeros_like(xi)
            with torch.no_grad():
                outs.append(one(xi)[0, t])
                base_outs.append(one(zero)[0, t])
            if method == "integrated_gradients":
                from captum.attr import IntegratedGradients

                attr, delta = IntegratedGradients(one).attribute(
                    xi,
                    baselines=zero,
                    target=t,
                    n_steps=steps,
                    internal_batch_size=steps if batch_free else 1,
                    return_convergence_delta=True,
                )
                deltas.append(delta.reshape(()).detach())
            else:
                xg = xi.clone().requires_grad_(True)
                (attr,) = torch.autograd.grad(one(xg)[0, t], xg)
            maps.append(attr[0].detach())
    return Attribution(
        method,
        torch.stack(maps),
        target.detach().long().clone(),
        torch.stack(outs),
        torch.stack(base_outs),
        torch.stack(deltas) if deltas else None,
    )


__all__ = [
    "ATTRIBUTIONS",
    "Attribution",
    "Explanation",
    "LayerChange",
    "captum_available",
    "differentiable_forward",
    "explain",
    "input_attribution",
    "layer_changes",
    "mann_memory_trace",
    "matching_attention",
    "meta_lstm_changes",
    "ntm_weightings",
    "prototype_parts",
    "uses_batch_statistics",
]
