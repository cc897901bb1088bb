"""Observation shifts: the agent sees the same world through a different lens at each task.

- obs-permute: each task shuffles the observation dimensions with a fixed permutation, so what
  the network learnt about input i now arrives at input perm^-1(i).
- obs-noise: each task draws a noise level; every observation gets fresh Gaussian noise.
- obs-offset: each task adds its own fixed vector to every observation (C-CHAIN's continual Gym
  Control).

All need a flat Box observation space (every MuJoCo locomotion and classic-control env has
one).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.schedule import ScaleRange, ShiftWrapper
from validation import ConfigError, require


def _require_flat_box(env: gym.Env, shift_name: str) -> gym.spaces.Box:
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        raise ConfigError(
            f"the {shift_name} shift needs a flat Box observation space; {env_id} has {space}"
        )
    return space


class ObsPermuteShift(ShiftWrapper):
    """Permutes the observation dimensions: observation = base_observation[permutation].

    The permutation comes from the task's random stream, so every sub-env of a run (they share
    the seed) sees the same permutation within a task.
    """

    name = "obs-permute"

    def __init__(self, env: gym.Env, config: None, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        self.base_space = _require_flat_box(env, self.name)
        self.permutation = np.arange(self.base_space.shape[0])

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        return {"obs_permutation": rng.permutation(self.base_space.shape[0]).tolist()}

    def apply(self, params: dict[str, Any]) -> None:
        self.permutation = np.asarray(params["obs_permutation"])
        self.observation_space = gym.spaces.Box(
            low=self.base_space.low[self.permutation],
            high=self.base_space.high[self.permutation],
            dtype=self.base_space.dtype,
        )

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs[self.permutation], info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs[self.permutation], reward, terminated, truncated, info


class ObsNoiseShift(ShiftWrapper):
    """Adds Gaussian noise to every observation; each task draws the noise's std.

    The per-step noise comes from this wrapper's own generator, seeded by (seed, env_index), so
    sub-envs get independent noise and the global RNG of the run is never touched; and reseeded
    by `reset(seed=s)` from s (a vector env gives sub-env i the seed s + i), so that a reset with
    a seed restarts every random stream of the env, as gymnasium's API promises.
    """

    name = "obs-noise"

    def __init__(self, env: gym.Env, config: ScaleRange, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        _require_flat_box(env, self.name)
        self.noise_std = 0.0
        self.noise_rng = self.noise_stream([seed, env_index])

    @staticmethod
    def noise_stream(seed: list[int]) -> np.random.Generator:
        # The name in the seed keeps this stream apart from the task streams of task_rng.
        return np.random.default_rng([*seed, zlib.crc32(b"obs-noise steps")])

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        return {"obs_noise_std": self.config.draw(rng, task)}

    def apply(self, params: dict[str, Any]) -> None:
        self.noise_std = params["obs_noise_std"]

    def add_noise(self, obs: np.ndarray) -> np.ndarray:
        noise = self.noise_std * self.noise_rng.standard_normal(obs.shape)
        return (obs + noise).astype(obs.dtype, copy=False)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        if kwargs.get("seed") is not None:
            self.noise_rng = self.noise_stream([kwargs["seed"]])
        obs, info = self.env.reset(**kwargs)
        return self.add_noise(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.add_noise(obs), reward, terminated, truncated, info


@dataclass(frozen=True)
class OffsetConfig:
    """The obs-offset shift's settings (flags --obs-offset.*)."""

    std: float = 2.0
    """std of the offset, drawn once per task and observation dimension from N(0, std^2)
    (C-CHAIN's continual Gym Control: 2)"""
    first_task_unshifted: bool = True
    """task 0 sees the env's own observations (offset 0), as in C-CHAIN; off: task 0 draws an
    offset too"""

    def validate(self, flag: str) -> None:
        """Raise ConfigError unless this config can be drawn from; `flag` is "--obs-offset"."""
        require(f"{flag}.std", self.std, ">= 0")


class ObsOffsetShift(ShiftWrapper):
    """Adds one fixed vector to every observation: observation = base_observation + offset.

    Each task draws its offset from N(0, std^2) per dimension, from the task's random stream,
    so the offset is a function of (seed, task) alone and every sub-env (and a resumed run) sees
    the same one; with `first_task_unshifted` task 0's offset is zero. The world is the same at
    every task: only where the agent sees it moves, so what the network learnt is still right
    up to a shift of its inputs (C-CHAIN's continual Gym Control, Tang et al. 2025).
    """

    name = "obs-offset"

    def __init__(self, env: gym.Env, config: OffsetConfig, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        self.base_space = _require_flat_box(env, self.name)
        self.offset = np.zeros(self.base_space.shape, dtype=self.base_space.dtype)

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        if task == 0 and self.config.first_task_unshifted:
            return {"obs_offset": [0.0] * self.base_space.shape[0]}
        return {"obs_offset": rng.normal(0.0, self.config.std, self.base_space.shape).tolist()}

    def apply(self, params: dict[str, Any]) -> None:
        self.offset = np.asarray(params["obs_offset"], dtype=self.base_space.dtype)
        self.observation_space = gym.spaces.Box(
            low=self.base_space.low + self.offset,
            high=self.base_space.high + self.offset,
            dtype=self.base_space.dtype,
        )

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs + self.offset, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs + self.offset, reward, terminated, truncated, info
