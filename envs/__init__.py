"""Nonstationary envs: the world changes at shifts, and the agent has to keep learning.

An agent's Args inherits `ShiftFlags`, so these become flat CLI flags:

    --shift friction obs-permute --shift-every 1000000 --friction.low 0.1

and builds its envs with `make_vector_env(env_id, num_envs, args, seed, total_timesteps)`.
The returned `ShiftingVectorEnv` applies each task to all sub-envs at the same global step,
puts `infos["shift"]` on the step where a task starts, and keeps every event in `shift_events`.

A new kind of shift is one `ShiftWrapper` subclass (physics.py, observation.py, reward.py),
one line in `SHIFTS`, its name in `ShiftName`, and its config field in `ShiftFlags`.
"""

from dataclasses import dataclass, field
from typing import Literal

from envs.build import learner_envs, make_vector_env
from envs.observation import ObsNoiseShift, ObsOffsetShift, ObsPermuteShift, OffsetConfig
from envs.physics import (
    FrictionShift,
    GearShift,
    GravityShift,
    MassShift,
    PhysicsFlags,
    refine_physics,
)
from envs.reward import RewardScaleShift, RewardSignShift
from envs.schedule import ScaleRange, ShiftSchedule, ShiftWrapper
from envs.vector import ShiftingVectorEnv, check_env_id, check_spaces, make_env

ShiftName = Literal[
    "friction",
    "mass",
    "gravity",
    "gear",
    "obs-permute",
    "obs-noise",
    "obs-offset",
    "reward-sign",
    "reward-scale",
]

SHIFTS: dict[str, tuple[type[ShiftWrapper], str | None]] = {
    # --shift name: (wrapper, the ShiftFlags field holding its config, None if it has none)
    "friction": (FrictionShift, "friction"),
    "mass": (MassShift, "mass"),
    "gravity": (GravityShift, "gravity"),
    "gear": (GearShift, "gear"),
    "obs-permute": (ObsPermuteShift, None),
    "obs-noise": (ObsNoiseShift, "obs_noise"),
    "obs-offset": (ObsOffsetShift, "obs_offset"),
    "reward-sign": (RewardSignShift, None),
    "reward-scale": (RewardScaleShift, "reward_scale"),
}


@dataclass
class ShiftFlags:
    """What changes at each shift and when; a mixin for the agents' Args dataclasses."""

    shift: tuple[ShiftName, ...] = ()
    """What changes at each shift; several kinds compose and shift together (none: stationary)."""
    shift_every: int = 0
    """Global env steps (summed over sub-envs) between shifts; 0 = no periodic shift."""
    shift_at: tuple[int, ...] = ()
    """Explicit global env steps at which a shift happens (in addition to --shift-every)."""
    friction: ScaleRange = field(default_factory=lambda: ScaleRange(0.02, 2.0, log_uniform=True))
    """friction shift: scale of every geom's sliding friction (Slippery Ant: log-uniform [0.02, 2])."""
    mass: ScaleRange = field(default_factory=lambda: ScaleRange(0.5, 2.0, log_uniform=True))
    """mass shift: scale of every body's mass and inertia."""
    gravity: ScaleRange = field(default_factory=lambda: ScaleRange(0.5, 1.5, log_uniform=False))
    """gravity shift: scale of the gravity vector."""
    gear: ScaleRange = field(default_factory=lambda: ScaleRange(0.5, 1.5, log_uniform=False))
    """gear shift: scale of every actuator's gear (torque per unit of action)."""
    obs_noise: ScaleRange = field(default_factory=lambda: ScaleRange(0.0, 0.5, log_uniform=False))
    """obs-noise shift: std of the Gaussian noise added to every observation."""
    obs_offset: OffsetConfig = field(default_factory=OffsetConfig)
    """obs-offset shift: each task's fixed offset, added to every observation."""
    reward_scale: ScaleRange = field(
        default_factory=lambda: ScaleRange(0.1, 10.0, log_uniform=True)
    )
    """reward-scale shift: factor that multiplies the reward."""


FIXED_ON_RESUME: tuple[str, ...] = (
    # The env flags a resumed RL run cannot change: its envs, their physics and its tasks.
    "env_id", "num_envs", "env_backend", "physics_substeps", "physics_integrator",
    "shift", "shift_every", "shift_at", *(field for _, field in SHIFTS.values() if field),
)  # fmt: skip


def unused_flags(flags: ShiftFlags) -> dict[str, str]:
    """{config field: why it has no effect}: the ranges of the shift kinds --shift does not name."""
    named = set(getattr(flags, "shift", ()))
    return {
        config_field: f"it configures the {name} shift, and --shift does not name {name}"
        for name, (_, config_field) in SHIFTS.items()
        if config_field is not None and name not in named
    }


PAPER_FRICTIONS = (0.2961, 0.2399, 0.0387, 0.3528, 0.0829)
"""The friction of the paper's code's five Slippery Ant phases (KevinGuo27/lop-jax,
rlopt/frictions, friction_seed 0: a fixed table log-uniform in [0.02, 2], the same for every
seed). It sets every geom's sliding friction; Ant-v5's are all 1, so as scales they are the same
values (docs/slippery-ant.md)."""

SLIPPERY_ANT: dict = {
    # The named `slippery-ant` preset: Ant whose friction changes every 2M steps, as in the
    # loss-of-plasticity paper's Slippery Ant: the paper's code's table of five frictions
    # (--friction.table with no values draws log-uniform in [0.02, 2] from the run's seed).
    "env_id": "Ant-v5",
    "shift": ("friction",),
    "shift_every": 2_000_000,
    "friction": ScaleRange(0.02, 2.0, log_uniform=True, table=PAPER_FRICTIONS),
}

__all__ = [
    "FIXED_ON_RESUME",
    "PAPER_FRICTIONS",
    "SHIFTS",
    "SLIPPERY_ANT",
    "PhysicsFlags",
    "OffsetConfig",
    "ScaleRange",
    "ShiftFlags",
    "ShiftName",
    "ShiftSchedule",
    "ShiftWrapper",
    "ShiftingVectorEnv",
    "check_env_id",
    "check_spaces",
    "learner_envs",
    "make_env",
    "make_vector_env",
    "refine_physics",
    "unused_flags",
]
