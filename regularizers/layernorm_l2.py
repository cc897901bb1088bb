"""LayerNorm + L2 (Lyle et al., "Disentangling the Causes of Plasticity Loss in Neural
Networks", 2024: the most robust combination they found).

Half architecture, half regularizer: a LayerNorm (with its affine gain and shift) between each
hidden linear layer and its activation, and L2's coupled weight decay on every parameter (the
LayerNorm's included), exactly as `--regularizer l2` (regularizers/l2.py). The LayerNorm is not
added here: the method declares `network_requirements = {"layer_norm": True}`, and every
learner builds its networks with `regularizer.network_options(...)`, so the architecture stays
in the network config (`--layer-norm` turns the same LayerNorm on under any method). The
paper's setting: weight decay 1e-5 (Permuted MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from regularizers.base import FlagGroup, Method
from regularizers.l2 import L2


@dataclass
class LayerNormL2Config:
    """Flags of `--regularizer layernorm-l2`."""

    weight_decay: float = 1e-5
    """coupled weight decay on every parameter, as --l2.weight-decay (paper's LN+L2: 1e-5)"""


class LayerNormL2(L2):
    """L2's weight_decay * theta on every gradient, with LayerNorm in the networks' hidden layers."""

    name = "layernorm-l2"
    network_requirements = {"layer_norm": True}

    def __init__(self, config: LayerNormL2Config):
        self.config = config

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        # A learner that forgot `network_options` would otherwise run plain L2 under this name.
        for name, net in nets.items():
            if not any(isinstance(module, nn.LayerNorm) for module in net.modules()):
                raise ValueError(
                    f"--regularizer layernorm-l2: network '{name}' ({type(net).__name__}) has no "
                    "LayerNorm; build it with regularizer.network_options(...)"
                )
        super().attach(nets, optimizer, seed)


FLAGS = FlagGroup("layernorm_l2", LayerNormL2Config,
                  "LayerNorm + L2: LayerNorm in the hidden layers and coupled weight decay (Lyle et al. 2024)",
                  {"weight_decay": ">= 0"})  # fmt: skip
METHODS = [Method("layernorm-l2", lambda flags: LayerNormL2(flags.layernorm_l2),
                  reads=("layernorm_l2",))]  # fmt: skip
