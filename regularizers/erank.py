"""ER: a separate gradient-ascent step on the effective rank of the hidden features.

Effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
2007) of a (batch, width) feature matrix H with singular values sigma_1..sigma_n:

    p_i = sigma_i / sum_j sigma_j,        erank(H) = exp(-sum_i p_i log p_i)

It lies in [1, rank(H)]: k equal nonzero singular values give exactly k.

The method (arXiv 2509.22335, "The regularizers as implemented") adds no penalty. After an
optimizer update it takes, for each network separately, one step *up* the mean effective rank
of that network's hidden layers on the current data:

    theta <- theta + lr * grad_theta mean_l erank(H_l)

with its own learning rate, outside the optimizer (no `.grad` buffers, no Adam moments). The
paper's cadence: RL, one step per PPO epoch on the full rollout (`every=0`, acting when the
learner says a pass ended); supervised, one step per 100 examples on those examples (`every=100`
with batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diagnostics.representation import effective_rank
from regularizers.base import Combined, Features, FeaturesFn, FlagGroup, Method, Regularizer
from regularizers.l2 import L2


@dataclass
class ERankConfig:
    """Flags of `--regularizer erank` (and the ER half of `l2-er`)."""

    lr: float = 1e-4
    """step size of the effective-rank ascent step (paper: 1e-4 ER and 1e-2 L2-ER on Permuted
    MNIST; RL sweeps 1e-5 to 1e-7)"""
    every: int = 0
    """take the step after every this many optimizer updates; 0 = once per pass over the current
    data (the end of each PPO epoch, the paper's RL cadence)"""


class ERank(Regularizer):
    """One ascent step theta <- theta + lr * grad mean_l erank(H_l) per net, on a cadence."""

    name = "erank"

    def __init__(self, config: ERankConfig):
        self.config = config
        self.updates = 0

    def recent_updates(self) -> int:
        return self.config.every

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        self.updates = 0

    def count_update(self, pass_end: bool) -> bool:
        """Count an optimizer update; True when the ascent step is due after it."""
        self.updates += 1
        every = self.config.every
        return pass_end if every == 0 else self.updates % every == 0

    def after_update(self, features_fn: FeaturesFn, pass_end: bool) -> dict[str, float]:
        if not self.count_update(pass_end):
            return {}

        with torch.enable_grad():
            feats = features_fn()
        params = {name: [p for p in net.parameters() if p.requires_grad]
                  for name, net in self.nets.items()}  # fmt: skip
        objectives = ascend_effective_rank(feats, params, params, self.config.lr)
        return {f"erank/{name}": objective.item() for name, objective in objectives.items()}

    @classmethod
    def after_update_seeds(cls, methods, features_fns, stacks, pass_end):
        """K seeds' ascent steps as one: one forward through the stacked networks, one batched
        SVD per layer for all seeds, one backward per net. The sum of the seeds' objectives has,
        in each seed's slice of a stack, that seed's own gradient (their graphs are disjoint),
        so every seed takes the step its own `after_update` would."""
        config, updates = methods[0].config, methods[0].updates
        if stacks is None or any(m.config != config or m.updates != updates for m in methods):
            return super().after_update_seeds(methods, features_fns, stacks, pass_end)
        due = [method.count_update(pass_end) for method in methods]  # the same for every seed
        if not due[0]:
            return [{} for _ in methods]

        # Leaves standing in for the stacks: their gradients stay out of the stacks' `.grad`,
        # and stacks that do not require gradients (the fused supervised step's) work too.
        leaves = {
            net: {name: stack.detach().requires_grad_() for name, stack in params.items()}
            for net, params in stacks.params.items()
        }
        with torch.enable_grad():
            feats = stacks.features(leaves)
        objectives = ascend_effective_rank(  # (K,) each: a seed's mean effective rank
            feats,
            {net: list(named.values()) for net, named in leaves.items()},
            {net: list(named.values()) for net, named in stacks.params.items()},
            config.lr,
        )
        values = torch.stack(list(objectives.values()), 1).tolist()  # one read for all seeds
        return [{f"erank/{name}": value for name, value in zip(objectives, row, strict=True)}
                for row in values]  # fmt: skip

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]


def ascend_effective_rank(
    feats: Features, params: dict[str, list[Tensor]], targets: dict[str, list[Tensor]], lr: float
) -> dict[str, Tensor]:
    """The ascent step theta <- theta + lr * grad mean_l erank(H_l), for each net of `feats`
    separately: the gradient with respect to `params[net]` is added to `targets[net]` (the same
    tensors, or the stacks that leaves in `params` stand in for). Features with a leading seed
    axis give each seed its own objective; the gradient of their sum is, in each seed's slice,
    that seed's own. Returns each net's objective: one value, or one per seed."""
    with torch.enable_grad():
        objectives = {
            name: torch.stack([effective_rank(h) for h in layers]).mean(0)
            for name, layers in feats.items()
            if layers
        }
        # All gradients first, then all updates: an in-place update of one net must not
        # precede the backward pass of another that may share its graph.
        steps = []
        for index, (name, objective) in enumerate(objectives.items()):
            grads = torch.autograd.grad(
                objective.sum(),
                params[name],
                retain_graph=index < len(objectives) - 1,
                allow_unused=True,  # e.g. the output layer and the log-std feed no feature
            )
            steps += [(t, g) for t, g in zip(targets[name], grads, strict=True) if g is not None]
    with torch.no_grad():
        for target, grad in steps:
            target.add_(grad, alpha=lr)
    return objectives


FLAGS = FlagGroup("erank", ERankConfig,
                  "ER: gradient-ascent steps on the effective rank of the hidden features",
                  {"lr": ">= 0", "every": ">= 0"})  # fmt: skip
METHODS = [
    Method("erank", lambda flags: ERank(flags.erank), reads=("erank",)),
    # the paper's method: L2 and ER together
    Method("l2-er", lambda flags: Combined([L2(flags.l2), ERank(flags.erank)], name="l2-er"),
           reads=("l2", "erank")),
]  # fmt: skip
