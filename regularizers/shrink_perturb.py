"""Shrink & Perturb (Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020).

    theta <- shrink * theta + noise * theta_fresh

where theta_fresh is a fresh draw of the network's own initialisation (a copy of the net after
`reset_parameters()`), applied at every task change (`every=0`) or after every `every`
optimizer updates. The optimizer's state is left as it is.

The fresh draws come from the method's own random stream, seeded from the run's seed through
`fresh_draw_seed` (so the first draw is not the run's own initial draw), and taken on the CPU
inside `torch.random.fork_rng`, so the run's random streams are never advanced. The stream's
state is part of `state_dict`, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from regularizers.base import STREAM_TAG, FeaturesFn, FlagGroup, FreshDraws, Method, Regularizer


def fresh_draw_seed(seed: int) -> int:
    """The seed of shrink-perturb's own stream, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, STREAM_TAG]).generate_state(1)[0])


@dataclass
class ShrinkPerturbConfig:
    """Flags of `--regularizer shrink-perturb`."""

    shrink: float = 0.8
    """multiply every parameter by this, in (0, 1]"""
    noise: float = 0.01
    """then add this times a fresh draw of the network's initialisation"""
    every: int = 0
    """apply after every this many optimizer updates; 0 = at every task change"""


class ShrinkPerturb(Regularizer):
    """theta <- shrink * theta + noise * theta_fresh, at shifts or every `every` updates."""

    name = "shrink-perturb"

    def __init__(self, config: ShrinkPerturbConfig):
        self.config = config
        self.updates = 0

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.updates = 0
        # The first stream of its kind, so its seed predates `method_stream_seed`.
        self.draws = FreshDraws(fresh_draw_seed(seed))

    def apply(self) -> dict[str, float]:
        for net in self.nets.values():
            fresh = self.draws.draw(net)
            with torch.no_grad():
                for param, fresh_param in zip(net.parameters(), fresh.parameters(), strict=True):
                    param.mul_(self.config.shrink).add_(
                        fresh_param.to(param.device), alpha=self.config.noise
                    )
        return {"shrink_perturb/applied": 1.0}

    def after_update(self, features_fn: FeaturesFn, pass_end: bool) -> dict[str, float]:
        self.updates += 1
        every = self.config.every
        return self.apply() if every > 0 and self.updates % every == 0 else {}

    def on_shift(self) -> dict[str, float]:
        return self.apply() if self.config.every == 0 else {}

    def state_dict(self) -> dict:
        return {"updates": self.updates, "rng_state": self.draws.rng_state}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.draws.load_state(state["rng_state"])


FLAGS = FlagGroup("shrink_perturb", ShrinkPerturbConfig,
                  "Shrink & Perturb: theta <- shrink * theta + noise * fresh init (Ash & Adams 2020)",
                  {"shrink": "in (0, 1]", "noise": ">= 0", "every": ">= 0"})  # fmt: skip
METHODS = [Method("shrink-perturb", lambda flags: ShrinkPerturb(flags.shrink_perturb),
                  reads=("shrink_perturb",))]  # fmt: skip
