"""The registry of shift kinds and the flags that configure them.

A new kind of shift is one `ShiftWrapper` subclass (physics.py, observation.py, reward.py),
one line in `SHIFTS`, its name in `ShiftName`, and its config field in `ShiftFlags`.
The vector envs (vector.py, envpool_backend.py) read the registry from here.
"""

from dataclasses import dataclass, field
from typing import Literal

from envs.observation import ObsNoiseShift, ObsOffsetShift, ObsPermuteShift, OffsetConfig
from envs.physics import FrictionShift, GearShift, GravityShift, MassShift
from envs.reward import RewardScaleShift, RewardSignShift
from envs.schedule import ScaleRange, ShiftWrapper

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
