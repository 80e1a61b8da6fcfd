"""Half-cheetah dynamics families on MuJoCo (Nagabandi et al. 2019's disabled joint; changed mass and friction), as
task families of :func:`fastadapt.rl.task_family` and registered task sources (``cheetah-crippled``,
``cheetah-body``), and what the MuJoCo families share (:func:`require_mujoco`, :func:`crippled_family`,
:func:`crippled_options`; the ant: :mod:`fastadapt.rl.ant`). MuJoCo is the extra ``pip install fastadapt[mujoco]``,
imported on first use; its absence is a one-line error."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from fastadapt.core.errors import ConfigError
from fastadapt.rl.envs import EnvFamily, EnvTaskSource, _horizon, _options, require_gymnasium, task_family

INSTALL = 'pip install "mujoco==3.3.7" "gymnasium[mujoco]"  (or pip install fastadapt[mujoco])'
CHEETAH_HORIZON = 200  # steps per episode (the environment's own limit is 1000)
CHEETAH_JOINTS = (0, 1, 2, 3, 4, 5)  # bthigh bshin bfoot fthigh fshin ffoot
CHEETAH_GAIN = (0.0, 0.0)  # the failed joint's remaining gain: disabled
CHEETAH_SWITCH = 0.5  # the change happens at this fraction of the horizon
CHEETAH_MASS = (0.5, 1.5)  # every body's mass times a factor in this range (log-uniform)
CHEETAH_FRICTION = (0.25, 1.5)  # sliding friction times a factor in this range (log-uniform)


def require_mujoco() -> None:
    """Nothing, or a one-line :class:`ConfigError` naming the install command when MuJoCo is missing."""
    require_gymnasium()
    try:
        import mujoco  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError(
            f"the MuJoCo families (half-cheetah, ant) need MuJoCo, which is not installed; {INSTALL}"
        ) from None


def _make(horizon: int) -> Any:
    from fastadapt.rl.cheetah_body import make_cheetah_body

    return make_cheetah_body(horizon)


def crippled_sampler(
    joints: Sequence[int] = CHEETAH_JOINTS,
    gain: tuple[float, float] = CHEETAH_GAIN,
    switch_step: int = 0,
    part: str = "joint",
) -> Callable[[np.random.Generator], dict[str, float]]:
    """One part of ``joints`` (uniform; the attribute ``part``: a joint, a leg), its remaining gain uniform in
    ``gain``, changed at step ``switch_step``."""
    choices = [int(j) for j in joints]

    def sample(rng: np.random.Generator) -> dict[str, float]:
        return {
            part: float(choices[int(rng.integers(len(choices)))]),
            "gain": float(rng.uniform(*gain)),
            "switch_step": float(switch_step),
        }

    return sample


def body_sampler(
    mass: tuple[float, float] = CHEETAH_MASS, friction: tuple[float, float] = CHEETAH_FRICTION
) -> Callable[[np.random.Generator], dict[str, float]]:
    """A mass factor and a friction factor, each log-uniform in its range."""

    def sample(rng: np.random.Generator) -> dict[str, float]:
        m = math.exp(rng.uniform(math.log(mass[0]), math.log(mass[1])))
        f = math.exp(rng.uniform(math.log(friction[0]), math.log(friction[1])))
        return {"mass_scale": m, "friction_scale": f}

    return sample


def _check_range(label: str, lo: float, hi: float, low_bound: float = 0.0, closed: bool = False) -> None:
    ok = (lo >= low_bound if closed else lo > low_bound) and lo <= hi and math.isfinite(hi)
    if not ok:
        sign = ">=" if closed else ">"
        raise ConfigError(
            f"data.options.{label}={[lo, hi]} is invalid; give [low, high] with low {sign} {low_bound}, low <= high"
        )


def crippled_family(
    make: Callable[[int], Any],
    parts: int,
    part: str,
    chosen: Sequence[int],
    gain: tuple[float, float],
    switch: float,
    horizon: int,
    name: str,
) -> EnvFamily:
    """A family in which one part per task (uniform of ``chosen``, indices in ``0..parts - 1``; the attribute
    ``part`` of :class:`~fastadapt.rl.cheetah_body.ChangedBody`) keeps a fraction of its gear (uniform in ``gain``;
    ``(0, 0)``: disabled) from step ``round(switch * horizon)`` on (``switch = 0``: from the start). ``make(horizon)``
    makes the environment; bad values are one-line errors naming ``data.options.<part>s``, ``gain``, ``switch``."""
    require_mujoco()
    if not chosen or any(not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < parts for j in chosen):
        raise ConfigError(f"data.options.{part}s={list(chosen)!r} is invalid; give {part} indices in 0..{parts - 1}")
    _check_range("gain", float(gain[0]), float(gain[1]), closed=True)
    if not (isinstance(switch, (int, float)) and 0.0 <= switch < 1.0):
        raise ConfigError(f"data.options.switch={switch!r} is invalid; give the fraction of the episode in [0, 1)")
    sampler = crippled_sampler(tuple(chosen), (float(gain[0]), float(gain[1])), int(round(switch * horizon)), part)
    return task_family(partial(make, horizon), sampler, horizon=horizon, name=name)


def cheetah_crippled_family(
    joints: Sequence[int] = CHEETAH_JOINTS,
    gain: tuple[float, float] = CHEETAH_GAIN,
    switch: float = CHEETAH_SWITCH,
    horizon: int = CHEETAH_HORIZON,
) -> EnvFamily:
    """HalfCheetah-v5 in which one joint per task (of ``joints``, actuator indices 0..5) keeps a fraction of its gain
    (uniform in ``gain``; ``(0, 0)``: disabled) from step ``round(switch * horizon)`` on (``switch = 0``: from the
    start)."""
    return crippled_family(_make, 6, "joint", joints, gain, switch, horizon, "cheetah-crippled")


def cheetah_body_family(
    mass: tuple[float, float] = CHEETAH_MASS,
    friction: tuple[float, float] = CHEETAH_FRICTION,
    horizon: int = CHEETAH_HORIZON,
) -> EnvFamily:
    """HalfCheetah-v5 whose masses (and inertias) and sliding friction are scaled per task (log-uniform factors)."""
    require_mujoco()
    _check_range("mass", float(mass[0]), float(mass[1]))
    _check_range("friction", float(friction[0]), float(friction[1]))
    sampler = body_sampler((float(mass[0]), float(mass[1])), (float(friction[0]), float(friction[1])))
    return task_family(partial(_make, horizon), sampler, horizon=horizon, name="cheetah-body")


def _pair(opts: dict[str, Any], key: str) -> tuple[float, float]:
    v = opts[key]
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ):
        raise ConfigError(f"data.options.{key}={v!r} is invalid; give [low, high]")
    return float(v[0]), float(v[1])


CRIPPLED_OPTIONS = {
    "joints": list(CHEETAH_JOINTS),
    "gain": list(CHEETAH_GAIN),
    "switch": CHEETAH_SWITCH,
    "horizon": CHEETAH_HORIZON,
}
BODY_OPTIONS = {"mass": list(CHEETAH_MASS), "friction": list(CHEETAH_FRICTION), "horizon": CHEETAH_HORIZON}


def crippled_options(
    options: dict[str, Any], allowed: dict[str, Any], key: str, source: str
) -> tuple[tuple[int, ...], tuple[float, float], float, int]:
    """The parts (``data.options.<key>``), gain range, switch and horizon of a crippled family's ``options``, over
    the defaults ``allowed`` (unknown keys and values of the wrong type: one-line errors)."""
    opts = _options(_Options(options), allowed, source)
    chosen = opts[key]
    if not isinstance(chosen, (list, tuple)):
        raise ConfigError(f"data.options.{key}={chosen!r} is invalid; give a list of indices")
    return tuple(chosen), _pair(opts, "gain"), opts["switch"], _horizon(opts["horizon"])


def _cheetah_crippled(options: dict[str, Any], source: str) -> EnvFamily:
    return cheetah_crippled_family(*crippled_options(options, CRIPPLED_OPTIONS, "joints", source))


def _cheetah_body(options: dict[str, Any], source: str) -> EnvFamily:
    opts = _options(_Options(options), BODY_OPTIONS, source)
    return cheetah_body_family(_pair(opts, "mass"), _pair(opts, "friction"), _horizon(opts["horizon"]))


CHEETAH_FAMILIES: dict[str, Callable[[dict[str, Any], str], EnvFamily]] = {
    "crippled": _cheetah_crippled,  # cheetah-crippled
    "body": _cheetah_body,  # cheetah-body
}


def family_from_options(kind: str, options: dict[str, Any], source: str) -> EnvFamily:
    """The half-cheetah's ``crippled`` or ``body`` family from ``data.options`` (unknown keys and bad values:
    one-line errors). The transitions' families, the ant's too: :func:`~fastadapt.rl.transitions.transition_family`.
    """
    build = CHEETAH_FAMILIES.get(kind) if isinstance(kind, str) else None
    if build is None:
        raise ConfigError(f"data.options.family={kind!r} is invalid; give 'crippled' or 'body'")
    return build(options, source)


class _Options:
    """What :func:`fastadapt.rl.envs._options` reads of a request: its options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options


def cheetah_crippled(request: Any) -> EnvTaskSource:
    """Registered as ``data.dataset = "cheetah-crippled"``: HalfCheetah-v5 with one joint disabled (or weakened)
    half-way through the episode (``data.options``: ``joints = [0..5]``, ``gain = [0, 0]``, ``switch = 0.5``,
    ``horizon = 200``)."""
    family = _cheetah_crippled(dict(request.options), "cheetah-crippled")
    return EnvTaskSource(family, request.shots, request.queries, request.seed)


def cheetah_body(request: Any) -> EnvTaskSource:
    """Registered as ``data.dataset = "cheetah-body"``: HalfCheetah-v5 with masses and friction scaled per task
    (``data.options``: ``mass = [0.5, 1.5]``, ``friction = [0.25, 1.5]``, ``horizon = 200``)."""
    family = _cheetah_body(dict(request.options), "cheetah-body")
    return EnvTaskSource(family, request.shots, request.queries, request.seed)
