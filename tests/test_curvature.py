"""Curvature code against exact answers: dense float64 Hessians, GGNs and spectra of tiny nets.

Every operator is checked the way curvlinops checks its own: against the matrix built densely
by autograd on a problem small enough to hold it (hundreds of parameters, float64).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.func import functional_call

from agents.networks import CategoricalActor, Critic, GaussianActor
from agents.ppo import loss_closures
from diagnostics.curvature import (
    GGNOperator,
    HessianOperator,
    LossClosure,
    epsilon_rank,
    extreme_eigenvalues,
    gram_matrix,
    hutchinson_trace,
    kfac_factors,
    lanczos,
    loss_weighted_gram_eigenvalues,
    output_curvature,
    paper_density,
    paper_epsilon_rank,
    rademacher,
    smoothed_density,
    spectral_effective_rank,
    spectrum,
)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def flatten(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in like.items():
        out[name] = vector[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def dense_hessian(closure: LossClosure) -> torch.Tensor:
    return torch.autograd.functional.hessian(
        lambda v: closure.loss_fn(closure.output_fn(unflatten(v, closure.params))),
        flatten(closure.params),
    )


def dense_ggn(closure: LossClosure) -> torch.Tensor:
    theta = flatten(closure.params)
    outputs = closure.output_fn(closure.params).detach()
    J = torch.autograd.functional.jacobian(
        lambda v: closure.output_fn(unflatten(v, closure.params)).reshape(-1), theta
    )
    H_out = torch.autograd.functional.hessian(
        lambda o: closure.loss_fn(o.view_as(outputs)), outputs.reshape(-1)
    )
    return J.T @ H_out @ J


def mse_closure(batch: int = 40, seed: int = 0) -> LossClosure:
    """A tanh MLP 5 -> 12 -> 3 with an MSE loss: 111 parameters, indefinite Hessian."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    x, y = torch.randn(batch, 5), torch.randn(batch, 3)
    params = {k: v.detach() for k, v in net.named_parameters()}
    closure = LossClosure(
        params, lambda p: functional_call(net, p, (x,)), lambda o: ((o - y) ** 2).mean()
    )
    closure.inputs = x  # for tests that need the batch
    return closure


def ppo_closures(batch: int = 64, hidden=(16,), seed: int = 0) -> dict[str, LossClosure]:
    """The PPO actor (clipped surrogate + entropy) and critic (clipped value loss) closures
    exactly as agents/ppo.py builds them for the diagnostics, on a tiny actor and critic."""
    torch.manual_seed(seed)
    obs_dim, act_dim = 4, 2
    actor = GaussianActor(obs_dim, act_dim, hidden, "tanh")
    critic = Critic(obs_dim, hidden, "tanh")
    with torch.no_grad():
        actor.log_std.add_(0.3 * torch.randn(act_dim))
        for p in actor.mean.out.parameters():  # a policy that is not almost constant
            p.mul_(50)
    obs = torch.randn(batch, obs_dim)
    with torch.no_grad():
        mean = actor(obs)[0]
        actions = mean + actor.log_std.exp() * torch.randn_like(mean)
        # old log-probs of a slightly different policy, so ratios spread over the clip range
        logprobs = (-0.5 * ((actions - mean * 1.1) / actor.log_std.exp()) ** 2).sum(-1)
        logprobs = logprobs - actor.log_std.sum() - act_dim * 0.5 * math.log(2 * math.pi)
        values = critic(obs)[0]
    data = {
        "obs": obs,
        "actions": actions,
        "logprobs": logprobs,
        "advantages": torch.randn(batch),
        "returns": values + torch.randn(batch),
        "values": values,
    }
    # (one sample has no advantage std to normalise by)
    args = SimpleNamespace(
        norm_adv=batch > 1,
        adv_norm_scope="minibatch",
        clip_coef=0.2,
        ent_coef=0.01,
        clip_vloss=True,
        vf_coef=0.5,
    )
    return loss_closures(actor, critic, data, args, batch)


