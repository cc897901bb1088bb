"""Continual backpropagation (Dohare et al., "Loss of plasticity in deep continual learning",
Nature 2024): keep replacing the least useful mature hidden units with fresh ones.

Per hidden unit i of each hidden layer, after every optimizer update:

    age_i <- age_i + 1
    u_i   <- decay * u_i + (1 - decay) * mean_batch |h_i| * sum_k |w_out[k, i]|
    (contribution utility; Dohare et al.'s code averages over k, the same ranking)

Units older than `maturity` are eligible. The layer accumulates `replacement_rate * n_eligible`
replacements (a running fraction, as their code with accumulation); whenever that reaches whole
units, that many eligible units with the lowest bias-corrected utility u_i / (1 - decay^age_i)
(Adam-style, as their GnT code) are replaced: their incoming weights, bias (and LayerNorm gain
and shift) are re-drawn from the network's own initialisation (the same rows of a fresh draw
of the net, from the method's own random stream), their outgoing weights set to zero (a new
unit starts with no effect on the output), their utility and age reset to 0, and the
optimizer's state of all those weights zeroed (`replace_units`). Their older GnT code also moved the removed
unit's mean contribution into the next layer's bias; the Nature version does not, nor do we.

The activity |h| is that of the update's own batch, read from the features the learner hands
to `penalty` (the same forward pass, before the step, as their code); the penalty itself is
zero, so a fused update that skips `penalty` stays allowed (`only_coupled_decay`) and the
activity is then taken from `features_fn` (the same examples, after the step).

The paper's setting on Permuted MNIST: replacement rate 1e-6, maturity 100, decay 0.99 (their
RL runs: rate 1e-4, maturity 10,000). Networks must offer `unit_layers()` (regularizers.base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from regularizers.base import (
    Combined,
    Features,
    FeaturesFn,
    FlagGroup,
    FreshDraws,
    Method,
    Regularizer,
    UnitLayer,
    method_stream_seed,
    replace_units,
    unit_layers,
)
from regularizers.l2 import L2


@dataclass
class CBPConfig:
    """Flags of `--regularizer cbp`."""

    replacement_rate: float = 1e-6
    """replacements per eligible unit per update, accumulated until whole units are due (paper,
    Permuted MNIST: 1e-6; Dohare et al.'s RL: 1e-4)"""
    maturity: int = 100
    """updates a unit must survive before it can be replaced (Dohare et al.'s RL: 10,000)"""
    decay: float = 0.99
    """decay of the running average of each unit's contribution utility"""


def outgoing_magnitude(layer: UnitLayer) -> Tensor:
    """sum_k |w_out[k, i]| per unit i, over every parameter reading the layer."""
    return sum(param.detach().abs().flatten(0, -2).sum(0) for param in layer.outgoing)


class CBP(Regularizer):
    """Replace mature, low-utility hidden units with fresh ones after every update."""

    name = "cbp"

    def __init__(self, config: CBPConfig):
        self.config = config

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.layers = {name: unit_layers(name, net) for name, net in nets.items()}
        self.draws = FreshDraws(method_stream_seed(seed, self.name))
        self.utility, self.age, self.due = {}, {}, {}
        for name, layers in self.layers.items():
            weights = [layer.incoming[0] for layer in layers]
            self.utility[name] = [
                torch.zeros(layer.width(), device=w.device, dtype=w.dtype)
                for layer, w in zip(layers, weights, strict=True)
            ]
            # Ages live on the host: which units are mature, and how many to replace, is then
            # known without reading the device after every update (a sync per layer per step
            # on a GPU); the device is read only on the rare steps that replace units.
            self.age[name] = [np.zeros(layer.width(), dtype=np.int64) for layer in layers]
            self.due[name] = [0.0 for _ in layers]
        self.replaced = 0
        self.activity: dict[str, list[Tensor]] | None = None

    def penalty(self, feats: Features) -> Tensor:
        # Not a loss: the update's own features, kept for the utilities (see the module doc).
        self.activity = {
            name: [h.detach().abs().mean(0) for h in feats[name]]
            for name in self.layers
            if name in feats
        }
        return super().penalty(feats)

    def only_coupled_decay(self) -> bool:
        return True  # the penalty is zero: a fused step may skip it (activity from features_fn)

    def after_update(self, features_fn: FeaturesFn, pass_end: bool) -> dict[str, float]:
        activity = self.activity
        self.activity = None
        if activity is None or activity.keys() != self.layers.keys():
            with torch.no_grad():
                activity = {
                    name: [h.abs().mean(0) for h in layers]
                    for name, layers in features_fn().items()
                    if name in self.layers
                }
        config = self.config
        for name, layers in self.layers.items():
            fresh: list[UnitLayer] | None = None
            for i, layer in enumerate(layers):
                age, utility = self.age[name][i], self.utility[name][i]
                age += 1
                contribution = activity[name][i].to(utility.dtype) * outgoing_magnitude(layer)
                utility.mul_(config.decay).add_(contribution, alpha=1 - config.decay)
                eligible = np.flatnonzero(age > config.maturity)
                if eligible.size == 0:
                    continue
                self.due[name][i] += config.replacement_rate * eligible.size
                count = int(self.due[name][i])
                self.due[name][i] -= count
                count = min(count, eligible.size)
                if count == 0:
                    continue
                on_device = torch.from_numpy(eligible).to(utility.device)
                bias = 1 - config.decay ** torch.from_numpy(age[eligible]).double()
                corrected = utility[on_device] / bias.to(utility.device)
                units = on_device[torch.topk(-corrected, count).indices]
                if fresh is None:  # one fresh draw of the net serves all its layers
                    fresh = unit_layers(name, self.draws.draw(self.nets[name]))
                replace_units(layer, fresh[i], units, self.optimizer)
                utility[units] = 0.0
                age[units.cpu().numpy()] = 0
                self.replaced += count
        return {"cbp/replaced": float(self.replaced)}

    def state_dict(self) -> dict:
        return {
            "utility": {name: [u.clone() for u in us] for name, us in self.utility.items()},
            "age": {
                name: [torch.from_numpy(a.copy()) for a in ages] for name, ages in self.age.items()
            },
            "due": {name: list(due) for name, due in self.due.items()},
            "replaced": self.replaced,
            "rng_state": self.draws.rng_state,
        }

    def load_state_dict(self, state: dict) -> None:
        for name, layers in self.layers.items():
            self.utility[name] = [
                u.to(layer.incoming[0].device).clone()
                for u, layer in zip(state["utility"][name], layers, strict=True)
            ]
            self.age[name] = [np.asarray(a, dtype=np.int64).copy() for a in state["age"][name]]
            self.due[name] = list(state["due"][name])
        self.replaced = state["replaced"]
        self.draws.load_state(state["rng_state"])


FLAGS = FlagGroup("cbp", CBPConfig,
                  "CBP: replace mature low-utility hidden units with fresh ones (Dohare et al. 2024)",
                  {"replacement_rate": "in [0, 1]", "maturity": ">= 0", "decay": "in [0, 1)"})  # fmt: skip
METHODS = [
    Method("cbp", lambda flags: CBP(flags.cbp), reads=("cbp",)),
    # Dohare et al. 2024 ran CBP with L2 in RL; the paper compares against that pair.
    Method("cbp-l2", lambda flags: Combined([L2(flags.l2), CBP(flags.cbp)], name="cbp-l2"),
           reads=("l2", "cbp")),
]  # fmt: skip
