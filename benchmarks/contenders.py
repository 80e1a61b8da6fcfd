"""Workloads and contenders of the comparison benchmark (``benchmarks/compare.py``).

A *workload* fixes the episode shape, the algorithm and its hyperparameters; a *contender* is one
library's canonical training step for it. Every contender gets the same ``Conv4`` weights (same initial
values; fastadapt its own ``Conv4``, the others the papers' block as their users write it: :func:`make_model`)
and the same batch, computes the meta-gradient into the
model's ``.grad`` fields (``grad_step``), and the same outer optimiser (Adam 1e-3) applies it.

Contenders and their canonical loops (one task at a time, as each library's examples do):

* ``fastadapt``: ``MAML`` / ``FOMAML`` / ``Reptile`` / ``ProtoNet``; ``algo.meta_loss(batch).loss.backward()``.
  Variants measure changes proposed for fastadapt's own code, without editing it:
  ``+mallopt`` calls :func:`keep_freed_memory` (glibc ``mallopt``) in the process first;
  ``+accumN`` runs ``meta_loss`` on chunks of N tasks and back-propagates each chunk at once
  (gradient accumulation, as the training loop could do), so only one chunk's graph is alive.
* ``learn2learn``: ``l2l.algorithms.MAML(model).clone()`` and ``adapt()`` per task, query loss
  ``backward()`` per task (its MAML examples). learn2learn has no Reptile or ProtoNet step of its own.
* ``higher``: ``higher.innerloop_ctx`` per task with a differentiable SGD (MAML; first order by a
  ``grad_callback`` that detaches the inner gradients) or Adam (Reptile, ``track_higher_grads=False``).
* ``torchopt``: ``torchopt.MetaSGD`` per task with ``extract_state_dict`` / ``recover_state_dict``
  (its MAML-Omniglot example); first order and Reptile use TorchOpt's functional optimisers
  (``torchopt.sgd`` / ``torchopt.adam`` + ``apply_updates``) on detached gradients.
* ``plain``: eager PyTorch, ``torch.func.functional_call`` + ``torch.autograd.grad(create_graph=...)``
  per task; Reptile with a working copy of the model and ``torch.optim.Adam``; ProtoNets as one
  encoder call and squared distances to class means per episode.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.core.episodes import TaskBatch
from fastadapt.nn import Conv4

GradStep = Callable[[TaskBatch], None]

LIBRARIES = ("fastadapt", "learn2learn", "higher", "torchopt", "plain")


@dataclass(frozen=True)
class Workload:
    """One benchmark setting (the Omniglot shape: 1x28x28 images, Conv4 with 64 filters)."""

    name: str  # short id used on the command line and in tables
    algo: str  # "maml", "fomaml", "reptile" or "protonet"
    ways: int  # N
    shots: int  # K (support examples per class)
    queries: int  # Q (query examples per class)
    meta_batch: int  # T, tasks per meta-update
    inner_steps: int = 1  # inner gradient steps per task (gradient-based algorithms)
    inner_lr: float = 0.4  # inner rate (SGD for MAML, Adam for Reptile)
    real_data: bool = False  # episodes drawn from the bundled Omniglot by EpisodeSampler in the timed loop
    description: str = ""


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("a", "maml", 5, 1, 5, 32, 1, 0.4, description="MAML 2nd order, 5-way 1-shot, T=32, 1 step"),
        Workload("b", "fomaml", 5, 1, 5, 32, 1, 0.4, description="MAML 1st order, 5-way 1-shot, T=32, 1 step"),
        Workload("c", "reptile", 5, 1, 5, 32, 5, 1e-3, description="Reptile, 5-way 1-shot, T=32, 5 Adam steps"),
        Workload("d", "protonet", 20, 5, 15, 1, description="ProtoNets, 20-way 5-shot 15-query, 1 episode"),
        Workload("e-maml", "maml", 5, 1, 5, 32, 1, 0.4, real_data=True, description="(a) on sampled Omniglot episodes"),
        Workload(
            "e-protonet", "protonet", 20, 5, 15, 1, real_data=True, description="(d) on sampled Omniglot episodes"
        ),
    )
}


def supports(library: str, workload: Workload) -> str | None:
    """``None`` if ``library`` has a canonical step for ``workload``, else the reason it is skipped."""
    if workload.algo == "protonet" and library in ("learn2learn", "higher", "torchopt"):
        return f"{library} has no ProtoNets step (nothing to differentiate through); compared with the plain loop only"
    if workload.algo == "reptile" and library == "learn2learn":
        return "learn2learn ships no Reptile; its Reptile example is the plain deepcopy + torch.optim.Adam loop (the plain row)"
    return None


def make_model(workload: Workload, library: str = "fastadapt") -> nn.Module:
    """Conv4, 64 filters, BatchNorm without running statistics; a ``ways``-way head unless ProtoNets.

    fastadapt gets its own ``Conv4`` (each block conv -> BatchNorm -> max-pool -> ReLU with
    ``fastadapt.nn.pool.MaxPool2d``: the papers' values and gradients, faster on the CPU); every other library the
    papers' block as users write it and learn2learn's ``OmniglotCNN`` has it (conv -> BatchNorm -> ``nn.ReLU`` ->
    ``nn.MaxPool2d``), built from the same modules: the same parameters, names and initial weights."""
    model = Conv4(
        in_channels=1, out_features=None if workload.algo == "protonet" else workload.ways, hidden=64, image_size=28
    )
    if library != "fastadapt":
        for i, block in enumerate(model.features):
            model.features[i] = nn.Sequential(block[0], block[1], nn.ReLU(), nn.MaxPool2d(2))
    return model


def synthetic_batch(workload: Workload, seed: int = 0) -> TaskBatch:
    """A batch shaped like Omniglot episodes (uniform [0, 1) pixels), labels class-major like EpisodeSampler's."""
    g = torch.Generator().manual_seed(seed)
    t, n, k, q = workload.meta_batch, workload.ways, workload.shots, workload.queries
    labels = torch.arange(n)
    return TaskBatch(
        torch.rand(t, n * k, 1, 28, 28, generator=g),
        labels.repeat_interleave(k).repeat(t, 1),
        torch.rand(t, n * q, 1, 28, 28, generator=g),
        labels.repeat_interleave(q).repeat(t, 1),
        labels.repeat(t, 1),
    )


# --- the proposed allocator setting (measured here, proposed for fastadapt.algorithms.inner) --------------------------

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
KEEP_BYTES = 1 << 30  # buffers up to 1 GiB come from the heap and freed memory up to 1 GiB stays mapped


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping/trimming it (True if glibc took both settings).

    A meta-gradient frees and re-allocates the same large activation buffers every step; by default glibc
    serves buffers above its mmap threshold with fresh ``mmap`` calls and returns them with ``munmap``,
    so every step pays page faults to zero-fill them again.
    """
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):
        return False


# --- fastadapt --------------------------------------------------------------------------------------------------------


def fastadapt_step(
    workload: Workload,
    model: nn.Module,
    accumulate: int = 0,
    execution: str | None = None,
    precision: str = "fp32",
    planned: bool = False,
) -> GradStep:
    """fastadapt's step: ``meta_loss(batch).loss.backward()``; with ``accumulate=N``, one backward per chunk of N tasks;
    with ``precision="bf16"``, ``meta_loss`` under bf16 autocast as ``run.precision = "bf16"`` runs it; with
    ``planned``, the library's step function ``fastadapt.training.accumulate.meta_gradient(algo, batch)`` (its default
    ``task_chunk="auto"``: a task at a time where the tasks run in a loop), what the trainer calls."""
    from fastadapt.algorithms.maml import FOMAML, MAML
    from fastadapt.algorithms.protonet import ProtoNet
    from fastadapt.algorithms.reptile import Reptile

    options = {} if execution is None else {"execution": execution}
    if workload.algo == "maml":
        algo: nn.Module = MAML(model, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps, **options)
    elif workload.algo == "fomaml":
        algo = FOMAML(model, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps, **options)
    elif workload.algo == "reptile":
        algo = Reptile(
            model, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps, inner_optimizer="adam", **options
        )
    else:
        algo = ProtoNet(model)

    from fastadapt.runtime.precision import autocast

    def step(batch: TaskBatch) -> None:
        algo.zero_grad(set_to_none=True)
        if planned:
            from fastadapt.training.accumulate import meta_gradient

            meta_gradient(algo, batch, around=lambda: autocast(precision))
            return
        t = batch.num_tasks
        if not accumulate or accumulate >= t:
            with autocast(precision):
                loss = algo.meta_loss(batch).loss
            loss.backward()
            return
        for start in range(0, t, accumulate):
            part = batch.select(slice(start, start + accumulate))
            with autocast(precision):
                loss = algo.meta_loss(part).loss
            (loss * (part.num_tasks / t)).backward()

    return step


# --- learn2learn ------------------------------------------------------------------------------------------------------


def import_learn2learn_maml() -> type:
    """``learn2learn.algorithms.maml.MAML`` without running ``learn2learn/__init__.py``.

    learn2learn 0.2.0's top-level import pulls in gym and torchvision (its vision and RL helpers); the
    algorithms do not need them, and torchvision cannot sit beside this torch. So, in this benchmark
    process only, ``learn2learn`` and ``learn2learn.algorithms`` are registered as bare packages
    pointing at the installed folders, and only ``algorithms/maml.py`` (and ``utils``) are executed.
    """
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("learn2learn is not installed (see benchmarks/install_contenders.sh)")
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", f"{root}/algorithms")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    from learn2learn.algorithms.maml import MAML

    return MAML


def learn2learn_step(workload: Workload, model: nn.Module) -> GradStep:
    maml = import_learn2learn_maml()(model, lr=workload.inner_lr, first_order=workload.algo == "fomaml")

    def step(batch: TaskBatch) -> None:
        maml.zero_grad(set_to_none=True)
        t = batch.num_tasks
        for i in range(t):
            learner = maml.clone()
            for _ in range(workload.inner_steps):
                learner.adapt(F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
            F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i]).backward()
        for p in maml.parameters():
            p.grad.mul_(1.0 / t)

    return step


# --- higher -----------------------------------------------------------------------------------------------------------


def higher_step(workload: Workload, model: nn.Module) -> GradStep:
    import higher

    if workload.algo == "reptile":
        return _higher_reptile(workload, model, higher)
    inner_opt = torch.optim.SGD(model.parameters(), lr=workload.inner_lr)
    detach = (lambda grads: [g.detach() for g in grads]) if workload.algo == "fomaml" else None

    def step(batch: TaskBatch) -> None:
        model.zero_grad(set_to_none=True)
        t = batch.num_tasks
        for i in range(t):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(workload.inner_steps):
                    diffopt.step(F.cross_entropy(fnet(batch.support_x[i]), batch.support_y[i]), grad_callback=detach)
                (F.cross_entropy(fnet(batch.query_x[i]), batch.query_y[i]) / t).backward()

    return step


def _higher_reptile(workload: Workload, model: nn.Module, higher: types.ModuleType) -> GradStep:
    inner_opt = torch.optim.Adam(model.parameters(), lr=workload.inner_lr, betas=(0.0, 0.999))
    params = list(model.parameters())

    def step(batch: TaskBatch) -> None:
        t = batch.num_tasks
        total = [torch.zeros_like(p) for p in params]
        for i in range(t):
            with higher.innerloop_ctx(model, inner_opt, track_higher_grads=False) as (fnet, diffopt):
                for _ in range(workload.inner_steps):
                    diffopt.step(F.cross_entropy(fnet(batch.support_x[i]), batch.support_y[i]))
                for s, phi in zip(total, fnet.parameters()):
                    s.add_(phi.detach())
        with torch.no_grad():
            for p, s in zip(params, total):
                p.grad = p - s / t

    return step


# --- TorchOpt ---------------------------------------------------------------------------------------------------------


def torchopt_step(workload: Workload, model: nn.Module) -> GradStep:
    import torchopt

    if workload.algo != "maml":
        return _torchopt_functional(workload, model, torchopt)
    inner_opt = torchopt.MetaSGD(model, lr=workload.inner_lr)
    net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt)

    def step(batch: TaskBatch) -> None:
        model.zero_grad(set_to_none=True)
        t = batch.num_tasks
        for i in range(t):
            for _ in range(workload.inner_steps):
                inner_opt.step(F.cross_entropy(model(batch.support_x[i]), batch.support_y[i]))
            (F.cross_entropy(model(batch.query_x[i]), batch.query_y[i]) / t).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)

    return step


def _torchopt_functional(workload: Workload, model: nn.Module, torchopt: types.ModuleType) -> GradStep:
    """First-order MAML and Reptile with TorchOpt's functional optimisers (gradients taken without a graph)."""
    names, params = zip(*model.named_parameters())
    reptile = workload.algo == "reptile"
    opt = torchopt.adam(workload.inner_lr, betas=(0.0, 0.999)) if reptile else torchopt.sgd(workload.inner_lr)

    def step(batch: TaskBatch) -> None:
        model.zero_grad(set_to_none=True)
        t = batch.num_tasks
        total = [torch.zeros_like(p) for p in params]
        for i in range(t):
            fast = tuple(p.detach().requires_grad_() for p in params) if reptile else params
            state = opt.init(fast)
            for _ in range(workload.inner_steps):
                loss = F.cross_entropy(
                    functional_call(model, dict(zip(names, fast)), (batch.support_x[i],)), batch.support_y[i]
                )
                grads = torch.autograd.grad(loss, fast)
                updates, state = opt.update(grads, state, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            if reptile:
                for s, phi in zip(total, fast):
                    s.add_(phi.detach())
            else:
                query = functional_call(model, dict(zip(names, fast)), (batch.query_x[i],))
                (F.cross_entropy(query, batch.query_y[i]) / t).backward()
        if reptile:
            with torch.no_grad():
                for p, s in zip(params, total):
                    p.grad = p - s / t

    return step


# --- plain PyTorch ----------------------------------------------------------------------------------------------------


def plain_step(workload: Workload, model: nn.Module) -> GradStep:
    if workload.algo == "protonet":
        return _plain_protonet(workload, model)
    if workload.algo == "reptile":
        return _plain_reptile(workload, model)
    params = dict(model.named_parameters())
    second_order = workload.algo == "maml"

    def step(batch: TaskBatch) -> None:
        model.zero_grad(set_to_none=True)
        t = batch.num_tasks
        for i in range(t):
            fast = params
            for _ in range(workload.inner_steps):
                loss = F.cross_entropy(functional_call(model, fast, (batch.support_x[i],)), batch.support_y[i])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
                fast = {k: v - workload.inner_lr * g for (k, v), g in zip(fast.items(), grads)}
            (F.cross_entropy(functional_call(model, fast, (batch.query_x[i],)), batch.query_y[i]) / t).backward()

    return step


def _plain_reptile(workload: Workload, model: nn.Module) -> GradStep:
    learner = copy.deepcopy(model)
    params, fast = list(model.parameters()), list(learner.parameters())

    def step(batch: TaskBatch) -> None:
        t = batch.num_tasks
        total = [torch.zeros_like(p) for p in params]
        for i in range(t):
            with torch.no_grad():
                for f, p in zip(fast, params):
                    f.copy_(p)
            opt = torch.optim.Adam(fast, lr=workload.inner_lr, betas=(0.0, 0.999))
            for _ in range(workload.inner_steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]).backward()
                opt.step()
            for s, f in zip(total, fast):
                s.add_(f.detach())
        with torch.no_grad():
            for p, s in zip(params, total):
                p.grad = p - s / t

    return step


