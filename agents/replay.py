"""SAC's replay buffer: transitions as rows of one preallocated tensor on the device."""

from __future__ import annotations

import torch
from torch import Tensor

from validation import ConfigError


class ReplayBuffer:
    """Transitions (s, a, r, terminated, s') as rows of one preallocated tensor on the device.

    Row layout: [obs | action | reward | terminated | next_obs], so one gather samples a batch
    and the critic's input [obs, action] is a view of it. s' is the real next observation: for
    a transition that ended its episode, the final observation, never the next episode's first.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.obs_dim, self.act_dim = capacity, obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        # torch.empty: pages are committed as rows are written, not for the whole capacity.
        self.storage = torch.empty((capacity, self.width), device=device)
        self.pos = 0
        """the next row to write"""
        self.size = 0
        """how many rows hold transitions"""

    def add(self, obs: Tensor, actions: Tensor, outcome: Tensor) -> None:
        """Store one vector-env step: obs (n, obs_dim), actions (n, act_dim), outcome
        (n, 2 + obs_dim) = [reward, terminated, next_obs]."""
        n = obs.shape[0]
        if self.pos + n <= self.capacity:
            rows = slice(self.pos, self.pos + n)
        else:
            rows = (self.pos + torch.arange(n, device=self.storage.device)) % self.capacity
        split = self.obs_dim + self.act_dim
        self.storage[rows, : self.obs_dim] = obs
        self.storage[rows, self.obs_dim : split] = actions
        self.storage[rows, split:] = outcome
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """batch_size rows drawn uniformly with replacement (one gather), from `generator`
        (default: the global stream)."""
        index = torch.randint(
            self.size, (batch_size,), device=self.storage.device, generator=generator
        )
        return self.storage[index]

    def recent(self, n: int) -> Tensor:
        """The last n rows written, oldest first (a copy)."""
        if not 0 < n <= self.size:
            raise ValueError(f"asked for the last {n} transitions of {self.size}")
        index = (self.pos - n + torch.arange(n, device=self.storage.device)) % self.capacity
        return self.storage[index]

    def clear(self) -> None:
        self.pos = self.size = 0

    def unpack(self, rows: Tensor) -> dict[str, Tensor]:
        """Named views of a block of rows."""
        o, a = self.obs_dim, self.act_dim
        return {
            "obs": rows[:, :o],
            "actions": rows[:, o : o + a],
            "obs_actions": rows[:, : o + a],
            "rewards": rows[:, o + a],
            "terminated": rows[:, o + a + 1],
            "next_obs": rows[:, o + a + 2 :],
        }

    def state_dict(self) -> dict:
        # A copy of the filled rows only: saving a view would save the whole storage.
        return {"rows": self.storage[: self.size].cpu().clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"]
        if rows.shape[1] != self.width or len(rows) > self.capacity:
            raise ConfigError(
                f"the saved replay buffer holds {len(rows)} rows of width {rows.shape[1]}; this "
                f"run's holds {self.capacity} of width {self.width} (resume with the same "
                "--buffer-size and env)"
            )
        self.storage[: len(rows)] = rows.to(self.storage.device)
        self.size, self.pos = len(rows), state["pos"]
