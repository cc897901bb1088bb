"""L2: coupled weight decay toward zero on every parameter, biases included.

The paper's L2 (arXiv 2509.22335, "The regularizers as implemented") adds `weight_decay * theta`
to the gradient before SGD/Adam steps, on all parameters. That is the gradient of

    0.5 * weight_decay * sum_theta ||theta||^2,

added in the `before_step` moment, after the loss gradient (and any clipping of it), exactly
where `torch.optim.SGD/Adam(weight_decay=...)` adds it: coupled decay, which Adam rescales with
the rest of the gradient (not AdamW's decoupled decay). A learner that clips the gradient norm
(PPO) therefore does not clip the decay. The supervised stream's fused online step folds it into
its in-place update as W <- (1 - lr * weight_decay) W - lr * grad.
"""

from __future__ import annotations

from dataclasses import dataclass

from regularizers.base import FlagGroup, Method, Regularizer


@dataclass
class L2Config:
    """Flags of `--regularizer l2` (and the L2 half of `l2-er`)."""

    weight_decay: float = 1e-4
    """coupled weight decay: the gradient of every parameter (biases included) gets
    weight_decay * theta (paper's best: 1e-4 alone, 1e-3 in L2-ER on Permuted MNIST)"""


class L2(Regularizer):
    """Adds weight_decay * theta to every parameter's gradient before the optimizer step."""

    name = "l2"

    def __init__(self, config: L2Config):
        self.config = config

    def coupled_decay(self) -> float:
        return self.config.weight_decay


FLAGS = FlagGroup("l2", L2Config, "L2: coupled weight decay toward zero on all parameters",
                  {"weight_decay": ">= 0"})  # fmt: skip
METHODS = [Method("l2", lambda flags: L2(flags.l2), reads=("l2",))]
