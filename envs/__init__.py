"""Nonstationary envs: the world changes at shifts, and the agent has to keep learning.

An agent's Args inherits `ShiftFlags`, so these become flat CLI flags:

    --shift friction obs-permute --shift-every 1000000 --friction.low 0.1

and builds its envs with `make_vector_env(env_id, num_envs, args, seed, total_timesteps)`.
The returned `ShiftingVectorEnv` applies each task to all sub-envs at the same global step,
puts `infos["shift"]` on the step where a task starts, and keeps every event in `shift_events`.

A new kind of shift: see envs/shifts.py, which holds the registry.
"""

from envs.build import learner_envs, make_vector_env
from envs.observation import OffsetConfig
from envs.physics import PhysicsFlags, refine_physics
from envs.schedule import ScaleRange, ShiftSchedule, ShiftWrapper
from envs.shifts import FIXED_ON_RESUME, SHIFTS, ShiftFlags, ShiftName, unused_flags
from envs.vector import ShiftingVectorEnv, check_env_id, check_spaces, make_env

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
