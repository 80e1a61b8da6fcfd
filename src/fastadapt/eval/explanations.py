"""Explanations of one adapted prediction: why the predictor of ``algo.adapt(support)`` says what it says.

:func:`explain` adapts ``algo`` to a task's support set (or takes the predictor you give), predicts its queries
and asks the predictor for its own parts (:class:`~fastadapt.core.contract.ExplainablePredictor`); any other
predictor gets the generic explanation, an input attribution (:func:`input_attribution`). For the Neural Turing
Machine :func:`ntm_weightings` returns its read and write weightings. Nothing here changes ``algo``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.algorithms.predictors import LayerChange, layer_changes
from fastadapt.core.contract import GateTracing
from fastadapt.core.errors import ConfigError

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
class Explanation:
    """One task's prediction and why. Shapes: ``Q`` queries, ``S`` support examples, ``N`` classes.

    outputs: ``[Q, N]`` what the predictor returned (logits or log-probabilities; ``[Q, *y]`` for
    regression); probabilities: ``[Q, N]`` ``softmax(outputs)`` (None for regression); predicted:
    ``[Q]``; kind: ``prototypes``, ``attention``, ``adaptation``, ``gates``, ``memory``, a user
    predictor's own word (``own`` by default) or ``attribution`` (the fallback); parts: what the
    predictor's ``explain`` returned (see the module docstring); layers, attribution: when computed;
    notes: what was left out and why, in words.
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
        """JSON-ready: lists of floats, one entry per query under ``queries``, a predictor's own parts under
        ``parts``; ``maps=False`` leaves the attribution maps out."""
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
        own = {k: to_json(v) for k, v in self.parts.items() if k not in SHOWN}
        if own:  # a predictor's own parts (a user's explain): under "parts", as JSON
            out["parts"] = own
        return out


SHOWN = ("distances", "attention", "prototypes", "gates", "read_weights", "write_weights", "phase", "order")
SHOWN += ("query_outputs",)  # the built-in parts to_dict writes in its own layout (or leaves out)


def to_json(value: Any) -> Any:
    """A part as JSON: tensors as (nested) lists of floats (integer tensors as ints), mappings, sequences and
    dataclasses item by item, numbers, strings, booleans and None as they are, anything else as its ``str``."""
    if isinstance(value, Tensor):
        return _floats(value) if value.is_floating_point() else value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


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

    It adapts ``algo`` to the task's support set (or takes the predictor you give), predicts its queries,
    and asks the predictor: a predictor with ``explain(x)``
    (:class:`~fastadapt.core.contract.ExplainablePredictor`) gives its own parts; the built-in ones:

    =====================  ===============================================================================
    predictor of           its parts (besides outputs, probabilities, the prediction)
    =====================  ===============================================================================
    ProtoNet               ``distances [Q, N]`` to every prototype and ``prototypes [N, D]``
    Matching Networks      ``attention [Q, S]``: the weights ``a(x_hat, x_i)`` over the support examples
    MAML, FOMAML, Meta-SGD ``layers``: ``||phi - theta||`` and ``||phi - theta|| / ||theta||`` per parameter
    ANIL, Reptile, ALFA,   tensor; plus an input attribution
    GrBAL
    meta-LSTM              ``gates`` per step and parameter tensor, ``layers``, an input attribution
    MANN (``core="mann"``) ``read_weights``, ``write_weights`` ``[steps, R, slots]``: the memory's weightings
    =====================  ===============================================================================

    Any other predictor (Baseline, the linear probe, MANN with ``core="lstm"``, yours without ``explain``)
    gets the generic explanation: an input attribution (:func:`input_attribution`) of the predicted output,
    by integrated gradients (Captum, ``pip install fastadapt[explain]``) or the plain input gradient.

    Args:
        algo: a (trained) algorithm; only read.
        task: anything with ``support_x [S, *x]``, ``support_y [S]``, ``query_x [Q, *x]`` (an
            :class:`~fastadapt.Episode`, ``TaskBatch.task(i)``).
        predictor: ``algo.adapt(support_x, support_y)`` when you already have it (else it is made here).
        attribution: ``auto`` (integrated gradients with Captum installed, else the input gradient),
            ``integrated_gradients``, ``gradient`` or ``none``. ``auto`` attributes unless the predictor's
            own explanation says ``attribute: False`` (ProtoNet, Matching Networks and MANN, whose
            explanation is their own state; ask for one to get it anyway).
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
    kind, parts, layers, notes, own_state = "attribution", {}, (), [], False
    own = getattr(predictor, "explain", None)
    given = own(qx) if callable(own) else None
    if given is not None:  # the predictor explains itself (ExplainablePredictor)
        parts = dict(given)
        kind, layers = str(parts.pop("kind", "own")), tuple(parts.pop("layers", ()))
        notes += [str(n) for n in parts.pop("notes", ())]
        own_state = not parts.pop("attribute", True)
    elif isinstance(algo, GateTracing):  # an algorithm that traces its learnt optimiser's gates
        kind, parts = "gates", {"gates": algo.gate_trace(sx, sy)}
    else:
        notes.append(
            f"{name} has no specific explanation: input attribution of the predicted output (the generic fallback)"
        )
    method = attribution
    if attribution == "auto":
        method = "none" if own_state else ("integrated_gradients" if captum_available() else "gradient")
        if method == "gradient":
            notes.append(
                "Captum is not installed (pip install fastadapt[explain]): plain "
                "input gradients instead of integrated gradients"
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


def ntm_weightings(ntm: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A Neural Turing Machine's ``(outputs [T, B, out], read_weights [T, B, R, N], write_weights [T, B, W, N])`` over
    ``inputs [T, B, in]``."""
    with torch.no_grad():
        out = ntm(inputs, record=True)
    return out.outputs, out.read_weights, out.write_weights


# --- input attribution ---------------------------------------------------------------------------------


def captum_available() -> bool:
    return importlib.util.find_spec("captum") is not None


def differentiable_forward(algo: nn.Module, predictor: Any) -> Callable[[Tensor], Tensor]:
    """``x [B, *x] -> outputs [B, N]`` with a graph to ``x``: the predictor's ``grad_forward`` where it has one (a
    predictor that runs under ``no_grad``: ProtoNet, Baseline, the linear probe), else the predictor itself."""
    return getattr(predictor, "grad_forward", None) or predictor


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``model`` normalises with the statistics of the batch it sees (outputs depend on
    the batch)."""
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
    """Attribution of output ``target[q]`` of ``forward(x[q:q+1])`` to the input, query by query: the generic
    explanation of :func:`explain` (integrated gradients need Captum: ``pip install fastadapt[explain]``).

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
    "ntm_weightings",
    "to_json",
    "uses_batch_statistics",
]
