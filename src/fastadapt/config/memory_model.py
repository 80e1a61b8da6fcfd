"""What an algorithm holds in memory, for the preflight estimate (:mod:`fastadapt.config.preflight`): its model's
activations measured on a probe (:func:`activation_bytes`), the facts its class declares (read by the small
functions below), and, for an algorithm whose ``meta_loss`` is one forward pass, that forward measured on one probe
task (:func:`forward_held_bytes`).

Why declared facts and a measured forward, not a measured ``meta_loss`` + backward (issue 32). Running one probe task's
``meta_loss`` and backward and counting what autograd saves (``torch.autograd.graph.saved_tensors_hooks``), then
scaling by the tasks alive at once, would be the general model, but it is neither cheap nor robust here: torch.func's
transforms (MAML's and Reptile's ``vmap`` paths, the meta-LSTM's learner) refuse saved-tensor hooks; the process's own
memory on the CPU measures nothing (glibc keeps what is freed); ``meta_loss`` is not free of effects (Reptile's
persistent Adam state, torch's random stream for mini-batches and dropout, BatchNorm's running statistics), so a probe
would change the run it plans; and ``resolve_task_chunk`` and ``check_cost`` often have only the class, with nothing to
run. So an algorithm states what its step keeps, and only what is pure runs on a probe: a ``meta_loss`` that is one
forward pass (no inner backward, no state, no randomness in eval mode: the metric comparators), without a graph, on
one probe task; the meta-LSTM's ``step`` on 64 coordinates.

The facts (class attributes; the default in brackets):

- ``inner_graph`` (True): the inner steps keep their graph for the outer backward (second order). False: first-order
  MAML, Reptile, iMAML, the meta-LSTM (its learner's support passes run at detached weights).
- ``keeps_task_graphs`` (True): ``meta_loss`` keeps every task's graph until the backward pass. False (Reptile,
  iMAML): its tasks run one after another and each one's graph is freed before the next (the loss reaches the weights
  through a surrogate), so a step holds one task's working memory whatever ``optim.task_chunk`` is.
- ``step_encodes_queries`` (True): the training step runs the query set. False (Reptile): only support passes, of
  ``inner_batch`` examples each when that option is set.
- ``predicts_task_by_task`` (False): ``predict`` encodes one task at a time (ProtoNets, Relation Networks, siamese
  networks, iMAML); an execution name (Matching Networks: ``"auto"``): as
  :func:`fastadapt.algorithms.inner.resolve_execution` maps it, task by task where it gives ``"loop"`` (images on
  the CPU).
- ``single_forward_loss`` (False): ``meta_loss`` is one forward pass over the batch, with no inner backward, no state
  and no randomness in eval mode (Matching, Relation and siamese networks): the estimate runs it on one probe task
  and counts what its modules take and give.
- ``unrolls_coordinatewise`` (False): a learnt optimiser whose state is per coordinate of the learner (the
  meta-LSTM: ``state_from``, ``step``, ``inner_steps``): :func:`unroll_bytes` measures one step on a few
  coordinates and scales it by the coordinates, the tasks and the steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fastadapt.algorithms import inner
from fastadapt.config import Config, algorithm_signature
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.core.registry import algorithm_class


def tensor_bytes(out: Any) -> int:
    """Bytes of the tensors in ``out`` (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (list, tuple)):
        return sum(tensor_bytes(o) for o in out)
    if isinstance(out, dict):
        return sum(tensor_bytes(o) for o in out.values())
    return 0


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if next(m.children(), None) is None]


