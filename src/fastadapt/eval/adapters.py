"""Adapters on a frozen backbone, trained per task on its support set: FiLM and task-specific adapters (TSA).

``eval.finetune = "film"`` / ``"tsa"``; :func:`film_logits` and :func:`tsa_logits` say how.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms.protonet import prototype_logits, prototypes
from fastadapt.core.errors import ConfigError

MOMENTUM = 0.9  # every per-task fit here and in eval/finetune.py: SGD with this momentum on the whole support set
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)  # BatchNorm*, InstanceNorm*, GroupNorm: channels on dim 1

State = dict[str, Tensor]  # what one task fits: tensors by name


# --- shared by every per-task fit ----------------------------------------------------------------------------------


def fit_sgd(loss: Callable[[State], Tensor], init: State, steps: int, lr: float) -> State:
    """``steps`` of SGD (momentum :data:`MOMENTUM`, torch's rule) on ``loss(state)`` from ``init``.

    ``init`` is copied and left alone; returns the fitted tensors, detached. Runs under autograd even when the
    caller disabled it (evaluation does). Gradients reach only the tensors of the state: a model called through
    :func:`frozen_call` contributes none, so the run's weights never receive a ``.grad``.
    """
    state = {k: v.detach().clone().requires_grad_() for k, v in init.items()}
    if steps > 0:
        opt = torch.optim.SGD(list(state.values()), lr=lr, momentum=MOMENTUM)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss(state).backward()
                opt.step()
    return {k: v.detach() for k, v in state.items()}


def frozen_call(model: nn.Module, x: Tensor, params: State | None = None) -> Tensor:
    """``model(x)`` with its parameters detached (or replaced by ``params``, by name) and its buffers copied: no
    gradient reaches the run's weights and no running statistic of the run changes."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update(params or {})
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return functional_call(model, state, (x,))


@contextmanager
def hooked(model: nn.Module, hooks: dict[str, Callable]) -> Iterator[None]:
    """Forward hooks ``{submodule name: hook(module, inputs, output) -> new output}`` on ``model`` for the ``with``
    block only: the adapted forward pass, without copying or rewriting any module."""
    handles = [model.get_submodule(name).register_forward_hook(fn) for name, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def prototype_loss(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Nearest-prototype cross-entropy of ``features [M, D]`` against their own class means: the logits are
    ``-||z - c_k||^2`` with ``c_k`` the mean of class ``k``'s rows of ``features`` (the loss every adapter here is
    trained on; FLUTE and TSA fit on the support set alone)."""
    c = prototypes(features.unsqueeze(0), labels.unsqueeze(0), ways)
    return F.cross_entropy(prototype_logits(features.unsqueeze(0), c)[0], labels)


def nearest_prototype(support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
    """Query logits ``[Q, N]``: ``-||f(x) - c_k||^2`` to the class means of ``support_z [S, D]`` (ProtoNets' rule)."""
    c = prototypes(support_z.unsqueeze(0), support_y.unsqueeze(0), ways)
    return prototype_logits(query_z.unsqueeze(0), c)[0]


def _dtype(model: nn.Module, x: Tensor) -> dict:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return {"dtype": p.dtype if p is not None else x.dtype, "device": x.device}


def _channels(h: Tensor, v: Tensor) -> Tensor:
    """``v [C]`` shaped to broadcast over ``h [B, C, ...]``."""
    return v.view(1, -1, *([1] * (h.dim() - 2)))


# --- FiLM ----------------------------------------------------------------------------------------------------------


def film_sites(model: nn.Module) -> dict[str, int]:
    """``{module name: channels}`` where FiLM goes: after every normalisation layer (BatchNorm, InstanceNorm,
    GroupNorm), or after every convolution when the model has none; a one-line error when it has neither."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, NORMS)}
    if norms:
        return {n: int(m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features) for n, m in norms.items()}
    convs = {n: int(m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    if not convs:
        raise ConfigError(
            f"eval.finetune=film modulates normalisation or convolution layers; {type(model).__name__} has neither"
        )
    return convs


def film(h: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """FiLM (Perez et al. 2018): ``gamma_c * h + beta_c`` per channel ``c`` of ``h [B, C, ...]``."""
    return h * _channels(h, gamma) + _channels(h, beta)


def film_init(model: nn.Module, like: Tensor) -> State:
    """The identity FiLM: ``{"<site>.gamma": 1, "<site>.beta": 0}`` for every site of :func:`film_sites`."""
    kw = _dtype(model, like)
    out: State = {}
    for name, c in film_sites(model).items():
        out[f"{name}.gamma"], out[f"{name}.beta"] = torch.ones(c, **kw), torch.zeros(c, **kw)
    return out


def film_forward(model: nn.Module, state: State, x: Tensor) -> Tensor:
    """The backbone's features ``[B, D]`` of ``x`` with ``state``'s FiLM after each site, the backbone frozen."""

    def hook(name: str) -> Callable:
        return lambda module, inputs, out: film(out, state[f"{name}.gamma"], state[f"{name}.beta"])

    with hooked(model, {name: hook(name) for name in film_sites(model)}):
        return frozen_call(model, x).flatten(1)


def film_fit(model: nn.Module, support_x: Tensor, support_y: Tensor, steps: int, lr: float) -> State:
    """FiLM's ``gamma, beta`` fitted by ``steps`` of :func:`fit_sgd` on :func:`prototype_loss` of the support set."""
    ways = int(support_y.max()) + 1
    return fit_sgd(
        lambda s: prototype_loss(film_forward(model, s, support_x), support_y, ways),
        film_init(model, support_x),
        steps,
        lr,
    )


def film_logits(
    model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int, lr: float
) -> Tensor:
    """Query logits ``[Q, N]`` of a frozen backbone with per-task FiLM (``eval.finetune = "film"``).

    FiLM (Perez et al. 2018) as FLUTE (Triantafillou et al. 2021) uses it per task: a per-channel scale
    ``gamma`` (init 1) and shift ``beta`` (init 0) after every normalisation layer of ``model`` (after every
    convolution when it has none; :func:`film_sites`), trained on the support set alone with the
    nearest-prototype loss (:func:`prototype_loss`), the backbone's weights frozen; the queries are then classified
    by ProtoNets' rule (negative squared distance to the adapted support means). Before any step this is exactly
    ProtoNets on the run's embedding.

    Kept as fastadapt settings, not FLUTE's: the FiLM parameters start at the identity, not at a blend of
    the training domains' FiLM parameters predicted by FLUTE's dataset classifier (a plain embedding run has
    none); SGD with momentum 0.9 over ``steps`` full-support steps at ``lr`` (``eval.finetune_steps``,
    ``eval.finetune_lr``), not FLUTE's few steps of Adam.
    """
    ways = int(support_y.max()) + 1
    state = film_fit(model, support_x, support_y, steps, lr)
    with torch.no_grad():
        return nearest_prototype(
            film_forward(model, state, support_x), support_y, film_forward(model, state, query_x), ways
        )


# --- task-specific adapters (TSA) ----------------------------------------------------------------------------------


def tsa_sites(model: nn.Module) -> dict[str, nn.Conv2d]:
    """``{module name: conv}`` for every ``nn.Conv2d`` with a kernel larger than 1x1 (1x1 convolutions, such as
    ResNet shortcuts, are left alone, as in Li et al.'s code); a one-line error for one a parallel 1x1 convolution
    cannot match (groups, or padding other than "same" zeros), or when there is none."""
    sites: dict[str, nn.Conv2d] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m.kernel_size == (1, 1):
            continue
        same = not isinstance(m.padding, str) and all(
            2 * p == d * (k - 1) for p, d, k in zip(m.padding, m.dilation, m.kernel_size)
        )
        if m.groups != 1 or m.padding_mode != "zeros" or not (same or m.padding == "same"):
            raise ConfigError(
                f"eval.finetune=tsa puts a 1x1 adapter beside each convolution; {name} ({m}) is grouped or not "
                "'same'-padded, so no 1x1 convolution matches its output"
            )
        sites[name] = m
    if not sites:
        raise ConfigError(f"eval.finetune=tsa adapts convolutions larger than 1x1; {type(model).__name__} has none")
    return sites


def residual_adapter(x: Tensor, y: Tensor, alpha: Tensor, stride: tuple[int, int]) -> Tensor:
    """TSA's parallel adapter: ``y + alpha * x``, ``alpha [C_out, C_in, 1, 1]`` a 1x1 convolution of the conv's
    input ``x`` at the conv's stride (``y``: the conv's output)."""
    return y + F.conv2d(x, alpha, stride=stride)


def tsa_init(model: nn.Module, like: Tensor, feature_dim: int) -> State:
    """Adapters that change nothing: ``{"<conv>.alpha": 0 [C_out, C_in, 1, 1], "transform": I [D, D]}``."""
    kw = _dtype(model, like)
    out: State = {
        f"{n}.alpha": torch.zeros(m.out_channels, m.in_channels, 1, 1, **kw) for n, m in tsa_sites(model).items()
    }
    out["transform"] = torch.eye(feature_dim, **kw)
    return out


def tsa_forward(model: nn.Module, state: State, x: Tensor) -> Tensor:
    """``transform @ f(x)``: the frozen backbone's features ``[B, D]`` with ``state``'s residual adapters beside
    each convolution of :func:`tsa_sites`, then the linear pre-classifier transform."""

    def hook(name: str) -> Callable:
        return lambda module, inputs, out: residual_adapter(inputs[0], out, state[f"{name}.alpha"], module.stride)

    with hooked(model, {name: hook(name) for name in tsa_sites(model)}):
        z = frozen_call(model, x).flatten(1)
    return z @ state["transform"].T


def tsa_fit(model: nn.Module, support_x: Tensor, support_y: Tensor, steps: int, lr: float) -> State:
    """TSA's adapters and transform fitted by ``steps`` of :func:`fit_sgd` on :func:`prototype_loss` of the
    support set."""
    ways = int(support_y.max()) + 1
    with torch.no_grad():
        dim = frozen_call(model, support_x[:1]).flatten(1).shape[1]
    return fit_sgd(
        lambda s: prototype_loss(tsa_forward(model, s, support_x), support_y, ways),
        tsa_init(model, support_x, dim),
        steps,
        lr,
    )


def tsa_logits(
    model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int, lr: float
) -> Tensor:
    """Query logits ``[Q, N]`` of a frozen backbone with task-specific adapters (``eval.finetune = "tsa"``).

    Li, Liu & Bilen 2022 ("Cross-domain Few-shot Learning with Task-specific Adapters", CVPR), their best
    configuration: a residual adapter in parallel with every 3x3 (larger than 1x1) convolution,
    ``y = conv(x) + alpha * x`` with ``alpha`` a 1x1 convolution (matrix form; :func:`residual_adapter`), and a
    linear pre-classifier transform ``z -> transform z`` of the flattened features; trained on the support set
    alone with the nearest-prototype loss (:func:`prototype_loss`), the backbone's weights frozen. Queries are
    classified by negative squared Euclidean distance to the transformed support means (ProtoNets' rule).

    Kept as fastadapt settings, not the paper's: ``alpha`` starts at 0 (the paper's code: ``1e-4 I``), so that
    before any step this is exactly ProtoNets on the run's embedding; squared Euclidean distance, not cosine
    similarity x 10; SGD with momentum 0.9 over ``steps`` full-support steps at ``lr`` (``eval.finetune_steps``,
    ``eval.finetune_lr``), not Adadelta for 40 steps (their code's ``tsa``: rate 0.1 for the adapters, 1 for the
    transform); the backbone's BatchNorm as the run has it (batch statistics by default here; their code: running
    statistics). The per-channel (vector) adapter form and the serial placement are not offered.
    """
    ways = int(support_y.max()) + 1
    state = tsa_fit(model, support_x, support_y, steps, lr)
    with torch.no_grad():
        return nearest_prototype(
            tsa_forward(model, state, support_x), support_y, tsa_forward(model, state, query_x), ways
        )


__all__ = [
    "MOMENTUM",
    "film",
    "film_fit",
    "film_forward",
    "film_init",
    "film_logits",
    "film_sites",
    "fit_sgd",
    "frozen_call",
    "hooked",
    "nearest_prototype",
    "prototype_loss",
    "residual_adapter",
    "tsa_fit",
    "tsa_forward",
    "tsa_init",
    "tsa_logits",
    "tsa_sites",
]
