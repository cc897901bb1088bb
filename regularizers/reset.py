"""RESET: re-initialise every parameter, and forget the optimizer's state, at every task change.

The paper's reference line (arXiv 2509.22335): a method "maintains plasticity" only if it beats
starting each task from scratch. At every shift each network gets a fresh draw of its own
initialisation (`reset_parameters()`, the distribution it started from) and the optimizer
drops its state for those parameters, so Adam's moments and step count (or SGD's momentum)
start again too. Nothing else changes: the learner's other state (PPO's observation
normalisation, SAC's replay buffer and target networks) is the learner's.

The fresh draws come from the method's own stream (`FreshDraws`, seeded from the run's seed),
so the run's random streams are not advanced and a resumed run draws what an uninterrupted
one would.
"""

from __future__ import annotations

import torch
from torch import nn

from regularizers.base import (
    FreshDraws,
    Method,
    Regularizer,
    method_stream_seed,
    reset_optimizer_state,
)


class Reset(Regularizer):
    """theta <- a fresh draw of theta_0's distribution, optimizer state cleared, at every shift."""

    name = "reset"

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.draws = FreshDraws(method_stream_seed(seed, self.name))

    def on_shift(self) -> dict[str, float]:
        for net in self.nets.values():
            fresh = self.draws.draw(net)
            with torch.no_grad():
                for param, new in zip(net.parameters(), fresh.parameters(), strict=True):
                    param.copy_(new)
                    reset_optimizer_state(self.optimizer, param)
        return {"reset/applied": 1.0}

    def state_dict(self) -> dict:
        return {"rng_state": self.draws.rng_state}

    def load_state_dict(self, state: dict) -> None:
        self.draws.load_state(state["rng_state"])


METHODS = [Method("reset", lambda flags: Reset())]