def activation_bytes(model: nn.Module, x: torch.Tensor, meta: bool = True) -> tuple[int, int]:
    """Per example of ``x`` (a few examples), in bytes: ``x`` and every leaf module's output on it (what a
    graph keeps), and the largest input + output of one leaf module (what a forward without a graph
    holds at once). Eval mode, no graph.

    ``meta``: run on meta tensors (shapes only: no memory, no arithmetic; the model's weights are
    left alone); else a real forward pass.
    """
    total, peak = 0, 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total, peak
        out = tensor_bytes(output)
        total += out
        peak = max(peak, out + tensor_bytes(inputs))

    handles = [m.register_forward_hook(hook) for m in _leaves(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if meta:
                params = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
                buffers = {k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()}
                torch.func.functional_call(model, (params, buffers), (x.to("meta"),))
            else:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n = max(len(x), 1)
    return math.ceil((total + tensor_bytes(x)) / n), math.ceil(max(peak, tensor_bytes(x)) / n)


def measure(model: nn.Module, x: torch.Tensor) -> tuple[int, int] | None:
    """:func:`activation_bytes` on two examples, on meta tensors, else for real; None when the model cannot take
    them."""
    for meta in (True, False):
        try:
            return activation_bytes(model, x[:2], meta)
        except FastAdaptError:
            raise
        except Exception:  # the model does what meta tensors cannot (.item(), data-dependent shapes), or cannot take x
            continue
    return None


class _Holdings(TorchFunctionMode):
    """What a forward makes, counted as :func:`activation_bytes` counts a model's: every leaf module's output, plus
    each tensor made outside the leaves (a comparator's pairs, distances, attention) or given to them from outside
    (the images), once per storage. Everything is kept alive until the count, so that no storage address is reused."""

    def __init__(self, leaves: list[nn.Module]) -> None:
        super().__init__()
        self.depth = 0  # leaf modules running now: their inner operations are the leaf's own
        self.leaf_outputs: list[torch.Tensor] = []
        self.leaf_storages: set[int] = set()  # their storages' addresses (a view of one is not counted again)
        self.outside: dict[int, torch.Tensor] = {}  # storage address -> a tensor on it
        self.handles = [m.register_forward_pre_hook(self._enter) for m in leaves]
        self.handles += [m.register_forward_hook(self._leave) for m in leaves]

    def _note(self, found: Any) -> None:
        for t in _tensors(found):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.outside and ptr not in self.leaf_storages:
                self.outside[ptr] = t

    def _enter(self, module: nn.Module, inputs: Any) -> None:
        if self.depth == 0:
            self._note(inputs)
        self.depth += 1

    def _leave(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            for t in _tensors(output):
                self.leaf_outputs.append(t)
                self.leaf_storages.add(t.untyped_storage().data_ptr())

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.depth == 0:
            self._note(out)
        return out

    def held(self) -> int:
        """The count (leaf outputs, then what is outside them); the hooks are removed."""
        for h in self.handles:
            h.remove()
        outside = sum(tensor_bytes(t) for ptr, t in self.outside.items() if ptr not in self.leaf_storages)
        return sum(tensor_bytes(t) for t in self.leaf_outputs) + outside


def _tensors(found: Any) -> list[torch.Tensor]:
    if isinstance(found, torch.Tensor):
        return [found]
    if isinstance(found, (list, tuple)):
        return [t for o in found for t in _tensors(o)]
    return []


def forward_held_bytes(algorithm: Any, batch: Any) -> int | None:
    """Bytes one task's ``meta_loss`` graph holds, for an algorithm (an instance) that declares
    ``single_forward_loss``: its ``meta_loss`` on the first task of ``batch``, in eval mode and without a graph, counted
    as :func:`activation_bytes` counts the model's forward (every leaf module's output, and the input), plus every
    tensor made outside the leaves (:class:`_Holdings`). None for a class, another algorithm, or a forward that
    fails."""
    if (
        isinstance(algorithm, type)
        or not isinstance(algorithm, nn.Module)
        or not getattr(algorithm, "single_forward_loss", False)
        or not isinstance(batch, TaskBatch)
    ):
        return None
    was_training = algorithm.training
    algorithm.eval()
    holdings = _Holdings(_leaves(algorithm))
    try:
        with torch.no_grad(), holdings:
            cast(Any, algorithm).meta_loss(batch.select(slice(0, 1)))
    except FastAdaptError:
        raise
    except Exception:  # anything the probe cannot run: the model's activations are counted instead
        return None
    finally:
        algorithm.train(was_training)
        held = holdings.held()  # the hooks go whatever happened
    return held or None


def unroll_bytes(algorithm: Any, tasks: int, graph: bool) -> int | None:
    """Bytes the coordinate-wise optimiser of an algorithm (an instance) that declares ``unrolls_coordinatewise``
    (the meta-LSTM: ``state_from(theta [T, n])``, ``step(state, grad, loss)``, ``inner_steps``) holds for ``tasks``
    tasks beyond its learner's activations, from one ``step`` on 64 of its ``n`` coordinates, scaled by ``n``:

        with a graph (training)   tasks * n * inner_steps * (saved tensors of a step, per coordinate)
        without (evaluation)      tasks * n * (inner_steps * state per coordinate + a step's tensors per coordinate)

    (every step's graph is kept for the meta-gradient; without one, the states after each step are kept and one
    step's intermediates are alive at once). None for a class or another algorithm."""
    if isinstance(algorithm, type) or not getattr(algorithm, "unrolls_coordinatewise", False):
        return None
    theta = algorithm.initial_theta().detach()
    n, probe, steps = theta.numel(), min(64, theta.numel()), int(algorithm.inner_steps)
    start = theta[:probe].unsqueeze(0).clone()
    grad, loss = start.clone(), start.new_ones(1)
    if graph:
        weights = {p.untyped_storage().data_ptr() for p in algorithm.parameters()}  # shared by every coordinate
        saved: dict[int, torch.Tensor] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in weights:
                saved.setdefault(t.untyped_storage().data_ptr(), t)
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            algorithm.step(algorithm.state_from(start.requires_grad_()), grad, loss)
        per = sum(t.untyped_storage().nbytes() for t in saved.values()) / probe
        return math.ceil(tasks * n * steps * per)
    holdings = _Holdings([])
    with torch.no_grad():
        state = algorithm.state_from(start)
        with holdings:
            algorithm.step(state, grad, loss)
    kept = tensor_bytes(list(state)) / probe
    return math.ceil(tasks * n * (steps * kept + holdings.held() / probe))


def _option(cfg: Config, algorithm: Any) -> Callable[[str], Any]:
    """``option(name)``: the config's ``[algorithm]`` value of ``name``, else the constructor's default, else
    None."""
    try:
        params = algorithm_signature(cfg.algorithm)
    except (FastAdaptError, TypeError, ValueError):
        params = {}
    opts = cfg.algorithm_options

    def option(name: str) -> Any:
        if name in opts:
            return opts[name]
        p = params.get(name)
        return None if p is None or p.default is p.empty else p.default

    return option


def _count(v: Any, least: int) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= least else None


def resolve_class(cfg: Config, algorithm: Any = None) -> Any:
    """``algorithm`` itself, else the config's class; None when the config names none that can be found."""
    try:
        return algorithm if algorithm is not None else algorithm_class(cfg.algorithm)
    except FastAdaptError:
        return None


def inner_steps(cfg: Config, algorithm: Any = None) -> tuple[int, int, int]:
    """``(k, k_eval, k_graph)``: the algorithm's inner steps in training and at evaluation (0 when it has none), and
    those whose graph the outer backward pass differentiates (``k`` for second order; 0 with ``first_order``, or for
    an algorithm whose ``inner_graph`` is False: first-order MAML, Reptile, iMAML)."""
    option = _option(cfg, algorithm)
    algorithm = resolve_class(cfg, algorithm)
    k = _count(option("inner_steps"), 1) or 0
    k_eval = _count(option("inner_steps_eval"), 0)
    k_eval = k if k_eval is None else k_eval
    second = not option("first_order") and getattr(algorithm, "inner_graph", True)
    if algorithm is not None and not isinstance(algorithm, type):  # an instance: what it is set to
        second = second and not getattr(algorithm, "first_order", False)
    k_graph = k if second else 0
    return k, k_eval, min(k_graph, 1) if option("checkpoint_inner") else k_graph  # recomputed: one step's graph


def inner_batch(cfg: Config, algorithm: Any = None) -> int | None:
    """The support examples of one training inner step (the ``inner_batch`` option: Reptile's mini-batches), or
    None (the whole support set)."""
    if algorithm is not None and not isinstance(algorithm, type) and hasattr(algorithm, "inner_batch"):
        return _count(algorithm.inner_batch, 1)
    return _count(_option(cfg, algorithm)("inner_batch"), 1)


def keeps_task_graphs(algorithm: Any) -> bool:
    """The algorithm's ``keeps_task_graphs`` (default True; see the module docstring)."""
    return bool(getattr(algorithm, "keeps_task_graphs", True))


def step_encodes_queries(algorithm: Any) -> bool:
    """The algorithm's ``step_encodes_queries`` (default True; see the module docstring)."""
    return bool(getattr(algorithm, "step_encodes_queries", True))


def predicts_task_by_task(algorithm: Any, batch: Any) -> bool:
    """The algorithm's ``predicts_task_by_task`` for ``batch``: a bool as it is; an execution name as
    :func:`fastadapt.algorithms.inner.resolve_execution` maps it for the batch's images (``"loop"``: task by task)."""
    declared = getattr(algorithm, "predicts_task_by_task", False)
    if isinstance(declared, str):
        return isinstance(batch, TaskBatch) and inner.resolve_execution(declared, batch.support_x) == "loop"
    return bool(declared)