def categorical_actor_closure(batch: int = 48, seed: int = 0) -> LossClosure:
    """A categorical PPO actor (4 -> 10 -> 3 logits, C-CHAIN's leaky ReLU) with the clipped
    surrogate and entropy bonus over its logits, exactly as agents/ppo.py builds the closure:
    advantages normalised over the whole rollout beforehand (C-CHAIN), so the loss is a mean of
    per-sample terms."""
    torch.manual_seed(seed)
    actor = CategoricalActor(4, 3, (10,), "leaky-relu-0.1", "torch-default")
    critic = Critic(4, (10,), "leaky-relu-0.1", "torch-default")
    with torch.no_grad():
        actor.logits.out.weight.mul_(8)  # a policy far from uniform
    obs = torch.randn(batch, 4)
    with torch.no_grad():
        log_probs = actor(obs)[0].log_softmax(-1)
        actions = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
        # old log-probs of a slightly different policy, so ratios spread over the clip range
        old = log_probs.gather(-1, actions[:, None]).squeeze(-1) + 0.3 * torch.randn(batch)
        values = critic(obs)[0]
    data = {
        "obs": obs,
        "actions": actions,
        "logprobs": old,
        "advantages": torch.randn(batch),  # as if normalised over the rollout they came from
        "returns": values + torch.randn(batch),
        "values": values,
    }
    args = SimpleNamespace(
        norm_adv=True, adv_norm_scope="rollout", clip_coef=0.2, ent_coef=0.01, clip_vloss=False,
        vf_coef=1.0,
    )  # fmt: skip
    return loss_closures(actor, critic, data, args, batch)["actor"]


CLOSURES = {
    "mse": lambda batch=40: mse_closure(batch),
    "ppo-actor": lambda batch=64: ppo_closures(batch)["actor"],
    "ppo-critic": lambda batch=64: ppo_closures(batch)["critic"],
    "ppo-categorical-actor": lambda batch=48: categorical_actor_closure(batch),
}


@pytest.mark.parametrize("name", list(CLOSURES))
def test_hessian_and_ggn_products_match_dense_matrices(name):
    closure = CLOSURES[name]()
    H, G = dense_hessian(closure), dense_ggn(closure)
    v = torch.randn(H.shape[0])
    assert torch.allclose(HessianOperator(closure).matvec(v), H @ v, atol=1e-10, rtol=1e-8)
    assert torch.allclose(GGNOperator(closure).matvec(v), G @ v, atol=1e-10, rtol=1e-8)
    # The actor's surrogate is not a least-squares loss: its Hessian and GGN really differ.
    assert not torch.allclose(H, G, atol=1e-6)


def test_joint_ppo_hessian_is_the_block_diagonal_of_actor_and_critic():
    closures = ppo_closures()
    H_joint = dense_hessian(closures["joint"])
    H_actor, H_critic = dense_hessian(closures["actor"]), dense_hessian(closures["critic"])
    assert torch.allclose(H_joint, torch.block_diag(H_actor, H_critic), atol=1e-10)


@pytest.mark.parametrize("name", list(CLOSURES))
def test_top_and_bottom_eigenvalues_match_eigvalsh(name):
    closure = CLOSURES[name]()
    exact = torch.linalg.eigvalsh(dense_hessian(closure)).numpy()
    operator = HessianOperator(closure)
    start = rademacher(operator.dim, torch.Generator().manual_seed(1), torch.float64, "cpu")
    k = 5
    top, bottom, result = extreme_eigenvalues(operator.matvec, start, k, tol=1e-10, max_order=400)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(top, exact[::-1][:k], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(bottom, exact[:k], rtol=1e-6, atol=1e-6 * scale)
    assert len(result.ritz_values) < operator.dim  # it stopped on convergence, not exhaustion


def test_lanczos_on_a_small_space_stops_when_the_krylov_space_is_exhausted():
    eigenvalues = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 4.0, 7.5])
    Q, _ = torch.linalg.qr(torch.randn(7, 7))
    A = Q @ torch.diag(eigenvalues) @ Q.T
    result = lanczos(lambda v: A @ v, torch.randn(7), order=100)
    assert len(result.ritz_values) == 7
    np.testing.assert_allclose(result.ritz_values, eigenvalues.numpy(), atol=1e-10)
    np.testing.assert_allclose(result.ritz_weights.sum(), 1.0, atol=1e-12)


def test_slq_quadrature_reproduces_each_probes_moments_and_density_integrates_to_one():
    closure = mse_closure()
    H = dense_hessian(closure)
    operator = HessianOperator(closure)
    result = spectrum(operator, order=30, probes=3, k=5, generator=torch.Generator().manual_seed(0))
    # Gauss quadrature with m nodes is exact for polynomials up to degree 2m - 1: for each probe
    # z, sum_i w_i theta_i^k = z^T H^k z / z^T z. Re-draw the same probes to check.
    generator = torch.Generator().manual_seed(0)
    for p in range(3):
        z = rademacher(operator.dim, generator, torch.float64, "cpu")
        z = z / z.norm()
        values, weights = result.ritz_values[p], result.ritz_weights[p]
        for power in range(1, 5):
            exact = float(z @ torch.linalg.matrix_power(H, power) @ z)
            np.testing.assert_allclose((weights * values**power).sum(), exact, rtol=1e-8)
    grid, density = result.density(20_000)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)


