"""The envs a learner trains on: the flags checked, then the gymnasium or the envpool backend
built behind one ShiftingVectorEnv (envs/vector.py; envs/envpool_backend.py)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import envs.shifts as shifts
from envs.envpool_backend import EnvpoolVectorEnv, check_envpool_env_id
from envs.physics import check_physics_flags, refines_physics
from envs.vector import ShiftingVectorEnv, check_env_id, check_shift_flags, check_spaces, make_env
from validation import ConfigError


def make_vector_env(
    env_id: str,
    num_envs: int,
    flags: shifts.ShiftFlags,
    seed: int,
    total_timesteps: int,
    backend: str = "gymnasium",
    envpool_threads: int = 0,
    max_episode_steps: int = 0,
    require_a_shift: bool = True,
) -> ShiftingVectorEnv:
    """Check the flags, then build `num_envs` shifting sub-envs behind one ShiftingVectorEnv.

    Same-step autoreset: after a terminated or truncated step the returned obs is the new
    episode's first obs, and infos["final_obs"][i] (with mask infos["_final_obs"]) holds the
    last obs of the finished episode, which the agent needs to bootstrap truncated episodes.
    `reset(seed=s)` seeds sub-env i with s + i (SyncVectorEnv does this itself).

    `backend` "gymnasium" steps gymnasium envs one after another in this process; "envpool"
    steps envpool's C++ envs in `envpool_threads` threads (0: envpool's choice) with the same
    contract, except that a physics shift ends every episode at the shift step
    (envs/envpool_backend.py).
    """
    if hasattr(flags, "physics_substeps"):  # a learner's flags (tests may pass ShiftFlags)
        check_physics_flags(flags)
    if backend == "envpool":
        if refines_physics(flags):
            raise ConfigError(
                "--physics-substeps / --physics-integrator: the envpool backend builds its "
                "MuJoCo models in C++ and takes neither; use --env-backend gymnasium"
            )
        check_envpool_env_id(env_id)
        schedule = check_shift_flags(flags, total_timesteps, num_envs, require_a_shift)
        limit = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        pool = EnvpoolVectorEnv(env_id, num_envs, flags, seed, num_threads=envpool_threads, **limit)
        return ShiftingVectorEnv(pool, schedule)
    if backend != "gymnasium":
        raise ConfigError(f"--env-backend {backend!r}: choose gymnasium or envpool")
    check_env_id(env_id)
    schedule = check_shift_flags(flags, total_timesteps, num_envs, require_a_shift)
    vector_env = gym.vector.SyncVectorEnv(
        [
            make_env(env_id, flags, seed, env_index, max_episode_steps)
            for env_index in range(num_envs)
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return ShiftingVectorEnv(vector_env, schedule)


def learner_envs(
    args: Any, learner: str, bounded_actions: bool, discrete_actions: bool = False
) -> ShiftingVectorEnv:
    """An RL learner's envs, from its flags (env_id, num_envs, seed, total_timesteps,
    env_backend, envpool_threads, max_episode_steps if it has it, and the shift flags), with
    their spaces checked (see `check_spaces`)."""
    envs = make_vector_env(
        args.env_id,
        args.num_envs,
        args,
        args.seed,
        args.total_timesteps,
        backend=args.env_backend,
        envpool_threads=args.envpool_threads,
        max_episode_steps=getattr(args, "max_episode_steps", 0),
        # A resume may end the run before its next shift (--total-timesteps at its checkpoint).
        require_a_shift=not getattr(args, "resume", None),
    )
    try:
        check_spaces(envs, args.env_id, learner, bounded_actions, discrete_actions)
    except BaseException:
        envs.close()
        raise
    return envs
