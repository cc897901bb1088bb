"""The envpool backend: envpool's C++ MuJoCo envs behind the same vector API as the gymnasium one.

`--env-backend envpool` swaps gymnasium's SyncVectorEnv for `envpool.make_gymnasium(...)`, which
steps all sub-envs in C++ threads. The agents must not notice, so `EnvpoolVectorEnv` gives the
exact contract of `envs.make_vector_env`'s gymnasium path:

- **same-step autoreset.** envpool 1.2 resets a finished sub-env on the *next* call, which then
  ignores that sub-env's action and returns its first observation with reward 0 (next-step,
  like gymnasium 1.x's default; tests/test_envpool.py checks it). Here, after a step in which
  sub-envs finished, those sub-envs are reset at once with `reset(env_id)` (envpool resets a
  subset and clears the pending autoreset), their new first observations replace the returned
  ones, and the finished episodes' last observations go to infos["final_obs"] with mask
  infos["_final_obs"], as SyncVectorEnv(SAME_STEP) does. Every action is a real transition.
- **seeding.** `reset(seed=s)` gives sub-env i seed s + i: envpool seeds at construction, so a
  reset with a new seed rebuilds the pool (milliseconds).
- **shifts.** Each sub-env has the same chain of `ShiftWrapper`s as on the gymnasium backend,
  built over a slot that holds the sub-env's latest step result, so a task draws the same
  parameters and an observation or reward shift transforms a step identically (obs-permute,
  obs-noise with its per-sub-env noise stream, reward-sign, reward-scale). Physics shifts edit a
  live `mujoco.MjModel`, which envpool keeps inside C++; they are refused with a ConfigError that
  names the gymnasium backend (see `check_envpool_shifts`).

Observation/reward normalisation and episode statistics stay with the agent (envs/normalize.py),
so they are the same code on both backends.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from envs.schedule import ConfigError
from envs.vector import wrap_shifts

PHYSICS_SHIFTS = ("friction", "mass", "gravity", "gear")
"""Shift kinds that edit the live MuJoCo model; envpool's model is out of reach."""

INSTALL_HINT = "install it with: pip install -e '.[envpool]' (make test does)"


def import_envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise ConfigError(
            f"--env-backend envpool needs the envpool package; {INSTALL_HINT}"
        ) from None
    return envpool


def check_envpool_env_id(env_id: str) -> None:
    """Raise ConfigError naming the closest envpool ids if envpool has no `env_id`."""
    known = import_envpool().list_all_envs()
    if env_id in known:
        return
    close = difflib.get_close_matches(env_id, known, n=3)
    hint = f"did you mean: {', '.join(close)}?" if close else "see envpool.list_all_envs()"
    raise ConfigError(f"envpool has no --env-id {env_id!r}; {hint}")


def check_envpool_shifts(shift_names: tuple[str, ...]) -> None:
    physics = [name for name in shift_names if name in PHYSICS_SHIFTS]
    if physics:
        raise ConfigError(
            f"--shift {' '.join(physics)} changes the live MuJoCo model, which envpool keeps in C++ "
            f"out of reach; use --env-backend gymnasium for physics shifts (envpool runs "
            f"obs-permute, obs-noise, reward-sign and reward-scale)"
        )


class _SubEnvSlot(gym.Env):
    """One sub-env as the shift wrappers see it: the spaces, and the step result the vector env
    has just put here. The wrappers' step/reset transform it exactly as on a real env."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, spec: Any):
        self.observation_space = observation_space
        self.action_space = action_space
        self.spec = spec
        self.result: tuple = ()

    def step(self, action: Any) -> tuple:
        return self.result

    def reset(self, **kwargs: Any) -> tuple:
        return self.result


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """envpool's vector env with same-step autoreset, per-sub-env seeds and shift wrappers."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        flags: envs.ShiftFlags,
        seed: int,
        num_threads: int = 0,
        **make_kwargs: Any,
    ):
        self.env_id = env_id
        self.make_kwargs = make_kwargs
        """Extra keyword arguments for envpool.make_gymnasium (e.g. max_episode_steps)."""
        self.num_envs = num_envs
        self.num_threads = num_threads
        self.pool_seed = seed
        self.pool = self._make_pool(seed)
        self.pool_used = False
        self.single_observation_space = self.pool.observation_space
        self.single_action_space = self.pool.action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        spec = gym.spec(env_id) if env_id in gym.registry else None
        # One chain of shift wrappers per sub-env, as make_env builds them (none: no shifts).
        self.slots = [
            _SubEnvSlot(self.single_observation_space, self.single_action_space, spec)
            for _ in range(num_envs)
        ]
        self.chains: list[gym.Env] = []
        if flags.shift:
            self.chains = [
                wrap_shifts(slot, flags, seed, env_index)
                for env_index, slot in enumerate(self.slots)
            ]
            self.single_observation_space = self.chains[0].observation_space

    def _make_pool(self, seed: int) -> Any:
        return import_envpool().make_gymnasium(
            self.env_id,
            num_envs=self.num_envs,
            seed=seed,
            num_threads=self.num_threads,
            **self.make_kwargs,
        )

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list):
            raise ValueError("the envpool backend seeds sub-env i with seed + i; pass one int")
        # A seed restarts every sub-env's random stream (as gymnasium's reset(seed) does), which
        # envpool only does at construction; a pool never reset yet already has its seed's.
        if seed is not None and (self.pool_used or seed != self.pool_seed):
            self.pool.close()
            self.pool = self._make_pool(seed)
            self.pool_seed = seed
        self.pool_used = True
        obs, _ = self.pool.reset()
        return self._shift_reset(obs, np.arange(self.num_envs)), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, _ = self.pool.step(np.asarray(actions, np.float64))
        reward = np.asarray(reward, np.float64)
        if self.chains:
            obs, reward = self._shift_step(obs, reward, terminated, truncated)
        infos: dict[str, Any] = {}
        done = np.logical_or(terminated, truncated)
        if done.any():
            finished = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            final_obs[finished] = list(obs[finished])
            infos["final_obs"], infos["_final_obs"] = final_obs, done
            first_obs, _ = self.pool.reset(finished.astype(np.int32))
            obs = obs.copy()
            obs[finished] = self._shift_reset(first_obs, finished)
        return obs, reward, np.asarray(terminated), np.asarray(truncated), infos

    def _shift_step(self, obs, reward, terminated, truncated):
        obs, reward = obs.copy(), reward.copy()
        for i, (slot, chain) in enumerate(zip(self.slots, self.chains, strict=True)):
            slot.result = (obs[i], reward[i], terminated[i], truncated[i], {})
            obs[i], reward[i], *_ = chain.step(None)
        return obs, reward

    def _shift_reset(self, obs: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        if not self.chains:
            return obs
        obs = obs.copy()
        for row, i in enumerate(env_indices):
            self.slots[i].result = (obs[row], {})
            obs[row] = self.chains[i].reset()[0]
        return obs

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        """Call `name` on every sub-env's shift chain (ShiftingVectorEnv calls set_task)."""
        return tuple(getattr(chain, name)(*args, **kwargs) for chain in self.chains)

    def close_extras(self, **kwargs: Any) -> None:
        self.pool.close()
