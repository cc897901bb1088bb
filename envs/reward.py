"""Reward shifts: the same behaviour is worth something different at each task.

- reward-sign: the reward is multiplied by (-1) ** task.
- reward-scale: each task draws a scale (log-uniform by default) that multiplies the reward.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.schedule import ScaleRange, ShiftWrapper


class RewardSignShift(ShiftWrapper):
    """Multiplies the reward by (-1) ** task.

    The sign alternates rather than being drawn at random: a random sign would keep the same
    sign at half of the shifts, and those shifts would change nothing. Task 0 keeps the
    env's own reward.
    """

    name = "reward-sign"

    def __init__(self, env: gym.Env, config: None, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        self.sign = 1

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        return {"reward_sign": (-1) ** task}

    def apply(self, params: dict[str, Any]) -> None:
        self.sign = params["reward_sign"]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, self.sign * reward, terminated, truncated, info


class RewardScaleShift(ShiftWrapper):
    """Multiplies the reward by a scale drawn once per task."""

    name = "reward-scale"

    def __init__(self, env: gym.Env, config: ScaleRange, seed: int, *, env_index: int = 0):
        super().__init__(env, config, seed, env_index=env_index)
        self.scale = 1.0

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        return {"reward_scale": self.config.draw(rng, task)}

    def apply(self, params: dict[str, Any]) -> None:
        self.scale = params["reward_scale"]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, self.scale * reward, terminated, truncated, info
