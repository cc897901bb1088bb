"""Running normalisation statistics for observations and rewards, kept by the learner.

They live with the agent, not inside env wrappers, for two reasons: a checkpoint must save and
restore them with the model (CleanRL's wrappers keep them out of reach), and a shift must never
reset them (rebuilding an env with fresh wrappers would).
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update, float64)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        # Plain sums rather than .mean()/.var(): this runs every env step, where numpy's
        # per-call overhead, not arithmetic, is the cost.
        batch_count = batch.shape[0]
        batch_mean = np.add.reduce(batch, axis=0) / batch_count
        centered = batch - batch_mean
        batch_var = np.add.reduce(centered * centered, axis=0) / batch_count
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta**2 * self.count * batch_count / total
        )
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip), statistics updated per batch
    (as gymnasium's NormalizeObservation + CleanRL's clip to [-10, 10])."""

    def __init__(
        self, obs_dim: int, clip: float = 10.0, epsilon: float = 1e-8, enabled: bool = True
    ):
        self.rms = RunningMeanStd((obs_dim,))
        self.clip = clip
        self.epsilon = epsilon
        self.enabled = enabled

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if not self.enabled:
            return obs.astype(np.float32)
        if update:
            self.rms.update(obs)
        normalized = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.minimum(np.maximum(normalized, -self.clip), self.clip).astype(np.float32)


class RewardNormalizer:
    """Scale rewards by the std of the discounted return (gymnasium's NormalizeReward), then
    clip; the running return is cut at episode ends (termination or truncation)."""

    def __init__(
        self,
        num_envs: int,
        gamma: float,
        clip: float = 10.0,
        epsilon: float = 1e-8,
        enabled: bool = True,
    ):
        self.rms = RunningMeanStd(())
        self.discounted_return = np.zeros(num_envs, np.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.enabled = enabled

    def __call__(self, reward: np.ndarray, episode_over: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return reward.astype(np.float32)
        self.discounted_return = self.discounted_return * self.gamma + reward
        self.rms.update(self.discounted_return)
        self.discounted_return[episode_over] = 0.0
        scaled = reward / np.sqrt(self.rms.var + self.epsilon)
        return np.minimum(np.maximum(scaled, -self.clip), self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "discounted_return": self.discounted_return.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.discounted_return = np.array(state["discounted_return"], np.float64)