def test_slq_moments_over_probes_match_the_exact_spectrum_within_error_bars():
    closure = mse_closure()
    exact = torch.linalg.eigvalsh(dense_hessian(closure)).numpy()
    operator = HessianOperator(closure)
    probes = 60
    result = spectrum(
        operator, order=20, probes=probes, k=3, generator=torch.Generator().manual_seed(3)
    )
    for power in (1, 2, 3):
        per_probe = np.nansum(result.ritz_weights * result.ritz_values**power, axis=1)
        stderr = per_probe.std(ddof=1) / math.sqrt(probes)
        assert abs(per_probe.mean() - (exact**power).mean()) < 4 * stderr
    # The trace from the probes' first Lanczos step is Hutchinson's estimator.
    assert abs(result.trace - exact.sum()) < 4 * result.trace_stderr


def test_hutchinson_trace_lies_within_its_error_bars():
    A = torch.randn(50, 50)
    A = A + A.T
    estimate, stderr = hutchinson_trace(
        lambda v: A @ v, 50, 400, torch.Generator().manual_seed(0), torch.float64
    )
    assert stderr > 0
    assert abs(estimate - float(torch.trace(A))) < 4 * stderr
    assert stderr < 0.2 * float(A.abs().sum()) / 50  # and the error bar is not vacuous


