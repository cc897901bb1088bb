"""L2 Init: pull every parameter back toward its initial value (Kumar et al. 2023).

    penalty(theta) = strength * sum_theta ||theta - theta_0||^2

squared, as in Kumar et al., "Maintaining Plasticity in Continual Learning via Regenerative
Regularization" (2023), so its gradient is 2 * strength * (theta - theta_0). theta_0 is a
detached copy of the parameters taken at `attach`; it is part of `state_dict`, so a resumed run
keeps its original anchor rather than anchoring to the parameters it resumed with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regularizers.base import Features, FlagGroup, Method, Regularizer, named_parameters


@dataclass
class L2InitConfig:
    """Flags of `--regularizer l2-init`."""

    strength: float = 1e-4
    """lambda in lambda * ||theta - theta_0||^2 (the gradient is 2 * lambda * (theta - theta_0))"""


class L2Init(Regularizer):
    """penalty = strength * sum over all parameters of ||theta - theta_0||^2."""

    name = "l2-init"

    def __init__(self, config: L2InitConfig):
        self.config = config

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.params = named_parameters(nets)  # a parameter two nets share is anchored once
        self.theta_0 = {key: param.detach().clone() for key, param in self.params.items()}

    def penalty(self, feats: Features) -> Tensor:
        squared_distance = sum(
            ((param - self.theta_0[key]).pow(2).sum() for key, param in self.params.items()),
            super().penalty(feats),
        )
        return self.config.strength * squared_distance

    def state_dict(self) -> dict:
        return {"theta_0": dict(self.theta_0)}

    def load_state_dict(self, state: dict) -> None:
        saved = state["theta_0"]
        if saved.keys() != self.params.keys():
            raise ValueError(
                f"l2-init checkpoint anchors {sorted(saved)} do not match the networks' "
                f"parameters {sorted(self.params)}"
            )
        self.theta_0 = {
            key: saved[key].detach().to(param.device, param.dtype).clone()
            for key, param in self.params.items()
        }


FLAGS = FlagGroup("l2_init", L2InitConfig,
                  "L2 Init: squared distance to the initial parameters (Kumar et al. 2023)",
                  {"strength": ">= 0"})  # fmt: skip
METHODS = [Method("l2-init", lambda flags: L2Init(flags.l2_init), reads=("l2_init",))]
