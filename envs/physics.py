"""Physics shifts: each task scales one group of constants of the live MuJoCo model.

The wrappers edit `env.unwrapped.model` in place and never rebuild the env, because rebuilding
would also reset state held outside it (observation-normalisation statistics, episode
counters). Each wrapper stores the base values at construction and sets value = base * scale,
so task k always gives the same model, whatever tasks came before: shifts do not compound.

Every kind draws one scalar scale per task from its `ScaleRange`; the default ranges live in
`envs.ShiftFlags`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import mujoco
import numpy as np

from envs.schedule import ScaleRange, ShiftWrapper
from validation import ConfigError, require

Integrator = Literal["model", "euler", "implicit", "implicitfast", "rk4"]


MUJOCO_WARNINGS_SHOWN: set[str] = set()


def mujoco_warning(message: str) -> None:
    """MuJoCo's own warnings, as Python warnings, each distinct message once per process.
    MuJoCo prints each to stderr every time it happens, e.g. mujoco 4 on gymnasium's
    half_cheetah.xml ("compiler attribute 'settotalmass' is deprecated") once per model
    compiled, so again at every clip's env. Python's own once-per-place memory is not enough:
    it is forgotten whenever any code changes the warning filters (every
    `warnings.catch_warnings()` block does), so MUJOCO_WARNINGS_SHOWN remembers. No message
    is hidden: the first of each goes through `warnings`, where filters (`-W error`) apply."""
    import warnings

    if message in MUJOCO_WARNINGS_SHOWN:
        return
    MUJOCO_WARNINGS_SHOWN.add(message)
    warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


mujoco.set_mju_user_warning(mujoco_warning)


@dataclass
class PhysicsFlags:
    """How finely MuJoCo integrates the world (a mixin of the RL learners' Args). The control
    period (the env's dt = timestep * frame_skip, which the rewards' velocities divide by) never
    changes; only the integration inside it does."""

    physics_substeps: int = 1
    """integrate each control period in K times as many MuJoCo steps (timestep / K, frame_skip
    x K; an env step costs about K times as much). HalfCheetah's semi-implicit Euler at 0.01 s
    lets a flailing policy at low friction gain momentum no contact can supply
    (docs/shifts-and-envs.md); K >= 10 or --physics-integrator rk4 keep it physical"""
    physics_integrator: Integrator = "model"
    """MuJoCo's integrator: model (the env's own: semi-implicit Euler for HalfCheetah, RK4 for
    Ant, Hopper, Walker2d, Humanoid), euler, implicit, implicitfast or rk4 (4 evaluations a
    step)"""


INTEGRATORS = {
    "euler": mujoco.mjtIntegrator.mjINT_EULER,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    "rk4": mujoco.mjtIntegrator.mjINT_RK4,
}


def check_physics_flags(flags: PhysicsFlags) -> None:
    require("--physics-substeps", flags.physics_substeps, ">= 1")


def refines_physics(flags: Any) -> bool:
    return (
        getattr(flags, "physics_substeps", 1) != 1
        or getattr(flags, "physics_integrator", "model") != "model"
    )


def refine_physics(env: gym.Env, flags: Any) -> gym.Env:
    """`env` with its integration refined as `flags` say: MuJoCo's timestep divided by K and
    the env's frame_skip multiplied by K (the control period stays), and its integrator set.
    Returns the env itself, edited in place; one line of ConfigError for an env that is not a
    MuJoCo env."""
    if not refines_physics(flags):
        return env
    unwrapped = env.unwrapped
    model = getattr(unwrapped, "model", None)
    if not isinstance(model, mujoco.MjModel) or not hasattr(unwrapped, "frame_skip"):
        env_id = env.spec.id if env.spec is not None else type(unwrapped).__name__
        raise ConfigError(
            f"--physics-substeps / --physics-integrator need a MuJoCo env; {env_id} is not one"
        )
    control_period = unwrapped.dt
    model.opt.timestep /= flags.physics_substeps
    unwrapped.frame_skip *= flags.physics_substeps
    if flags.physics_integrator != "model":
        model.opt.integrator = INTEGRATORS[flags.physics_integrator]
    assert math.isclose(unwrapped.dt, control_period), "the control period must not change"
    return env


class PhysicsShift(ShiftWrapper):
    """Draws one scale per task; subclasses say which model constants it multiplies."""

    param_key: ClassVar[str]
    """Name of the scale in the task's params, e.g. "friction_scale"."""

    def __init__(self, env: gym.Env, config: ScaleRange, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        model = getattr(env.unwrapped, "model", None)
        if not isinstance(model, mujoco.MjModel):
            env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
            raise ConfigError(
                f"the {self.name} shift needs a MuJoCo env; {env_id} has no MuJoCo model"
            )
        self.model: mujoco.MjModel = model
        self.data: mujoco.MjData = env.unwrapped.data
        self.store_base_values()

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        return {self.param_key: self.config.draw(rng, task)}

    def apply(self, params: dict[str, Any]) -> None:
        self.scale_model(params[self.param_key])

    def store_base_values(self) -> None:
        raise NotImplementedError

    def scale_model(self, scale: float) -> None:
        raise NotImplementedError


class FrictionShift(PhysicsShift):
    """Scales the sliding friction of every geom (the paper's Slippery Ant).

    All geoms, not just the floor: MuJoCo's default contact mixing takes the max of the two
    geoms' friction, so scaling only the floor would change nothing while the robot's geoms
    keep friction 1.
    """

    name = "friction"
    param_key = "friction_scale"

    def store_base_values(self) -> None:
        self.base_friction = self.model.geom_friction[:, 0].copy()

    def scale_model(self, scale: float) -> None:
        self.model.geom_friction[:, 0] = self.base_friction * scale


class MassShift(PhysicsShift):
    """Scales every body's mass and inertia together, as a change of density would."""

    name = "mass"
    param_key = "mass_scale"

    def store_base_values(self) -> None:
        self.base_mass = self.model.body_mass.copy()
        self.base_inertia = self.model.body_inertia.copy()

    def scale_model(self, scale: float) -> None:
        self.model.body_mass[:] = self.base_mass * scale
        self.model.body_inertia[:] = self.base_inertia * scale
        # mj_setConst recomputes the constants derived from mass (subtree masses, invweights,
        # actuator_acc0), but it does so by moving the data to qpos0. Save and restore the
        # simulation state so that a shift in mid-episode does not teleport the robot.
        state_kind = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(self.model, state_kind))
        mujoco.mj_getState(self.model, self.data, state, state_kind)
        mujoco.mj_setConst(self.model, self.data)
        mujoco.mj_setState(self.model, self.data, state, state_kind)
        mujoco.mj_forward(self.model, self.data)


class GravityShift(PhysicsShift):
    """Scales the gravity vector."""

    name = "gravity"
    param_key = "gravity_scale"

    def store_base_values(self) -> None:
        self.base_gravity = self.model.opt.gravity.copy()

    def scale_model(self, scale: float) -> None:
        self.model.opt.gravity[:] = self.base_gravity * scale


class GearShift(PhysicsShift):
    """Scales every actuator's gear: the same action now produces a stronger or weaker torque."""

    name = "gear"
    param_key = "gear_scale"

    def store_base_values(self) -> None:
        self.base_gear = self.model.actuator_gear[:, 0].copy()

    def scale_model(self, scale: float) -> None:
        self.model.actuator_gear[:, 0] = self.base_gear * scale
