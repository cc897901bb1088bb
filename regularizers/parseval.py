"""Parseval (isotropy) penalty on the hidden features' Gram matrices.

For each hidden layer's (batch n, width m) post-activation features H:

    A = H^T H / n                                 (m x m: the KFAC input factor E[h h^T])
    penalty = strength * sum_layers || A - (tr A / m) I ||_F^2

zero exactly when A is a multiple of the identity: every unit has the same second moment and
no two are correlated, so all singular values of H are equal (the effective rank is m). As in
SPHERE (Luo et al., ICML 2026, which follows arXiv 2509.22335), where the penalty is on the
(routing-weighted) feature Gram of the last hidden expert layer; here every hidden layer of
every network by default, `--parseval.last-layer-only` for SPHERE's choice. A is the m x m
second-moment matrix, as the KFAC factor of the layer that reads H, not the n x n Gram of the
samples (which cannot be isotropic for n > m).

Computed without forming A when n < m: ||A||_F^2 = ||H H^T||_F^2 / n^2 and tr A = ||H||_F^2 / n,
and ||A - c I||_F^2 = ||A||_F^2 - (tr A)^2 / m for c = tr A / m. At batch 1 A has rank one and
the penalty is (1 - 1/m) ||h||^4: only a pull toward small features, so use batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from regularizers.base import Features, FlagGroup, Method, Regularizer


@dataclass
class ParsevalConfig:
    """Flags of `--regularizer parseval`."""

    strength: float = 1e-3
    """lambda in lambda * sum_layers ||A - (tr A / m) I||_F^2 (no published value for dense
    MLPs: sweep it)"""
    last_layer_only: bool = False
    """penalise only each network's last hidden layer (SPHERE's choice) instead of all"""


def anisotropy(features: Tensor) -> Tensor:
    """||A - (tr A / m) I||_F^2 for A = H^T H / n, H the (n, m) features."""
    n, m = features.shape
    if n >= m:
        gram = features.T @ features / n
        return (
            (
                gram
                - torch.diagonal(gram).mean() * torch.eye(m, dtype=gram.dtype, device=gram.device)
            )
            .square()
            .sum()
        )
    # Through the smaller n x n Gram: ||A - c I||_F^2 = ||A||_F^2 - (tr A)^2 / m.
    frobenius_sq = (features @ features.T).square().sum() / n**2
    trace = features.square().sum() / n
    return frobenius_sq - trace.square() / m


class Parseval(Regularizer):
    """strength * sum over each network's hidden layers of ||A - (tr A / m) I||_F^2."""

    name = "parseval"

    def __init__(self, config: ParsevalConfig):
        self.config = config

    def penalty(self, feats: Features) -> Tensor:
        total = super().penalty(feats)
        for layers in feats.values():
            for h in layers[-1:] if self.config.last_layer_only else layers:
                total = total + anisotropy(h)
        return self.config.strength * total


FLAGS = FlagGroup("parseval", ParsevalConfig,
                  "Parseval: ||A - (tr A / m) I||_F^2 on each hidden layer's feature Gram A (as SPHERE)",
                  {"strength": ">= 0"})  # fmt: skip
METHODS = [Method("parseval", lambda flags: Parseval(flags.parseval), reads=("parseval",))]
