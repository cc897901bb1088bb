"""L2: coupled weight decay toward zero on every parameter, biases included.

The paper's L2 (arXiv 2509.22335, "The regularizers as implemented") adds `weight_decay * theta`
to the gradient before SGD/Adam steps, on all parameters. Adding the penalty

    penalty(theta) = 0.5 * weight_decay * sum_theta ||theta||^2

to the loss gives exactly that gradient, d penalty / d theta = weight_decay * theta, so
`loss + penalty` under SGD or Adam is the same update as `torch.optim.SGD/Adam(weight_decay=...)`
(coupled decay, which Adam rescales with the rest of the gradient; not AdamW's decoupled decay).
One difference: a learner that clips the gradient norm clips this term with the loss gradient,
whereas an optimizer's `weight_decay` is added after clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from regularizers.base import Features, Regularizer


@dataclass
class L2Config:
    """Flags of `--regularizer l2` (and the L2 half of `l2-er`)."""

    weight_decay: float = 1e-4
    """coupled weight decay: the gradient of every parameter (biases included) gets
    weight_decay * theta (paper's best: 1e-4 alone, 1e-3 in L2-ER on Permuted MNIST)"""


class L2(Regularizer):
    """penalty = 0.5 * weight_decay * sum over all parameters of ||theta||^2."""

    name = "l2"

    def __init__(self, config: L2Config):
        self.config = config

    def penalty(self, feats: Features) -> Tensor:
        # dict.fromkeys drops a parameter two nets share, so it is decayed once, not twice.
        params = dict.fromkeys(self.parameters())
        squared_norm = sum((param.pow(2).sum() for param in params), super().penalty(feats))
        return 0.5 * self.config.weight_decay * squared_norm