def _plain_protonet(workload: Workload, model: nn.Module) -> GradStep:
    n, k = workload.ways, workload.shots

    def step(batch: TaskBatch) -> None:
        model.zero_grad(set_to_none=True)
        t = batch.num_tasks
        for i in range(t):
            z = model(torch.cat([batch.support_x[i], batch.query_x[i]]))
            protos = z[: n * k].view(n, k, -1).mean(1)  # support is class-major
            logits = -(z[n * k :].unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)
            (F.cross_entropy(logits, batch.query_y[i]) / t).backward()

    return step


# --- registry ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """A library, plus for fastadapt the proposed variants measured in the same run."""

    name: str  # as printed in the tables
    library: str  # one of LIBRARIES
    mallopt: bool = False  # call keep_freed_memory() before anything runs (proposal A)
    accumulate: int = 0  # fastadapt: backward per chunk of this many tasks (proposal B); 0: one backward
    execution: str | None = None  # fastadapt: execution path (None: the library's default)
    precision: str = "fp32"  # fastadapt: "bf16" runs meta_loss under bf16 autocast (run.precision)
    channels_last: bool = False  # fastadapt: NHWC convolution weights (run.memory_format = "channels_last")
    planned: bool = False  # fastadapt: the library's step function meta_gradient (task_chunk "auto")

    def build(self, workload: Workload, model: nn.Module) -> GradStep:
        if self.library == "fastadapt":
            if self.channels_last:  # as build_algorithm lays a model out (fastadapt.runtime.layout)
                from fastadapt.runtime.layout import apply_memory_format

                apply_memory_format(model, "channels_last")
            return fastadapt_step(workload, model, self.accumulate, self.execution, self.precision, self.planned)
        return {"learn2learn": learn2learn_step, "higher": higher_step, "torchopt": torchopt_step, "plain": plain_step}[
            self.library
        ](workload, model)


