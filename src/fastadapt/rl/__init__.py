"""Meta-reinforcement learning components: task families of Gymnasium environments (and the half-cheetah dynamics
families on MuJoCo, the extra ``fastadapt[mujoco]``), rollouts, the Gaussian policy, returns and the linear baseline;
transitions for dynamics models, the model-predictive planner and acting with a model that adapts online (Gymnasium
is the extra ``fastadapt[rl]``)."""

from fastadapt.rl.cheetah import cheetah_body_family, cheetah_crippled_family
from fastadapt.rl.envs import EnvFamily, EnvTaskSource, nav2d_family, pendulum_family, require_gymnasium, task_family
from fastadapt.rl.model_based import ControlRecord, OnlineDynamics, control_episode, recovery_steps, return_after
from fastadapt.rl.mpc import cheetah_reward, pendulum_reward, pendulum_step, plan
from fastadapt.rl.policy import GaussianMLPPolicy, gaussian_log_prob, gaussian_mlp
from fastadapt.rl.returns import advantages, baseline_features, discounted_returns, fit_linear_baseline
from fastadapt.rl.rollout import Trajectories, rollout
from fastadapt.rl.transitions import Normalizer, Transitions, TransitionWindows, collect

__all__ = [
    "ControlRecord",
    "EnvFamily",
    "EnvTaskSource",
    "GaussianMLPPolicy",
    "Normalizer",
    "OnlineDynamics",
    "TransitionWindows",
    "Trajectories",
    "Transitions",
    "advantages",
    "baseline_features",
    "cheetah_body_family",
    "cheetah_crippled_family",
    "cheetah_reward",
    "collect",
    "control_episode",
    "discounted_returns",
    "fit_linear_baseline",
    "gaussian_log_prob",
    "gaussian_mlp",
    "nav2d_family",
    "pendulum_family",
    "pendulum_reward",
    "pendulum_step",
    "plan",
    "recovery_steps",
    "require_gymnasium",
    "return_after",
    "rollout",
    "task_family",
]
