"""ReDo: recycle dormant units (Sokar et al., "The Dormant Neuron Phenomenon in Deep
Reinforcement Learning", ICML 2023).

Every `every` optimizer updates, on the current data (`features_fn`: PPO's whole rollout, the
supervised stream's last `every` updates' examples), each hidden unit's score

    s_i = mean_batch |h_i| / ((1/m) sum_j mean_batch |h_j|)

marks it tau-dormant when s_i <= tau (diagnostics.representation.dormant_mask, the measure the
diagnostics report). Every dormant unit is re-initialised: its incoming weights, bias (and
LayerNorm gain and shift) from a fresh draw of the network's own initialisation (the method's
own random stream), its outgoing weights set to zero, and the optimizer's state of all those
weights zeroed (`replace_units`, shared with CBP). Sokar et al. use tau 0.1 with recycling
every 1,000 updates in their DQN experiments (0.025 in their analysis). Networks must offer
`unit_layers()` (regularizers.base).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.representation import dormant_mask
from regularizers.base import (
    FeaturesFn,
    FlagGroup,
    FreshDraws,
    Method,
    Regularizer,
    method_stream_seed,
    replace_units,
    unit_layers,
)


@dataclass
class ReDoConfig:
    """Flags of `--regularizer redo`."""

    tau: float = 0.1
    """a unit is dormant when its mean |activation| is at most tau times its layer's average"""
    every: int = 1000
    """recycle dormant units after every this many optimizer updates"""


class ReDo(Regularizer):
    """Every `every` updates, re-initialise the tau-dormant hidden units."""

    name = "redo"

    def __init__(self, config: ReDoConfig):
        self.config = config

    def recent_updates(self) -> int:
        return self.config.every

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.layers = {name: unit_layers(name, net) for name, net in nets.items()}
        self.draws = FreshDraws(method_stream_seed(seed, self.name))
        self.updates = 0
        self.recycled = 0

    def after_update(self, features_fn: FeaturesFn, pass_end: bool) -> dict[str, float]:
        self.updates += 1
        if self.updates % self.config.every:
            return {}
        with torch.no_grad():
            feats = features_fn()
        dormant, units_seen = 0, 0
        for name, layers in self.layers.items():
            masks = [dormant_mask(h, self.config.tau) for h in feats[name]]
            dormant += sum(int(mask.sum()) for mask in masks)
            units_seen += sum(mask.numel() for mask in masks)
            if not any(mask.any() for mask in masks):
                continue
            fresh = unit_layers(name, self.draws.draw(self.nets[name]))
            for layer, fresh_layer, mask in zip(layers, fresh, masks, strict=True):
                replace_units(layer, fresh_layer, torch.nonzero(mask).flatten(), self.optimizer)
        self.recycled += dormant
        return {"redo/dormant": dormant / max(units_seen, 1), "redo/recycled": float(self.recycled)}

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "recycled": self.recycled,
            "rng_state": self.draws.rng_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.recycled = state["updates"], state["recycled"]
        self.draws.load_state(state["rng_state"])


FLAGS = FlagGroup("redo", ReDoConfig,
                  "ReDo: re-initialise tau-dormant hidden units every N updates (Sokar et al. 2023)",
                  {"tau": ">= 0", "every": ">= 1"})  # fmt: skip
METHODS = [Method("redo", lambda flags: ReDo(flags.redo), reads=("redo",))]