def probe_runs(A: torch.Tensor, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-order Lanczos runs of a dense matrix from Rademacher probes, NaN-padded (a repeated
    eigenvalue is found once, so runs can be shorter than the dimension)."""
    n = A.shape[0]
    generator = torch.Generator().manual_seed(0)
    values, weights = np.full((probes, n), np.nan), np.full((probes, n), np.nan)
    for i in range(probes):
        run = lanczos(lambda v: A @ v, rademacher(n, generator, torch.float64, "cpu"), n)
        values[i, : len(run.ritz_values)] = run.ritz_values
        weights[i, : len(run.ritz_weights)] = run.ritz_weights
    return values, weights


def test_epsilon_rank_counts_the_spectral_mass_beyond_epsilon():
    eigenvalues = torch.tensor([-3.0, -0.05, 0.0, 0.0, 0.01, 0.02, 0.5, 2.0, 9.0, 0.2])
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n))
    A = Q @ torch.diag(eigenvalues) @ Q.T
    z = torch.randn(n)
    result = lanczos(lambda v: A @ v, z, order=n)
    # With the full Krylov space, the quadrature weight of |lambda| > eps is exactly the squared
    # projection of the probe on those eigenvectors.
    projections = (Q.T @ (z / z.norm())) ** 2
    for epsilon in (0.015, 0.1, 1.0):
        exact = float(projections[eigenvalues.abs() > epsilon].sum())
        got = epsilon_rank(result.ritz_values[None], result.ritz_weights[None], epsilon, sigma=0)
        assert got == pytest.approx(exact, abs=1e-10)
        # The closed form with the paper's smoothing agrees with integrating the density on a grid.
        sigma = 0.003
        grid = np.linspace(-4, 10, 400_001)
        density = smoothed_density(result.ritz_values[None], result.ritz_weights[None], grid, sigma)
        outside = np.abs(grid) > epsilon
        numeric = np.trapezoid(np.where(outside, density, 0), grid)
        closed = epsilon_rank(result.ritz_values[None], result.ritz_weights[None], epsilon, sigma)
        assert closed == pytest.approx(numeric, abs=2e-4)
    # Over many probes the rank converges to the share of eigenvalues beyond epsilon.
    values, weights = probe_runs(A, 400)
    assert epsilon_rank(values, weights, 0.1, sigma=0) == pytest.approx(5 / 10, abs=0.03)


def test_the_papers_epsilon_rank_bridges_the_excluded_band_with_one_trapezoid():
    """The paper's formula on a density worked out by hand: 7 grid points, density 1 at each.
    The points with |x| > 0.5 are -3 -2 -1 1 2 3; integrating them as one sequence counts the
    interval [-1, 1] (a trapezoid of area 2) that holds the excluded band."""
    grid, density = np.arange(-3.0, 4.0), np.ones(7)
    assert paper_epsilon_rank(grid, density, 0.5) == pytest.approx(6 / 6)
    fully_outside = 4.0  # [-3,-2], [-2,-1], [1,2], [2,3]
    bridge = 2.0  # the trapezoid from -1 to 1
    assert paper_epsilon_rank(grid, density, 0.5) - fully_outside / 6 == pytest.approx(bridge / 6)
    # An epsilon that excludes no grid point: everything is outside, as the formula says.
    assert paper_epsilon_rank(grid, density, 0.0) == 1.0


def test_the_papers_density_is_its_codes_grid_and_smoothing():
    """lop-jax's eigv_to_density for one probe with one Ritz value at 0.3: a 10,000-point grid
    from 0.29 to 0.31, a Gaussian of variance 1e-5 * max(1, 0.02) = 1e-5, normalised so that
    sum(density) * spacing = 1."""
    grid, density = paper_density(np.array([[0.3]]), np.array([[1.0]]))
    assert (
        len(grid) == 10_000 and grid[0] == pytest.approx(0.29) and grid[-1] == pytest.approx(0.31)
    )
    gaussian = np.exp(-((grid - 0.3) ** 2) / (2 * 1e-5)) / math.sqrt(2 * math.pi * 1e-5)
    np.testing.assert_allclose(
        density, gaussian / (gaussian.sum() * (grid[1] - grid[0])), rtol=1e-12
    )
    # Two probes: the grid spans their mean extremes, the density is their mean, and a wide
    # spectrum widens the kernels (variance 1e-5 * span).
    values = np.array([[-1.0, 0.0, 3.0], [-3.0, 0.5, 5.0]])
    weights = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    grid, density = paper_density(values, weights)
    assert grid[0] == pytest.approx(-2.01) and grid[-1] == pytest.approx(4.01)
    variance = 1e-5 * 6.02
    mixture = (
        sum(
            w * np.exp(-((grid - v) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)
            for row_v, row_w in zip(values, weights, strict=True)
            for v, w in zip(row_v, row_w, strict=True)
        )
        / 2
    )
    np.testing.assert_allclose(density, mixture / (mixture.sum() * (grid[1] - grid[0])), rtol=1e-10)


def test_the_two_conventions_differ_by_the_trapezoid_across_the_band():
    """On a real SLQ spectrum with mass near zero: paper - exact is the area of the trapezoid the
    paper's formula lays across [-epsilon, epsilon] (to the grid spacing)."""
    rng = np.random.default_rng(0)
    values = np.sort(np.r_[rng.normal(0, 0.03, 60), rng.uniform(0.5, 3.0, 40)])[None]
    weights = np.full((1, 100), 0.01)
    grid, density = paper_density(values, weights)
    spacing = grid[1] - grid[0]
    sigma = math.sqrt(1e-5 * max(1.0, grid[-1] - grid[0]))
    for epsilon in (0.02, 0.04):
        paper = paper_epsilon_rank(grid, density, epsilon)
        exact = epsilon_rank(values, weights, epsilon, sigma)
        below, above = np.flatnonzero(grid < -epsilon)[-1], np.flatnonzero(grid > epsilon)[0]
        total = np.trapezoid(density, grid)
        band = (density[below] + density[above]) / 2 * (2 * epsilon) / total
        assert paper - exact == pytest.approx(band, abs=3 * density.max() * spacing)
        assert paper > exact + 0.1  # the difference matters at these epsilons


def test_spectral_effective_rank_of_a_known_spectrum():
    eigenvalues = torch.tensor([4.0, 4.0, 4.0, 4.0, -4.0, 0.0, 0.0, 0.0])  # erank 5 of |lambda|
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n))
    A = Q @ torch.diag(eigenvalues) @ Q.T
    generator = torch.Generator().manual_seed(0)
    runs = [
        lanczos(lambda v: A @ v, rademacher(n, generator, torch.float64, "cpu"), n)
        for _ in range(300)
    ]
    values = np.full((300, n), np.nan)
    weights = np.full((300, n), np.nan)
    for i, run in enumerate(runs):
        values[i, : len(run.ritz_values)] = run.ritz_values
        weights[i, : len(run.ritz_weights)] = run.ritz_weights
    assert spectral_effective_rank(values, weights, n) == pytest.approx(5.0, rel=0.05)


