"""The Gaussian MLP policy and its log-likelihood (the algorithms of :mod:`fastadapt.algorithms.maml_rl`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.backbones import relu_mlp

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``obs [B, D] -> mean [B, A]`` through ReLU hidden layers ``hidden``; ``log_std [A]`` starts at
    ``log(init_std)``.

    ``pi(a | s) = N(a; mu_theta(s), diag(exp(log_std))^2)``: an MLP gives the mean, a state-independent
    ``log_std`` parameter the spread (rllab's ``GaussianMLPPolicy``, used by MAML and ProMP). Any module
    with a ``log_std`` parameter ``[A]`` whose forward maps observations ``[B, D]`` to means ``[B, A]``
    serves the algorithms of :mod:`fastadapt.algorithms.maml_rl`.
    """

    def __init__(
        self, obs_size: int, action_size: int, hidden: tuple[int, ...] = (100, 100), init_std: float = 1.0
    ) -> None:
        super().__init__()
        self.mean = relu_mlp(obs_size, action_size, hidden)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))

    def forward(self, obs: Tensor) -> Tensor:
        return self.mean(obs)


def gaussian_mlp(
    input_shape: tuple[int, ...], out_features: int | None, layers: tuple[int, ...] = (100, 100), init_std: float = 1.0
) -> GaussianMLPPolicy:
    """Registered as ``model.name = "gaussian-mlp"``: a policy for vector observations and ``out_features``
    continuous actions (``model.layers``: hidden widths; ``model.options.init_std``: the initial standard
    deviation)."""
    if len(input_shape) != 1:
        raise ConfigError(
            "model.name=gaussian-mlp takes vector observations; this task source gives observations of shape "
            f"{list(input_shape)}"
        )
    if out_features is None or out_features < 1:
        raise ConfigError(
            "model.name=gaussian-mlp is a policy: the algorithm must ask for an action size (use a "
            "reinforcement-learning algorithm such as maml-rl)"
        )
    if not layers or any(int(w) < 1 for w in layers):
        raise ConfigError(
            f"model.layers={list(layers)} is invalid; give one or more hidden widths >= 1, e.g. [100, 100]"
        )
    if not (isinstance(init_std, (int, float)) and 0 < init_std < math.inf):
        raise ConfigError(f"model.options.init_std={init_std!r} is invalid; give a standard deviation > 0")
    return GaussianMLPPolicy(int(input_shape[0]), int(out_features), tuple(int(w) for w in layers), float(init_std))


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """``log N(actions; mean, diag(exp(log_std))^2)`` summed over the action's last dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)
