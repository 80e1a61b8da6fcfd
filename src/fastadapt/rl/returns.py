"""Returns, the linear feature baseline and advantages: free functions over padded trajectories.

Shapes: ``rewards``, ``mask`` ``[N, H]`` (N trajectories padded to the horizon H; ``mask`` is 1 while
the episode runs), ``obs`` ``[N, H, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, discount: float) -> Tensor:
    """``R_t = sum_{k >= t} discount^(k-t) r_k`` over the valid steps, ``[N, H]`` (0 on padding)."""
    r = rewards * mask
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + discount * running
        out[:, t] = running
    return out * mask


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """``[o, o^2, t, t^2, t^3, 1]`` per step, ``[N, H, 2D + 4]``, zero on padding: the features of Duan et
    al. (2016)'s linear feature baseline (rllab's ``LinearFeatureBaseline``, also MAML's and ProMP's), with
    the observation ``o`` clipped to ``[-10, 10]`` and ``t`` the time step / 100."""
    n, h = obs.shape[:2]
    o = obs.reshape(n, h, -1).clamp(-10, 10)
    t = (torch.arange(h, dtype=obs.dtype, device=obs.device) / 100.0).expand(n, h).unsqueeze(-1)
    feats = torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(features: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """Ridge least-squares weights ``[F]`` of ``features [N, H, F]`` on ``returns [N, H]`` over the valid steps:
    ``w = argmin ||X w - R||^2 + reg ||w||^2``, fitted on the same trajectories it is used on.

    Solves ``(X^T X + reg I) w = X^T R`` in float64; if that is not finite, ``reg`` is multiplied by
    10 (up to 5 times), as rllab does.
    """
    x = features[mask.bool()].double()
    y = returns[mask.bool()].double()
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    a, b = x.T @ x, x.T @ y
    for k in range(6):
        w = (
            torch.linalg.solve(a + reg * 10**k * eye, b)
            if reg > 0
            else torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
        )
        if bool(torch.isfinite(w).all()):
            return w.to(features.dtype)
    return torch.zeros(x.shape[1], dtype=features.dtype, device=features.device)


def advantages(
    obs: Tensor, rewards: Tensor, mask: Tensor, discount: float, reg: float = 1e-5, normalize: bool = True
) -> Tensor:
    """``A_t = R_t - b(s_t)`` with the baseline fitted on these trajectories, ``[N, H]`` (0 on padding);
    ``normalize``: zero mean and unit variance over the valid steps (rllab's ``center_adv``)."""
    with torch.no_grad():
        ret = discounted_returns(rewards, mask, discount)
        feats = baseline_features(obs, mask)
        w = fit_linear_baseline(feats, ret, mask, reg)
        adv = (ret - feats @ w) * mask
        if normalize:
            valid = adv[mask.bool()]
            adv = (adv - valid.mean()) / (valid.std(unbiased=False) + 1e-8) * mask
    return adv