def parse_contender(spec: str) -> Contender:
    """``library[+mallopt][+accumN][+exec=PATH][+bf16][+nhwc][+step]``, e.g. ``fastadapt+mallopt+accum8``."""
    library, *opts = spec.split("+")
    if library not in LIBRARIES:
        raise ValueError(f"unknown contender {library!r}; choose from {', '.join(LIBRARIES)}")
    c = Contender(spec, library)
    for opt in opts:
        if opt == "mallopt":
            c = replace(c, mallopt=True)
        elif opt.startswith("accum") and library == "fastadapt":
            c = replace(c, accumulate=int(opt[5:]))
        elif opt.startswith("exec=") and library == "fastadapt":
            c = replace(c, execution=opt[5:])
        elif opt == "bf16" and library == "fastadapt":
            c = replace(c, precision="bf16")
        elif opt == "nhwc" and library == "fastadapt":
            c = replace(c, channels_last=True)
        elif opt == "step" and library == "fastadapt":
            c = replace(c, planned=True)
        else:
            raise ValueError(f"unknown option {opt!r} in contender {spec!r}")
    return c


def flat_grad(model: nn.Module) -> Tensor:
    """The model's ``.grad`` fields, flattened in ``named_parameters`` order (zeros where a grad is missing)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten() for p in model.parameters()]
    )
