"""Meta-reinforcement learning components: task families of Gymnasium environments, rollouts, the
Gaussian policy, returns and the linear baseline (Gymnasium is the extra ``fastadapt[rl]``)."""

from fastadapt.rl.envs import EnvFamily, EnvTaskSource, nav2d_family, pendulum_family, require_gymnasium, task_family
from fastadapt.rl.policy import GaussianMLPPolicy, gaussian_log_prob, gaussian_mlp
from fastadapt.rl.returns import advantages, baseline_features, discounted_returns, fit_linear_baseline
from fastadapt.rl.rollout import Trajectories, rollout

__all__ = [
    "EnvFamily",
    "EnvTaskSource",
    "GaussianMLPPolicy",
    "Trajectories",
    "advantages",
    "baseline_features",
    "discounted_returns",
    "fit_linear_baseline",
    "gaussian_log_prob",
    "gaussian_mlp",
    "nav2d_family",
    "pendulum_family",
    "require_gymnasium",
    "rollout",
    "task_family",
]
