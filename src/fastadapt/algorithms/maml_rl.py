"""MAML for policies (Finn et al. 2017, sec. 5.3) with a ProMP-style clipped outer objective
(Rothfuss et al. 2019), first-order MAML, Reptile for policies, and the jointly pretrained policy.

A task is an environment (:class:`~fastadapt.core.episodes.EnvTasks`); the objectives, the choice of the clipped
surrogate over TRPO and the metrics are on :class:`MAMLRL`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.reptile import reptile_surrogate
from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import ConfigError
from fastadapt.rl.policy import gaussian_log_prob
from fastadapt.rl.returns import advantages
from fastadapt.rl.rollout import Trajectories, rollout

Params = dict[str, Tensor]
OUTERS = ("clip", "reptile")
INNER_OBJECTIVES = ("lvc", "logprob")


def log_probs(model: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """``log pi_params(actions | obs)``: ``obs [..., D]``, ``actions [..., A]`` -> ``[...]``."""
    lead = obs.shape[:-1]
    mean = functional_call(model, params, (obs.reshape(-1, obs.shape[-1]),))
    return gaussian_log_prob(mean.reshape(*lead, -1), params["log_std"], actions)


def inner_loss(
    model: nn.Module, params: Params, obs: Tensor, actions: Tensor, adv: Tensor, mask: Tensor, objective: str = "lvc"
) -> Tensor:
    """The policy-gradient surrogate of one task's trajectories (``[N, H, ...]``): ``-mean_valid(w_t A_t)``
    (:class:`MAMLRL`)."""
    logp = log_probs(model, params, obs, actions)
    w = torch.exp(logp - logp.detach()) if objective == "lvc" else logp
    return -(w * adv * mask).sum() / mask.sum().clamp_min(1)


def clipped_surrogate(logp: Tensor, logp_old: Tensor, adv: Tensor, mask: Tensor, clip: float) -> Tensor:
    """``-mean_valid(min(r A, clip(r, 1-clip, 1+clip) A))`` with ``r = exp(logp - logp_old)`` (PPO's objective, as a
    loss)."""
    ratio = torch.exp(logp - logp_old.detach())
    obj = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(obj * mask).sum() / mask.sum().clamp_min(1)


ONLINE_REFUSAL = (
    "maml-rl: a policy adapts from the returns of trajectories it collects in an environment, not from labelled (x, y) "
    "batches, so predictor.update does not apply; call algo.adapt on the changed environment's tasks instead"
)


class PolicyPredictor:
    """An adapted policy: ``predictor(obs [B, D]) -> action means [B, A]``; ``params`` are its fast weights."""

    def __init__(self, model: nn.Module, params: Params) -> None:
        self.model, self.params = model, params

    def __call__(self, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return functional_call(self.model, self.params, (obs,))

    def update(self, x: Tensor, y: Tensor) -> None:
        """Refused in one line: a policy adapts from the rewards of trajectories it collects, not from labelled (x, y)
        batches."""
        raise ConfigError(ONLINE_REFUSAL)

    def reset(self) -> None:
        """Refused in one line, as :meth:`update`."""
        raise ConfigError(ONLINE_REFUSAL)

    def configure(self, **options: Any) -> PolicyPredictor:
        """Nothing to set without online updates: returns the predictor; an option is refused in one line."""
        if options:
            raise ConfigError(ONLINE_REFUSAL)
        return self


class MAMLRL(nn.Module):
    """MAML / first-order MAML / Reptile for a Gaussian policy (a model with a ``log_std`` parameter).


    A task is an environment (:class:`~fastadapt.core.episodes.EnvTasks`). One meta-iteration (``meta_loss``):

    1. Inner step ``j = 0 .. inner_steps-1``, per task: sample ``K = tasks.shots`` trajectories with the
       current weights ``phi_j`` (``phi_0 = theta``), compute advantages ``A_t = R_t - b(s_t)`` (discounted
       returns-to-go minus the linear feature baseline fitted on those trajectories, normalised;
       :mod:`fastadapt.rl.returns`), and take a vanilla policy-gradient step

           phi_{j+1} = phi_j - inner_lr * grad L_in(phi_j),   L_in(phi) = -1/|valid| sum_t w_t(phi) A_t.

       With ``inner_objective = "lvc"`` (default) ``w_t = pi_phi(a_t|s_t) / stopgrad(pi_phi(a_t|s_t))``:
       the same gradient as ``log pi`` (value 1, derivative ``grad log pi``), and a Hessian that carries
       the dependence of the sampled trajectories on ``phi``: ProMP's low-variance curvature estimator
       ("LVC", Rothfuss et al. 2019, eq. 7). ``"logprob"`` uses ``w_t = log pi``, MAML's original
       estimator, whose second derivative misses that term.
    2. Outer objective, per task: sample ``Q = tasks.queries`` trajectories with the adapted weights
       ``phi`` (detached: the sampling policy ``pi_old``), advantages as above, and the clipped surrogate

           L_out(theta) = -1/|valid| sum_t min(r_t A_t, clip(r_t, 1-clip, 1+clip) A_t),
           r_t = pi_{phi(theta)}(a_t|s_t) / pi_old(a_t|s_t),

       averaged over tasks. ``phi(theta)`` keeps the inner step's graph (second order); with
       ``first_order=True`` the inner gradients are detached (``d phi / d theta = I``).

    Why the clipped surrogate rather than TRPO: it is a plain differentiable loss, so the engine's one
    loop (backward, clip, Adam step) runs it unchanged, as it runs every other algorithm; TRPO's
    conjugate-gradient step with a line search under a KL constraint is not a loss and would need its
    own optimizer. ProMP showed the clipped surrogate with the LVC inner estimator matching or beating
    MAML-TRPO on the same benchmarks. The loop takes one optimizer step per meta-iteration: at that
    step ``pi_old = pi_phi`` so ``r_t = 1`` and the clip does not bind; the gradient is the policy
    gradient through the inner step. ProMP's several PPO epochs on the same trajectories would need the
    loop to step the optimizer more than once per ``meta_loss``, which the contract does not offer;
    fresh trajectories every step cost a rollout each (measured in docs/RL.md).

    ``outer = "reptile"``: Reptile for policies through the same code: ``inner_steps`` policy-gradient
    steps, each on fresh trajectories, then the surrogate ``1/2 ||theta - stopgrad(mean_i phi_i)||^2``
    (:func:`fastadapt.algorithms.reptile.reptile_surrogate`); with SGD at rate epsilon the loop's step
    is Reptile's ``theta += epsilon (mean phi - theta)``.

    ``inner_steps = 0``: no adaptation in training: the policy is trained on all tasks jointly (the
    paper's "pretrained" comparison), and adapted at test like the others.

    Metrics: ``return`` (mean undiscounted return of the trajectories sampled after adaptation; for
    Reptile of the last inner step's), ``return_pre`` (before adaptation) and ``loss``.

    Args:
        model: the policy: ``obs [B, D] -> mean [B, A]`` with a parameter ``log_std [A]``
            (:func:`fastadapt.rl.gaussian_mlp`).
        inner_lr: the policy-gradient step size (MAML: 0.1 for 2D navigation).
        inner_steps: adaptation steps in training (0: joint pretraining, no adaptation).
        inner_steps_eval: adaptation steps in ``predict`` / ``adapt`` (default: ``inner_steps``, at least 1).
        first_order: detach the inner gradients (first-order MAML).
        outer: ``"clip"`` (the clipped surrogate on post-adaptation trajectories) or ``"reptile"``.
        clip: the surrogate's clip range epsilon.
        discount: gamma of the returns.
        baseline_reg: ridge coefficient of the linear feature baseline.
        normalize_advantages: zero-mean, unit-variance advantages per task and sampling.
        inner_objective: ``"lvc"`` (ProMP's low-variance curvature) or ``"logprob"`` (see above).
    """

    needs_head: ClassVar[bool] = False
    encodes_meta_batch: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        outer: str = "clip",
        clip: float = 0.2,
        discount: float = 0.99,
        baseline_reg: float = 1e-5,
        normalize_advantages: bool = True,
        inner_objective: str = "lvc",
    ) -> None:
        super().__init__()
        names = dict(model.named_parameters())
        if "log_std" not in names:
            raise ConfigError(
                f"{type(model).__name__} has no parameter log_std; maml-rl needs "
                "a Gaussian policy (model.name = gaussian-mlp)"
            )
        if outer not in OUTERS:
            raise ConfigError(f"algorithm.outer={outer!r} is invalid; choose one of {', '.join(OUTERS)}")
        if inner_objective not in INNER_OBJECTIVES:
            raise ConfigError(
                f"algorithm.inner_objective={inner_objective!r} is invalid; choose one of {', '.join(INNER_OBJECTIVES)}"
            )
        if inner_steps < 0 or (inner_steps_eval is not None and inner_steps_eval < 0):
            raise ConfigError(f"algorithm.inner_steps={inner_steps} / inner_steps_eval={inner_steps_eval} must be >= 0")
        if outer == "reptile" and inner_steps < 1:
            raise ConfigError(
                "algorithm.outer='reptile' needs algorithm.inner_steps >= 1 (it moves towards the adapted weights)"
            )
        if not 0 < clip < 1 or not 0 < discount <= 1 or baseline_reg < 0 or inner_lr < 0:
            raise ConfigError(
                f"algorithm: need 0 < clip < 1, 0 < discount <= 1, baseline_reg >= 0, inner_lr >= 0; got clip={clip}, "
                f"discount={discount}, baseline_reg={baseline_reg}, inner_lr={inner_lr}"
            )
        self.model = model
        self.inner_lr, self.inner_steps, self.first_order = float(inner_lr), int(inner_steps), bool(first_order)
        self.inner_steps_eval = max(1, inner_steps) if inner_steps_eval is None else int(inner_steps_eval)
        self.outer, self.clip, self.discount, self.baseline_reg = (
            outer,
            float(clip),
            float(discount),
            float(baseline_reg),
        )
        self.normalize_advantages, self.inner_objective = bool(normalize_advantages), inner_objective

    # -- pieces ------------------------------------------------------------------------------

    def _theta(self) -> Params:
        return dict(self.model.named_parameters())

    def _policy(self, fast: list[Params]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """Every task's policy at once for :func:`rollout` (one forward when the tasks share weights)."""

        def act(obs: Tensor) -> tuple[Tensor, Tensor]:
            t, n = obs.shape[:2]
            if all(p is fast[0] for p in fast):
                mean = functional_call(self.model, fast[0], (obs.reshape(t * n, -1),)).reshape(t, n, -1)
                return mean, fast[0]["log_std"].expand(t, -1)
            means = [functional_call(self.model, fast[i], (obs[i],)) for i in range(t)]
            return torch.stack(means), torch.stack([fast[i]["log_std"] for i in range(t)])

        return act

    def _advantages(self, traj: Trajectories) -> Tensor:
        return torch.stack(
            [
                advantages(
                    traj.obs[t],
                    traj.rewards[t],
                    traj.mask[t],
                    self.discount,
                    self.baseline_reg,
                    self.normalize_advantages,
                )
                for t in range(traj.obs.shape[0])
            ]
        )

    def sample(self, tasks: EnvTasks, fast: list[Params], per_task: int, phase: int) -> Trajectories:
        """``per_task`` trajectories of each task with its weights ``fast[t]`` (seeded by the task and ``phase``)."""
        p = next(self.model.parameters())
        return rollout(tasks, self._policy(fast), per_task, phase, dtype=p.dtype, device=p.device)

    def inner_update(self, params: Params, traj: Trajectories, adv: Tensor, task: int, mode: str) -> Params:
        """One policy-gradient step of task ``task`` on ``traj``; ``mode``: "second" (graph kept), "first" (gradients
        detached), "none" (the result detached: evaluation)."""
        loss = inner_loss(
            self.model, params, traj.obs[task], traj.actions[task], adv[task], traj.mask[task], self.inner_objective
        )
        names = list(params)
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=mode == "second", allow_unused=True)
        out = {}
        for k, g in zip(names, grads):
            g = torch.zeros_like(params[k]) if g is None else g
            w = params[k] - self.inner_lr * (g if mode == "second" else g.detach())
            out[k] = w.detach().requires_grad_() if mode == "none" else w
        return out

    def adapt_tasks(
        self, tasks: EnvTasks, steps: int, per_task: int, mode: str = "none", theta: Params | None = None
    ) -> tuple[list[Params], list[Tensor], Trajectories | None]:
        """Every task's weights after ``steps`` policy-gradient steps on ``per_task`` fresh trajectories each.

        Returns the fast weights, the mean return ``[T]`` of the trajectories of each step (the
        policy before that step), and the last step's trajectories.
        """
        theta = self._theta() if theta is None else theta
        fast = [theta] * tasks.num_tasks
        curve: list[Tensor] = []
        traj = None
        with torch.enable_grad():
            for j in range(steps):
                traj = self.sample(tasks, fast, per_task, phase=j)
                curve.append(traj.returns().mean(1).detach())
                adv = self._advantages(traj)
                fast = [self.inner_update(fast[t], traj, adv, t, mode) for t in range(tasks.num_tasks)]
        return fast, curve, traj

    # -- the contract --------------------------------------------------------------------------

    def meta_loss(self, batch: EnvTasks) -> MetaOutput:
        if not isinstance(batch, EnvTasks):
            raise ConfigError(
                "maml-rl trains on environment tasks (EnvTasks, e.g. "
                f"data.dataset = nav2d), found {type(batch).__name__}"
            )
        theta = self._theta()
        mode = "none" if self.outer == "reptile" else ("first" if self.first_order else "second")
        fast, curve, last = self.adapt_tasks(batch, self.inner_steps, batch.shots, mode, theta)
        metrics: dict[str, float] = {}
        if curve:
            metrics["return_pre"] = float(curve[0].mean())
        if self.outer == "reptile":
            target = {k: torch.stack([f[k] for f in fast]).mean(0) for k in theta}
            loss = reptile_surrogate(theta, target)
            metrics["return"] = float(curve[-1].mean())
        else:
            post = self.sample(
                batch,
                [{k: v.detach() for k, v in f.items()} for f in fast] if self.inner_steps else fast,
                batch.queries,
                phase=self.inner_steps,
            )
            adv = self._advantages(post)
            losses = []
            for t in range(batch.num_tasks):
                logp = log_probs(self.model, fast[t], post.obs[t], post.actions[t])
                losses.append(clipped_surrogate(logp, logp.detach(), adv[t], post.mask[t], self.clip))
            loss = torch.stack(losses).mean()
            metrics["return"] = float(post.returns().mean())
            metrics.setdefault("return_pre", metrics["return"])
        metrics["loss"] = float(loss.detach())
        return MetaOutput(loss, metrics)

    def adapt(self, task: EnvTasks, steps: int | None = None) -> PolicyPredictor:
        """The policy adapted to the first task of ``task`` with ``steps`` (default ``inner_steps_eval``) steps of
        ``task.shots`` trajectories; the module is not changed."""
        fast, _, _ = self.adapt_tasks(
            task.select(slice(0, 1)), self.inner_steps_eval if steps is None else steps, task.shots
        )
        return PolicyPredictor(self.model, fast[0])

    def predict(self, batch: EnvTasks) -> Tensor:
        """``[T]``: each task's mean return over ``batch.queries`` trajectories after ``inner_steps_eval`` adaptation
        steps."""
        fast, _, _ = self.adapt_tasks(batch, self.inner_steps_eval, batch.shots)
        with torch.no_grad():
            post = self.sample(batch, fast, batch.queries, phase=self.inner_steps_eval)
        return post.returns().mean(1).detach()

    def adaptation_curve(self, tasks: EnvTasks, steps: int, per_task: int) -> Tensor:
        """``[T, steps + 1]``: each task's mean return after 0, 1, ..., ``steps`` adaptation steps of ``per_task``
        trajectories
        (the MAML paper's Figure 4: the trajectories of step j score the policy after j steps and make step j + 1)."""
        fast, curve, _ = self.adapt_tasks(tasks, steps, per_task)
        with torch.no_grad():
            last = self.sample(tasks, fast, per_task, phase=steps)
        return torch.stack([*curve, last.returns().mean(1)], dim=1)
