"""Spectral regularisation: keep each weight matrix's largest singular value near a target.

    penalty = strength * sum_W (sigma_max(W)^2 - target)^2 + strength * sum_b ||b||^2

(Lewandowski et al., "Learning Continually by Spectral Regularization", 2024; the paper's
baseline, as its code has it: target k = 2, 10 power iterations, the same strength on the
biases' squared norm.) Which parameters are which: a parameter with two or more axes and no
"bias" in its name is a weight matrix, its leading axes (if any) a stack of matrices each
regularised on its own; a parameter with "bias" in its name gets
the L2 term; the rest (a policy's log-std, LayerNorm gains) are left alone.

sigma_max by power iteration, with each matrix's singular vectors u, v kept from step to step
(and in `state_dict`): every penalty call runs `power_iterations` rounds
v <- W^T u / ||W^T u||, u <- W v / ||W v|| from the kept vectors, without gradients, then
sigma_max = u^T W v. Its gradient with u, v held fixed is u v^T, the exact gradient of the top
singular value when u, v are its singular vectors. The paper's code restarts 10 iterations from
a fixed vector at every step; here the vectors start converged and one round per step follows
sigma_max as the weights move (as torch.nn.utils.spectral_norm does), a tenth of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regularizers.base import (
    Features,
    FlagGroup,
    Method,
    Regularizer,
    method_stream_seed,
    named_parameters,
)


@dataclass
class SpectralConfig:
    """Flags of `--regularizer spectral`."""

    strength: float = 1e-3
    """lambda of lambda * (sigma_max^2 - target)^2 per weight matrix, and of lambda * ||b||^2 on
    the biases (paper's best on Permuted MNIST: 1e-3)"""
    target: float = 2.0
    """k, the value sigma_max^2 is pulled toward (the paper: 2)"""
    power_iterations: int = 1
    """power-iteration rounds per step, from the singular vectors kept from the last step (as
    torch.nn.utils.spectral_norm; the paper's code restarts 10 from a fixed vector at every
    step). The kept vectors start converged (WARM_START rounds when the method attaches), and
    one round follows a top singular value that an optimizer step moves a little"""


def is_weight_matrix(name: str, param: Tensor) -> bool:
    return param.ndim >= 2 and "bias" not in name


WARM_START = 100
"""power-iteration rounds from the random start when the method attaches"""


class Spectral(Regularizer):
    """strength * sum_W (sigma_max(W)^2 - target)^2 + strength * sum_b ||b||^2."""

    name = "spectral"

    def __init__(self, config: SpectralConfig):
        self.config = config

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        super().attach(nets, optimizer, seed)
        params = named_parameters(nets)
        self.matrices = {n: p for n, p in params.items() if is_weight_matrix(n, p)}
        self.biases = {n: p for n, p in params.items() if "bias" in n}
        # Random unit starting vectors from the method's own stream (never the run's).
        generator = torch.Generator().manual_seed(method_stream_seed(seed, self.name))
        self.u, self.v = {}, {}
        for key, weight in self.matrices.items():
            *stack, rows, cols = weight.shape
            for vectors, size in ((self.u, rows), (self.v, cols)):
                start = torch.randn(*stack, size, generator=generator, dtype=torch.float64)
                vectors[key] = F.normalize(start, dim=-1).to(weight.device, weight.dtype)
            self.power_iteration(key, WARM_START)

    @torch.no_grad()
    def power_iteration(self, key: str, rounds: int | None = None) -> tuple[Tensor, Tensor]:
        """`rounds` (default `power_iterations`) rounds from the kept vectors of matrix `key`;
        keeps the result."""
        weight, u, v = self.matrices[key], self.u[key], self.v[key]
        for _ in range(self.config.power_iterations if rounds is None else rounds):
            v = F.normalize(torch.einsum("...ij,...i->...j", weight, u), dim=-1)
            u = F.normalize(torch.einsum("...ij,...j->...i", weight, v), dim=-1)
        self.u[key], self.v[key] = u, v
        return u, v

    def sigma_max(self, key: str) -> Tensor:
        """The top singular value(s) u^T W v of matrix `key`, differentiable in W."""
        u, v = self.power_iteration(key)
        return torch.einsum("...i,...ij,...j->...", u, self.matrices[key], v)

    def penalty(self, feats: Features) -> Tensor:
        total = super().penalty(feats)
        for key in self.matrices:
            total = total + (self.sigma_max(key).square() - self.config.target).square().sum()
        for bias in self.biases.values():
            total = total + bias.square().sum()
        return self.config.strength * total

    def state_dict(self) -> dict:
        return {"u": dict(self.u), "v": dict(self.v)}

    def load_state_dict(self, state: dict) -> None:
        if state["u"].keys() != self.matrices.keys():
            raise ValueError(
                f"spectral checkpoint vectors {sorted(state['u'])} do not match the networks' "
                f"weight matrices {sorted(self.matrices)}"
            )
        for key, weight in self.matrices.items():
            self.u[key] = state["u"][key].to(weight.device, weight.dtype).clone()
            self.v[key] = state["v"][key].to(weight.device, weight.dtype).clone()


FLAGS = FlagGroup("spectral", SpectralConfig,
                  "spectral regularisation: (sigma_max(W)^2 - k)^2 per weight matrix, L2 on biases",
                  {"strength": ">= 0", "target": ">= 0", "power_iterations": ">= 1"})  # fmt: skip
METHODS = [Method("spectral", lambda flags: Spectral(flags.spectral), reads=("spectral",))]