@pytest.mark.parametrize("name", list(CLOSURES))
def test_kfac_factors_are_the_exact_ggn_block_for_one_sample(name):
    closure = CLOSURES[name](batch=1)
    G_dense = dense_ggn(closure)
    names = list(closure.params)
    offsets = np.cumsum([0] + [p.numel() for p in closure.params.values()])
    factors = kfac_factors(output_curvature(closure))
    assert len(factors) == 2  # both linear layers, found through F.linear
    for weight_name, (A, G) in factors.items():
        weight = closure.params[weight_name]
        out_dim, in_dim = weight.shape
        bias_name = weight_name.replace("weight", "bias")
        w0, b0 = offsets[names.index(weight_name)], offsets[names.index(bias_name)]
        # vec over (out, in + 1): each output row's weights, then its bias
        index = torch.cat(
            [
                torch.arange(w0, w0 + out_dim * in_dim).view(out_dim, in_dim),
                torch.arange(b0, b0 + out_dim)[:, None],
            ],
            1,
        ).reshape(-1)
        block = G_dense[index][:, index]
        assert torch.allclose(torch.kron(G.contiguous(), A.contiguous()), block, atol=1e-12)


def test_kfac_input_factor_is_the_input_second_moment():
    closure = mse_closure(batch=30)
    A = kfac_factors(output_curvature(closure))["0.weight"][0]
    augmented = torch.cat([closure.inputs, torch.ones(30, 1)], 1)
    assert torch.allclose(A, augmented.T @ augmented / 30, atol=1e-12)


@pytest.mark.parametrize("name", list(CLOSURES))
def test_gram_matrix_is_J_J_transpose_and_shares_the_ggn_nonzero_spectrum(name):
    # 4 samples x C outputs rows against ~100-250 parameters: the GGN has rank <= 4C, and its
    # nonzero eigenvalues must be exactly those of the loss-weighted Gram matrix.
    closure = CLOSURES[name](batch=4)
    theta = flatten(closure.params)
    J = torch.autograd.functional.jacobian(
        lambda v: closure.output_fn(unflatten(v, closure.params)).reshape(-1), theta
    )
    curv = output_curvature(closure, with_gram=True)
    assert torch.allclose(gram_matrix(curv), J @ J.T, atol=1e-10)
    gram = loss_weighted_gram_eigenvalues(curv).numpy()
    ggn = torch.linalg.eigvalsh(dense_ggn(closure)).numpy()
    rows = J.shape[0]
    assert rows < len(ggn)
    # the GGN's spectrum = the Gram's rows eigenvalues plus (params - rows) zeros
    expected = np.sort(np.r_[gram, np.zeros(len(ggn) - rows)])
    np.testing.assert_allclose(np.sort(ggn), expected, atol=1e-9 * max(1.0, np.abs(ggn).max()))
    assert np.abs(gram).max() > 1e-6  # not a trivially zero case


def test_shared_weights_are_refused_for_kfac():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(5, 3)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    closure = LossClosure(
        params,
        lambda p: functional_call(layer, p, (functional_call(layer, p, (x,)),)),
        lambda o: (o**2).mean(),
    )
    with pytest.raises(ValueError, match="used twice"):
        output_curvature(closure)


def test_operators_never_touch_the_runs_parameters():
    closure = mse_closure()
    before = {k: v.clone() for k, v in closure.params.items()}
    operator = HessianOperator(closure)
    operator.matvec(torch.randn(operator.dim))
    GGNOperator(closure).matvec(torch.randn(operator.dim))
    for name, value in closure.params.items():
        assert value.grad is None
        assert torch.equal(value, before[name])


def test_importing_the_package_never_imports_torchvision():
    import subprocess
    import sys

    code = "import sys, diagnostics, diagnostics.curvature, agents.ppo; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_k_of_a_clustered_spectrum_is_accurate_to_its_tolerance():
    # 20 top eigenvalues packed into [1.0, 1.5] above a bulk in [-1, 0.9]: before the cluster is
    # resolved, Ritz values with small residuals stand for the wrong cluster members (stopping
    # on residuals alone, the top-20 here are off by 0.19, over 6x the tolerance).
    generator = torch.Generator().manual_seed(0)
    top = 1.0 + 0.5 * torch.rand(20, generator=generator)
    bulk = -1.0 + 1.9 * torch.rand(380, generator=generator)
    eigenvalues = torch.cat([top, bulk])
    Q, _ = torch.linalg.qr(torch.randn(400, 400, generator=generator))
    A = Q @ torch.diag(eigenvalues) @ Q.T
    start = rademacher(400, generator, torch.float64, "cpu")
    tol = 1e-2
    found, _, result = extreme_eigenvalues(lambda v: A @ v, start, 20, tol=tol, which="top")
    exact = torch.sort(eigenvalues, descending=True).values[:20].numpy()
    assert np.abs(found - exact).max() <= 2 * tol * float(eigenvalues.abs().max())
    assert len(result.ritz_values) < 400  # converged before exhausting the space
