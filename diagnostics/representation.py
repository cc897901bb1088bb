"""Representation measures of hidden features (batch, width) and of parameters.

What each says about plasticity:
- effective rank (Roy & Vetterli 2007): how many directions the features really use; the ER
  regularizer keeps it high, and its collapse goes with the Hessian's (arXiv 2509.22335);
- srank_delta (Kumar et al. 2021): the number of singular values holding 1 - delta of the
  mass; its fall is "implicit under-parameterization";
- feature epsilon-rank: how many directions of the feature second moment exceed epsilon^2,
  the quantity in the paper's epsilon-rank conditions;
- dormant units (Sokar et al. 2023): units whose activity is a small share of the layer's;
- dead units: units that are exactly zero on every example (dead ReLUs);
- weight norm and distance from initialisation: growth of the parameters, which L2 limits;
- gradient norm (in hooks.py, from the loss closures): how much signal reaches the weights.

All but `effective_rank` run without gradients and return plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor


def effective_rank(features: Tensor) -> Tensor:
    """exp of the entropy of the normalised singular values of `features` (batch, width).

    p_i = sigma_i / sum_j sigma_j, erank = exp(-sum_i p_i log p_i), in [1, rank]: k equal
    nonzero singular values give exactly k. Differentiable (the ER regularizer ascends it); a
    stack (..., batch, width) gives one value per matrix. A zero singular value contributes 0
    (0 log 0 = 0) and no gradient of its own (its one-sided derivative is +inf), so gradients
    stay finite, never NaN. An all-zero matrix has rank 0, and effective rank 0 here (the
    formula itself is undefined there).
    """
    sigma = torch.linalg.svdvals(features)
    total = sigma.sum(dim=-1, keepdim=True)
    nonzero_total = total > 0
    p = sigma / torch.where(nonzero_total, total, torch.ones_like(total))
    # Both `where`s matter: the inner one keeps log(0) out of the graph, so no -inf * 0 = NaN
    # reaches the gradient; the outer one sets those terms to 0.
    positive = p > 0
    p_log_p = torch.where(
        positive, p * torch.log(torch.where(positive, p, torch.ones_like(p))), 0.0
    )
    erank = torch.exp(-p_log_p.sum(dim=-1))
    return torch.where(nonzero_total.squeeze(-1), erank, torch.zeros_like(erank))


@torch.no_grad()
def singular_values(features: Tensor) -> np.ndarray:
    """Singular values of `features`, descending, as float64 numpy (saved per boundary).

    The SVD runs in the features' own dtype (float32 for a network's features): float64 costs
    more on an accelerator, and float32 round-off (about 1e-7 of sigma_1) is far below the
    thresholds used here."""
    return torch.linalg.svdvals(features.detach()).double().cpu().numpy()


@torch.no_grad()
def srank(features: Tensor, delta: float = 0.01) -> int:
    """srank_delta (Kumar et al. 2021, "Implicit under-parameterization inhibits data-efficient
    deep RL"): the smallest k with sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta, singular
    values sorted descending; 0 for an all-zero matrix."""
    return srank_of(singular_values(features), delta)


def srank_of(sigma: np.ndarray, delta: float) -> int:
    """`srank` from the singular values (descending)."""
    total = sigma.sum()
    if total <= 0:
        return 0
    cumulative = np.cumsum(sigma) / total
    # a small tolerance so that exactly (1 - delta) counts as reached despite round-off
    return int(np.searchsorted(cumulative, 1 - delta - 1e-12) + 1)


@torch.no_grad()
def feature_epsilon_rank(features: Tensor, epsilon: float) -> int:
    """Number of singular values of features / sqrt(batch) above epsilon, i.e. eigenvalues of
    the feature second-moment matrix H^T H / batch above epsilon^2."""
    return epsilon_rank_of(singular_values(features), features.shape[0], epsilon)


def epsilon_rank_of(sigma: np.ndarray, batch: int, epsilon: float) -> int:
    """`feature_epsilon_rank` from the singular values of a (batch, width) matrix."""
    return int((sigma / np.sqrt(batch) > epsilon).sum())


def effective_rank_of(sigma: np.ndarray) -> float:
    """`effective_rank` from the singular values (the same formula, in float64 numpy)."""
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


@torch.no_grad()
def dormant_mask(features: Tensor, tau: float) -> Tensor:
    """Sokar et al. 2023 ("The dormant neuron phenomenon in deep RL", ReDo): unit i's score
    s_i = mean|h_i| / ((1/width) sum_j mean|h_j|), means over the batch; a unit is tau-dormant
    when s_i <= tau. If the whole layer is silent, every unit is."""
    activity = features.detach().abs().mean(0)
    average = activity.mean()
    if average <= 0:
        return torch.ones_like(activity, dtype=torch.bool)
    return activity / average <= tau


@torch.no_grad()
def dormant_ratio(features: Tensor, tau: float) -> float:
    """The share of tau-dormant units of a layer (see `dormant_mask`); 1.0 if all are silent."""
    return float(dormant_mask(features, tau).float().mean())


@torch.no_grad()
def dead_ratio(features: Tensor) -> float:
    """The share of units that are exactly zero on every example of the batch."""
    return float((features.detach() == 0).all(0).float().mean())


@torch.no_grad()
def weight_norm(params: Iterable[Tensor]) -> float:
    """||theta||_2 over all parameters together."""
    return float(sum((p.detach().double() ** 2).sum() for p in params)) ** 0.5


@torch.no_grad()
def distance_from_init(params: Iterable[Tensor], init_params: Iterable[Tensor]) -> float:
    """||theta - theta_0||_2 over all parameters together."""
    pairs = zip(params, init_params, strict=True)
    return float(sum(((p.detach() - p0).double() ** 2).sum() for p, p0 in pairs)) ** 0.5


@torch.no_grad()
def feature_measures(
    features: Sequence[Tensor],
    *,
    srank_delta: float,
    epsilons: Sequence[float],
    dormant_tau: float,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Every feature measure per hidden layer (`layer{l}/...`), plus the mean effective rank
    and the dormant and dead shares over all units of all layers; and each layer's singular
    values. One SVD per layer serves every rank measure (they are all functions of it)."""
    out: dict[str, float] = {}
    eranks, spectra, dormant, dead, units = [], [], 0.0, 0.0, 0
    for layer, h in enumerate(features):
        h = h.detach()
        sigma = singular_values(h)
        spectra.append(sigma)
        eranks.append(effective_rank_of(sigma))
        out[f"layer{layer}/erank"] = eranks[-1]
        out[f"layer{layer}/srank"] = srank_of(sigma, srank_delta)
        for epsilon in epsilons:
            out[f"layer{layer}/eps_rank@{epsilon:g}"] = epsilon_rank_of(sigma, h.shape[0], epsilon)
        out[f"layer{layer}/dormant"] = dormant_ratio(h, dormant_tau)
        out[f"layer{layer}/dead"] = dead_ratio(h)
        dormant += out[f"layer{layer}/dormant"] * h.shape[1]
        dead += out[f"layer{layer}/dead"] * h.shape[1]
        units += h.shape[1]
    if units:
        out["erank"] = float(np.mean(eranks))
        out["dormant"] = dormant / units
        out["dead"] = dead / units
    return out, spectra
