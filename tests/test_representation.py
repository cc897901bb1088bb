"""Representation measures on hand-made matrices with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diagnostics.representation import (
    dead_ratio,
    distance_from_init,
    dormant_mask,
    dormant_ratio,
    effective_rank,
    feature_epsilon_rank,
    feature_measures,
    singular_values,
    srank,
    weight_norm,
)


def with_singular_values(s: list[float], rows: int = 20, seed: int = 0) -> torch.Tensor:
    """A (rows, len(s)) matrix U diag(s) V^T with the given singular values."""
    generator = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(rows, len(s), generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=generator, dtype=torch.float64))
    return U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T


def test_singular_values_are_recovered_descending():
    s = [5.0, 3.0, 1.0, 0.5]
    assert singular_values(with_singular_values(s)) == pytest.approx(s)
    from_float32 = singular_values(with_singular_values(s).float())
    assert from_float32.dtype == np.float64
    assert from_float32 == pytest.approx(s, rel=1e-5)


def test_k_equal_singular_values_have_effective_rank_and_srank_k():
    h = with_singular_values([2.0, 2.0, 2.0, 0.0, 0.0])
    assert float(effective_rank(h)) == pytest.approx(3.0)
    assert srank(h, 0.01) == 3


def test_effective_rank_of_an_uneven_spectrum():
    s = [3.0, 1.0]
    p = torch.tensor(s) / 4
    expected = math.exp(-float((p * p.log()).sum()))
    assert float(effective_rank(with_singular_values(s))) == pytest.approx(expected)


def test_srank_counts_singular_values_up_to_one_minus_delta():
    # cumulative shares: 0.5, 0.8, 0.95, 0.99, 1.0
    h = with_singular_values([50.0, 30.0, 15.0, 4.0, 1.0])
    assert srank(h, 0.01) == 4
    assert srank(h, 0.05) == 3
    assert srank(h, 0.06) == 3
    assert srank(h, 0.21) == 2
    assert srank(torch.zeros(5, 3)) == 0


def test_feature_epsilon_rank_counts_singular_values_of_h_over_sqrt_batch():
    rows = 25  # sqrt = 5: singular values 10, 2, 0.4 become 2, 0.4, 0.08
    h = with_singular_values([10.0, 2.0, 0.4], rows=rows)
    assert feature_epsilon_rank(h, 0.1) == 2
    assert feature_epsilon_rank(h, 0.05) == 3
    assert feature_epsilon_rank(h, 1.0) == 1
    assert feature_epsilon_rank(h, 3.0) == 0


def test_dormant_units_by_their_share_of_the_layers_activity():
    # unit mean |h| = 0, 0.05, 1, 2.95 -> layer average 1 -> scores 0, 0.05, 1, 2.95
    h = torch.tensor([[0.0, 0.1, 1.0, 2.9], [0.0, 0.0, -1.0, 3.0]])
    assert dormant_mask(h, 0.1).tolist() == [True, True, False, False]
    assert dormant_ratio(h, 0.1) == 0.5
    assert dormant_ratio(h, 0.0) == 0.25
    assert dormant_ratio(h, 1.0) == 0.75
    assert dormant_ratio(torch.zeros(3, 4), 0.0) == 1.0


def test_dead_units_are_zero_on_every_example():
    h = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert dead_ratio(h) == pytest.approx(1 / 3)


def test_weight_norm_and_distance_from_init():
    params = [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])]
    initial = [torch.tensor([0.0, 4.0]), torch.tensor([[8.0]])]
    assert weight_norm(params) == pytest.approx(13.0)
    assert distance_from_init(params, initial) == pytest.approx(5.0)
    assert weight_norm([]) == 0.0
    with pytest.raises(ValueError):  # a parameter list that does not match its initial copy
        distance_from_init(params, initial[:1])


def test_feature_measures_agree_with_the_single_measures():
    layers = [with_singular_values([3.0, 1.0, 0.0]).float(), torch.relu(torch.randn(20, 4))]
    layers[1][:, 0] = 0  # one dead unit
    out, spectra = feature_measures(
        layers, srank_delta=0.01, epsilons=(0.1, 0.5), dormant_tau=0.025
    )
    for index, h in enumerate(layers):
        np.testing.assert_allclose(
            spectra[index], np.linalg.svd(h.double().numpy())[1], rtol=1e-5, atol=1e-6
        )
        assert out[f"layer{index}/erank"] == pytest.approx(float(effective_rank(h)), rel=1e-5)
        assert out[f"layer{index}/srank"] == srank(h, 0.01)
        assert out[f"layer{index}/eps_rank@0.5"] == feature_epsilon_rank(h, 0.5)
        assert out[f"layer{index}/dormant"] == dormant_ratio(h, 0.025)
    assert out["layer1/dead"] == 0.25
    assert out["dead"] == pytest.approx(1 / 7)  # one of 3 + 4 units
    assert out["erank"] == pytest.approx((out["layer0/erank"] + out["layer1/erank"]) / 2)
