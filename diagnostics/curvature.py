"""Curvature of a loss given as a function of parameters: Hessian and GGN spectra, KFAC factors.

A `LossClosure` is a training loss on a fixed batch as a function of one network's parameters,
split as `loss_fn(output_fn(params))` so that the same closure gives both the Hessian and the
Generalized Gauss-Newton matrix G = J^T H_out J (J: Jacobian of the outputs in the parameters,
H_out: Hessian of the loss in the outputs). Nothing here knows which agent built the closure.

What is computed, following arXiv 2509.22335 (docs/paper.md, "How the Hessian is measured"):
- Lanczos with full reorthogonalisation driven by curvature-vector products;
- stochastic Lanczos quadrature (SLQ): per probe vector, the Ritz values theta_i and weights
  tau_i (squared first components of the Ritz vectors), a Gaussian-smoothed density
  sum_i tau_i N(theta_i, sigma^2) with sigma^2 = 1e-5 * max(1, range);
- the epsilon-rank: the share of density mass with |lambda| > epsilon, in two conventions:
  "exact" (ours: the Gaussian mixture's mass outside [-epsilon, epsilon], in closed form) and
  "paper" (the paper's code: its density on its 10,000-point grid, then
  trapz(density[|grid| > eps], grid[|grid| > eps]) / trapz(density, grid); the masked grid jumps
  from -epsilon to +epsilon, so one trapezoid across the excluded band is counted as outside);
- top-k / bottom-k eigenvalues, a Hutchinson trace with its standard error, the effective rank
  of the spectrum;
- KFAC factors A = E[a a^T] and G = sum_n B_n H_nn B_n^T per linear layer, and the
  loss-weighted Gram (NTK) matrix H_out^1/2 J J^T H_out^1/2, whose nonzero spectrum equals the
  GGN's (the paper's NTK-GGN equivalence).

Why by hand and not curvlinops (which has Hessian/GGN/KFAC operators and spectrum code, and is
the reference in benchmarks/hessian.py): its operators recompute the forward and backward pass
over the data for every product, while ours build the gradient graph once per closure and
reuse it (`retain_graph`), which is several times faster at Lanczos order 100; its GGN and KFAC
accept only torch.nn's standard losses on nn.Modules, not a PPO surrogate on a closure; and it
pulls backpack/torchvision, which must never be needed at import time here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


@dataclass
class LossClosure:
    """A loss on a fixed batch as a function of one network's parameters.

    params: the point of measurement, name -> tensor (detached copies are taken here).
    output_fn: params -> the network's outputs on the batch, shape (batch, ...) (e.g. with
        `torch.func.functional_call(net, params, (x,))`); everything the loss needs from the
        parameters must pass through these outputs, or the GGN misses it.
    loss_fn: outputs -> scalar loss, with everything else (targets, advantages, old
        log-probabilities) frozen inside it. KFAC and the Gram matrix assume it is a sum or mean
        of per-sample terms, as every loss in this project is.
    """

    params: dict[str, Tensor]
    output_fn: Callable[[dict[str, Tensor]], Tensor]
    loss_fn: Callable[[Tensor], Tensor]

    def leaves(self) -> dict[str, Tensor]:
        """Fresh leaf copies of the parameters that require grad (the run's tensors are never
        touched, so no .grad buffer of the training state is written)."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}

    def loss(self) -> Tensor:
        return self.loss_fn(self.output_fn(self.params))


def _flat(tensors: tuple[Tensor | None, ...], like: list[Tensor]) -> Tensor:
    """Concatenate gradients into one vector, with zeros where a parameter was unused."""
    return torch.cat(
        [
            (t if t is not None else torch.zeros_like(p)).reshape(-1)
            for t, p in zip(tensors, like, strict=True)
        ]
    )


class HessianOperator:
    """v -> H v for the Hessian of a closure's loss in its parameters.

    The gradient graph is built once (create_graph) and every product is one backward pass
    through it (reverse-over-reverse with retain_graph): no forward or first backward is
    repeated across the ~100 products of a Lanczos run.
    """

    def __init__(self, closure: LossClosure):
        self.params = list(closure.leaves().values())
        named = dict(zip(closure.params, self.params, strict=True))
        self.loss = closure.loss_fn(closure.output_fn(named))
        grads = torch.autograd.grad(self.loss, self.params, create_graph=True, allow_unused=True)
        self.gradient = _flat(grads, self.params)
        self.dim = self.gradient.numel()
        self.dtype, self.device = self.gradient.dtype, self.gradient.device

    def matvec(self, vector: Tensor) -> Tensor:
        if not self.gradient.requires_grad:  # the loss is linear in the parameters: H = 0
            return torch.zeros_like(vector)
        products = torch.autograd.grad(
            self.gradient, self.params, vector, retain_graph=True, allow_unused=True
        )
        return _flat(products, self.params)


class GGNOperator:
    """v -> J^T H_out J v, the Generalized Gauss-Newton matrix of a closure.

    Graphs built once: the outputs, the loss's gradient in the outputs (for H_out products), and
    the vector-Jacobian product J^T u for a dummy u, whose derivative in u gives J v (the
    "double-vjp" trick: forward-mode products without recomputing the forward pass).
    """

    def __init__(self, closure: LossClosure):
        self.params = list(closure.leaves().values())
        named = dict(zip(closure.params, self.params, strict=True))
        self.outputs = closure.output_fn(named)
        self.output_leaf = self.outputs.detach().requires_grad_(True)
        self.loss = closure.loss_fn(self.output_leaf)
        (self.output_gradient,) = torch.autograd.grad(
            self.loss, self.output_leaf, create_graph=True
        )
        self.dummy = torch.zeros_like(self.outputs, requires_grad=True)
        vjp = torch.autograd.grad(
            self.outputs, self.params, self.dummy, create_graph=True, allow_unused=True
        )
        self.vjp = _flat(vjp, self.params)
        self.dim = self.vjp.numel()
        self.dtype, self.device = self.vjp.dtype, self.vjp.device

    def jvp(self, vector: Tensor) -> Tensor:
        """J v, shaped like the outputs."""
        (product,) = torch.autograd.grad(self.vjp, self.dummy, vector, retain_graph=True)
        return product

    def output_hvp(self, output_vector: Tensor) -> Tensor:
        """H_out u, for u shaped like the outputs."""
        if not self.output_gradient.requires_grad:  # loss linear in the outputs: H_out = 0
            return torch.zeros_like(output_vector)
        (product,) = torch.autograd.grad(
            self.output_gradient, self.output_leaf, output_vector, retain_graph=True
        )
        return product

    def matvec(self, vector: Tensor) -> Tensor:
        weighted = self.output_hvp(self.jvp(vector))
        products = torch.autograd.grad(
            self.outputs, self.params, weighted, retain_graph=True, allow_unused=True
        )
        return _flat(products, self.params)


OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


# --- Lanczos and what it gives ---------------------------------------------------------------


@dataclass
class LanczosResult:
    """The tridiagonal T (alphas on the diagonal, betas off it) and its eigendecomposition."""

    alphas: np.ndarray
    betas: np.ndarray
    ritz_values: np.ndarray
    """eigenvalues of T, ascending"""
    ritz_weights: np.ndarray
    """squared first components of T's eigenvectors (they sum to 1): the quadrature weights"""
    residuals: np.ndarray
    """|beta_m * last component| per Ritz pair: a bound on |theta_i - nearest eigenvalue|"""


def rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    """A random +-1 vector drawn from `generator` (never the run's global random stream)."""
    signs = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device)


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    order: int,
    stop: Callable[[LanczosResult], bool] | None = None,
    check_every: int = 10,
) -> LanczosResult:
    """Lanczos with full reorthogonalisation: `order` steps from `start` (normalised here).

    Full reorthogonalisation (classical Gram-Schmidt against all previous vectors) keeps the
    basis orthogonal in floating point, so no spurious copies of converged eigenvalues appear.
    One pass suffices unless it removed most of the vector (the DGKS test, "twice is enough"),
    which after the three-term step is rare: a second pass every step would double the
    reorthogonalisation cost, a quarter of a checkpoint on a 2.8M-parameter network. Norms and
    inner products accumulate in float64: a float32 sum over millions of entries is off by
    ~1e-4 relative, enough to shift the Ritz values by as much (measured on that network).
    The run stops early when the Krylov space is exhausted (beta ~ 0: every eigenvalue
    reachable from `start` is then exact) or when `stop(result)` says so (checked every
    `check_every` steps).
    """
    dim = start.numel()
    order = min(order, dim)
    basis = torch.empty((order, dim), dtype=start.dtype, device=start.device)
    q = start / float(torch.linalg.vector_norm(start, dtype=torch.float64))
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    breakdown = 50 * torch.finfo(start.dtype).eps
    for j in range(order):
        basis[j] = q
        w = matvec(q).clone()
        alpha = float((q * w).sum(dtype=torch.float64))
        w.sub_(q, alpha=alpha)
        if j > 0:
            w.sub_(basis[j - 1], alpha=betas[-1])
        previous = basis[: j + 1]
        before = float(torch.linalg.vector_norm(w, dtype=torch.float64))
        w = torch.addmv(w, previous.T, previous @ w, alpha=-1)
        beta = float(torch.linalg.vector_norm(w, dtype=torch.float64))
        if beta < 0.7071 * before:
            w = torch.addmv(w, previous.T, previous @ w, alpha=-1)
            beta = float(torch.linalg.vector_norm(w, dtype=torch.float64))
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        if j == order - 1 or beta <= breakdown * max(scale, 1e-30):
            break
        if stop is not None and (j + 1) % check_every == 0:
            if stop(tridiagonal_eigen(np.array(alphas), np.array(betas), beta)):
                break
        betas.append(beta)
        q = w / beta
    return tridiagonal_eigen(np.array(alphas), np.array(betas), beta)


def tridiagonal_eigen(alphas: np.ndarray, betas: np.ndarray, last_beta: float) -> LanczosResult:
    """Ritz values, quadrature weights and residual bounds of the Lanczos tridiagonal."""
    m = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    values, vectors = np.linalg.eigh(T)
    return LanczosResult(
        alphas=alphas,
        betas=betas[: m - 1],
        ritz_values=values,
        ritz_weights=vectors[0] ** 2,
        residuals=np.abs(last_beta * vectors[-1]),
    )


def extreme_eigenvalues(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    k: int,
    tol: float = 1e-6,
    max_order: int = 300,
    which: Literal["both", "top", "bottom"] = "both",
) -> tuple[np.ndarray, np.ndarray, LanczosResult]:
    """The k largest and k smallest eigenvalues (descending, ascending), by Lanczos run until
    the wanted end(s) have converged (or max_order steps).

    Converged means both: every wanted Ritz value's residual bound is below tol * max|theta|,
    and none of them moved by more than that since the last check (5 steps before). The
    residual alone is not enough: it says a Ritz value is near *some* eigenvalue, and before a
    cluster is resolved the k-th Ritz value can sit near the (k+1)-th eigenvalue with a small
    residual. `which` picks the end(s) that must converge; the other is returned as it is.
    Lanczos finds each distinct eigenvalue once: a repeated eigenvalue appears as one Ritz
    value (its multiplicity shows only in the density's weights).
    """
    last: list[np.ndarray] = []

    def wanted(values: np.ndarray) -> np.ndarray:
        ends = {"both": np.r_[values[:k], values[-k:]], "top": values[-k:], "bottom": values[:k]}
        return ends[which]

    def converged(result: LanczosResult) -> bool:
        if len(result.ritz_values) < 2 * k:
            return False
        limit = tol * np.abs(result.ritz_values).max()
        values = wanted(result.ritz_values)
        steady = bool(last) and np.all(np.abs(values - last[0]) <= limit)
        last[:] = [values]
        return bool(steady and np.all(wanted(result.residuals) <= limit))

    result = lanczos(matvec, start, max_order, stop=converged, check_every=5)
    values = result.ritz_values
    return values[::-1][:k].copy(), values[:k].copy(), result


@dataclass
class Spectrum:
    """What `spectrum` returns for one operator: SLQ Ritz data and the summaries the paper uses."""

    ritz_values: np.ndarray
    """(probes, order), NaN-padded where a probe's Lanczos stopped early"""
    ritz_weights: np.ndarray
    top: np.ndarray
    """the k largest eigenvalues (from the first probe's Lanczos), descending"""
    bottom: np.ndarray
    """the k smallest, ascending"""
    top_residual: float
    """the largest residual bound among `top` and `bottom` (how far they may be off)"""
    trace: float
    """Hutchinson's estimate of tr(H) from the probes' first Lanczos step (Rademacher probes)"""
    trace_stderr: float
    dim: int
    sigma: float

    def epsilon_rank(self, epsilon: float, convention: EpsilonConvention = "exact") -> float:
        """Share of the smoothed density's mass with |lambda| > epsilon: "exact" in closed form
        from the Gaussian mixture (no grid error), "paper" as the paper's code integrates it."""
        if convention == "paper":
            return paper_epsilon_rank(*paper_density(self.ritz_values, self.ritz_weights), epsilon)
        return epsilon_rank(self.ritz_values, self.ritz_weights, epsilon, self.sigma)

    def effective_rank(self) -> float:
        return spectral_effective_rank(self.ritz_values, self.ritz_weights, self.dim)

    def density(self, num_points: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        """The paper's density on a grid spanning the Ritz values (plus 1% margins)."""
        low, high = np.nanmin(self.ritz_values), np.nanmax(self.ritz_values)
        margin = 0.01 * max(high - low, 1e-12) + 5 * self.sigma
        grid = np.linspace(low - margin, high + margin, num_points)
        return grid, smoothed_density(self.ritz_values, self.ritz_weights, grid, self.sigma)


def spectrum(
    operator: HessianOperator | GGNOperator,
    order: int,
    probes: int,
    k: int,
    generator: torch.Generator,
) -> Spectrum:
    """SLQ with `probes` Rademacher start vectors, each a Lanczos run of `order` steps.

    The first step of each run gives alpha_1 = z^T H z / dim for the probe z, which is
    Hutchinson's trace estimator for free.
    """
    runs = []
    for _ in range(probes):
        start = rademacher(operator.dim, generator, operator.dtype, operator.device)
        runs.append(lanczos(operator.matvec, start, order))
    width = max(len(run.ritz_values) for run in runs)
    values = np.full((probes, width), np.nan)
    weights = np.full((probes, width), np.nan)
    for i, run in enumerate(runs):
        values[i, : len(run.ritz_values)] = run.ritz_values
        weights[i, : len(run.ritz_weights)] = run.ritz_weights
    first = runs[0]
    k = min(k, len(first.ritz_values))
    traces = np.array([run.alphas[0] * operator.dim for run in runs])
    return Spectrum(
        ritz_values=values,
        ritz_weights=weights,
        top=first.ritz_values[::-1][:k].copy(),
        bottom=first.ritz_values[:k].copy(),
        top_residual=float(np.r_[first.residuals[:k], first.residuals[-k:]].max()),
        trace=float(traces.mean()),
        trace_stderr=float(traces.std(ddof=1) / math.sqrt(probes)) if probes > 1 else math.nan,
        dim=operator.dim,
        sigma=density_sigma(values),
    )


def hutchinson_trace(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    samples: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """tr(H) ~ mean_j z_j^T H z_j over Rademacher z_j; returns (estimate, standard error)."""
    estimates = []
    for _ in range(samples):
        z = rademacher(dim, generator, dtype, device)
        estimates.append(float(torch.dot(z, matvec(z))))
    values = np.array(estimates)
    stderr = values.std(ddof=1) / math.sqrt(samples) if samples > 1 else math.nan
    return float(values.mean()), float(stderr)


def density_sigma(ritz_values: np.ndarray) -> float:
    """The paper's Gaussian width: sigma^2 = 1e-5 * max(1, spectral range) (lop-jax)."""
    finite = ritz_values[np.isfinite(ritz_values)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    return math.sqrt(1e-5 * max(1.0, spread))


def _mixture(ritz_values: np.ndarray, ritz_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten probes into one mixture: values and weights (the weights of all probes sum to 1)."""
    values = np.atleast_2d(np.asarray(ritz_values, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(ritz_weights, dtype=np.float64))
    keep = np.isfinite(values) & np.isfinite(weights)
    return values[keep], weights[keep] / values.shape[0]


def smoothed_density(
    ritz_values: np.ndarray,
    ritz_weights: np.ndarray,
    grid: np.ndarray,
    sigma: float | None = None,
) -> np.ndarray:
    """The SLQ spectral density on `grid`: the mean over probes of sum_i w_i N(x; theta_i, sigma^2).

    ritz_values, ritz_weights: (probes, order) from `spectrum`, NaN-padded where a probe's
    Lanczos stopped early; each probe's weights sum to 1, so the density integrates to 1 when
    the grid covers the spectrum. sigma defaults to the paper's `density_sigma`.
    """
    values, weights = _mixture(ritz_values, ritz_weights)
    if sigma is None:
        sigma = density_sigma(values)
    grid = np.asarray(grid, dtype=np.float64)
    density = np.zeros_like(grid)
    # Chunked over the grid so 10,000 points x (probes * order) Ritz values stay small in memory.
    for start in range(0, grid.size, 2048):
        x = grid[start : start + 2048, None]
        density[start : start + 2048] = (weights * np.exp(-0.5 * ((x - values) / sigma) ** 2)).sum(
            1
        ) / (sigma * math.sqrt(2 * math.pi))
    return density


def epsilon_rank(
    ritz_values: np.ndarray, ritz_weights: np.ndarray, epsilon: float, sigma: float | None = None
) -> float:
    """The epsilon-Hessian-rank: mass of the smoothed density outside [-epsilon, epsilon].

    Each Gaussian's mass outside the interval is 1 - (Phi((eps - theta)/s) - Phi((-eps - theta)/s)),
    exact where a grid sum would be off by the grid spacing. sigma=0 counts Ritz weights.
    """
    values, weights = _mixture(ritz_values, ritz_weights)
    if sigma is None:
        sigma = density_sigma(values)
    if sigma == 0:
        return float(weights[np.abs(values) > epsilon].sum())
    theta = torch.from_numpy(values)
    inside = torch.special.ndtr((epsilon - theta) / sigma) - torch.special.ndtr(
        (-epsilon - theta) / sigma
    )
    return float((weights * (1 - inside.numpy())).sum())


EpsilonConvention = Literal["exact", "paper"]
PAPER_GRID_EXPAND = 1e-2  # the paper's code pads its grid by this much on each side


def paper_density(
    ritz_values: np.ndarray, ritz_weights: np.ndarray, grid_len: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density) as the paper's code makes them (lop-jax `eigv_to_density`, after
    Ghorbani et al.'s spectral-density code): a `grid_len`-point grid from the probes' mean
    smallest Ritz value - 0.01 to their mean largest + 0.01, a Gaussian of variance
    1e-5 * max(1, grid span) at each Ritz value weighted by its Ritz weight, averaged over
    probes and normalised so that sum(density) * spacing = 1."""
    values = np.atleast_2d(np.asarray(ritz_values, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(ritz_weights, dtype=np.float64))
    high = float(np.nanmean(np.nanmax(values, axis=1))) + PAPER_GRID_EXPAND
    low = float(np.nanmean(np.nanmin(values, axis=1))) - PAPER_GRID_EXPAND
    grid = np.linspace(low, high, grid_len)
    variance = 1e-5 * max(1.0, high - low)
    per_probe = [
        smoothed_density(row[np.isfinite(row)], w[np.isfinite(row)], grid, math.sqrt(variance))
        for row, w in zip(values, weights, strict=True)
    ]
    density = np.mean(per_probe, axis=0)
    return grid, density / (density.sum() * (grid[1] - grid[0]))


def paper_epsilon_rank(grid: np.ndarray, density: np.ndarray, epsilon: float) -> float:
    """The paper's epsilon-rank of a density on a grid (lop-jax `calculate_epsilon_hessian_rank`):
    trapz over the grid points with |x| > epsilon, over trapz over all of them. The masked
    points are integrated as one sequence, so the trapezoid from the last point below -epsilon
    to the first above +epsilon is counted too."""
    outside = np.abs(grid) > epsilon
    return trapezoid(density[outside], grid[outside]) / trapezoid(density, grid)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoid rule over the points (x, y) in order (numpy's trapz / trapezoid)."""
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


def spectral_effective_rank(ritz_values: np.ndarray, ritz_weights: np.ndarray, dim: int) -> float:
    """Effective rank (Roy & Vetterli) of the eigenvalue magnitudes, from the SLQ measure.

    For eigenvalues lambda_1..lambda_n, p_j = |lambda_j| / sum|lambda| and erank = exp(-sum p log p).
    SLQ gives a measure sum_i tau_i delta(theta_i) approximating (1/n) sum_j delta(lambda_j), so
    sum_j f(lambda_j) ~ n * sum_i tau_i f(theta_i) for f(x) = |x| and |x| log |x|.
    """
    values, weights = _mixture(ritz_values, ritz_weights)
    magnitude = np.abs(values)
    total = dim * (weights * magnitude).sum()
    if total <= 0:
        return 0.0
    p = magnitude / total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return float(np.exp(-dim * (weights * terms).sum()))


# --- KFAC factors and the loss-weighted Gram matrix ------------------------------------------


class _RecordLinear(TorchFunctionMode):
    """Records every F.linear call (nn.Linear calls it too): input, weight, bias and output."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self.calls.append((args[0], args[1], bias, out))
        return out


@dataclass
class LayerCurvature:
    """Per linear layer: its name, its input activations (bias-augmented), and the Jacobian of
    every output coordinate in the layer's pre-activations, per sample."""

    name: str
    inputs: Tensor
    """(batch, in [+1 for the bias])"""
    output_jacobian: Tensor
    """(batch, out, C): B_n[:, c] = d f_{n,c} / d s_n"""


@dataclass
class OutputCurvature:
    """Everything KFAC and the Gram matrix need from one pass of a closure."""

    layers: list[LayerCurvature]
    other_jacobian: Tensor | None
    """(batch * C, p_other): the Jacobian in parameters outside linear layers (e.g. log-std)"""
    output_hessian: Tensor | None
    """(batch * C, batch * C): H_out, dense (only when built for the Gram matrix)"""
    per_sample_hessian: Tensor
    """(batch, C, C): the diagonal blocks H_nn of H_out"""


def output_curvature(closure: LossClosure, with_gram: bool = False) -> OutputCurvature:
    """Record the linear layers of one forward pass and differentiate the outputs through them.

    C backward passes (one per output coordinate, all samples at once) give every layer's
    per-sample output Jacobian, and C products with H_out its per-sample blocks; both are exact
    for networks without cross-sample operations and losses that are sums over samples. With
    `with_gram`, also the dense H_out and the Jacobian rows of parameters outside linear layers
    (memory grows as (batch * C)^2: for a small batch only).
    """
    leaves = closure.leaves()
    names = {id(p): n for n, p in leaves.items()}
    with _RecordLinear() as recorder:
        outputs = closure.output_fn(leaves)
    batch = outputs.shape[0]
    flat_outputs = outputs.reshape(batch, -1)
    num_outputs = flat_outputs.shape[1]
    calls = [call for call in recorder.calls if id(call[1]) in names]
    used = [id(call[1]) for call in calls] + [id(c[2]) for c in calls if c[2] is not None]
    if len(set(used)) != len(used):
        raise ValueError("a linear layer's weight is used twice (shared weights): not supported")
    others = [p for p in leaves.values() if id(p) not in set(used)] if with_gram else []

    output_leaf = flat_outputs.detach().requires_grad_(True)
    (output_gradient,) = torch.autograd.grad(
        closure.loss_fn(output_leaf.reshape(outputs.shape)), output_leaf, create_graph=True
    )
    preactivations = [call[3] for call in calls]
    jacobians = [
        torch.empty((batch, s.shape[-1], num_outputs), dtype=s.dtype, device=s.device)
        for s in preactivations
    ]
    per_sample = outputs.new_zeros((batch, num_outputs, num_outputs))
    other_rows = []
    for c in range(num_outputs):
        direction = torch.zeros_like(flat_outputs)
        direction[:, c] = 1
        grads = torch.autograd.grad(
            flat_outputs, preactivations, direction, retain_graph=True, allow_unused=True
        )
        for jacobian, grad, s in zip(jacobians, grads, preactivations, strict=True):
            jacobian[:, :, c] = (grad if grad is not None else torch.zeros_like(s)).reshape(
                batch, -1
            )
        if output_gradient.requires_grad:
            # H_out e_c over all samples at once: sample n's row is its block's column c.
            (column,) = torch.autograd.grad(
                output_gradient, output_leaf, direction, retain_graph=True
            )
            per_sample[:, :, c] = column
        if others:
            # J rows for (n, c) of parameters outside linear layers: one batched backward with
            # a one-hot direction per sample.
            one_hot = outputs.new_zeros((batch, *flat_outputs.shape))
            one_hot[torch.arange(batch), torch.arange(batch), c] = 1
            rows = torch.autograd.grad(
                flat_outputs,
                others,
                one_hot,
                retain_graph=True,
                is_grads_batched=True,
                allow_unused=True,
            )
            other_rows.append(
                torch.cat(
                    [
                        (r if r is not None else p.new_zeros((batch, *p.shape))).reshape(batch, -1)
                        for r, p in zip(rows, others, strict=True)
                    ],
                    1,
                )
            )

    layers = []
    for (x, weight, bias, _), jacobian in zip(calls, jacobians, strict=True):
        inputs = x.detach().reshape(batch, -1)
        if bias is not None:
            inputs = torch.cat([inputs, torch.ones_like(inputs[:, :1])], 1)
        layers.append(LayerCurvature(names[id(weight)], inputs, jacobian))

    output_hessian = other = None
    if with_gram:
        size = batch * num_outputs
        output_hessian = outputs.new_zeros((size, size))
        if output_gradient.requires_grad:
            for i in range(size):
                direction = outputs.new_zeros(size)
                direction[i] = 1
                (column,) = torch.autograd.grad(
                    output_gradient, output_leaf, direction.view_as(output_leaf), retain_graph=True
                )
                output_hessian[:, i] = column.reshape(-1)
        if other_rows:
            # stacked as (batch, C, p): rows ordered (n, c) like the flattened outputs
            other = torch.stack(other_rows, 1).reshape(size, -1)
    return OutputCurvature(layers, other, output_hessian, per_sample)


def kfac_factors(curvature: OutputCurvature) -> dict[str, tuple[Tensor, Tensor]]:
    """Per linear layer, the KFAC factors (A, G) with GGN block ~ A (x) G for vec(W) row-major
    over (out, in): A = (1/N) sum_n a_n a_n^T (input with a 1 for the bias), G = sum_n B_n
    H_nn B_n^T. Exact for one sample (N = 1); the approximation is E[aa^T (x) gg^T] ~
    E[aa^T] (x) E[gg^T] (Martens & Grosse 2015)."""
    factors = {}
    for layer in curvature.layers:
        a = layer.inputs
        A = a.T @ a / a.shape[0]
        B = layer.output_jacobian
        G = torch.einsum("noc,ncd,npd->op", B, curvature.per_sample_hessian, B)
        factors[layer.name] = (A, G)
    return factors


def gram_matrix(curvature: OutputCurvature) -> Tensor:
    """K = J J^T over (sample, output) pairs: the empirical NTK of the closure's outputs.

    For a linear layer, the Jacobian row of output (n, c) in vec(W, b) is B_n[:, c] (x) a_n, so
    its Gram block is (a_n . a_m)(B_n[:, c] . B_m[:, c']): J is never built.
    """
    K = 0
    for layer in curvature.layers:
        B = layer.output_jacobian
        batch, _, num_outputs = B.shape
        input_gram = layer.inputs @ layer.inputs.T  # (n, m)
        output_gram = torch.einsum("noc,mod->ncmd", B, B)
        K = K + (input_gram[:, None, :, None] * output_gram).reshape(
            batch * num_outputs, batch * num_outputs
        )
    if curvature.other_jacobian is not None:
        K = K + curvature.other_jacobian @ curvature.other_jacobian.T
    return K


def loss_weighted_gram_eigenvalues(curvature: OutputCurvature) -> Tensor:
    """Eigenvalues (descending) of K^1/2 H_out K^1/2, whose spectrum equals that of H_out K and
    whose nonzero eigenvalues equal the GGN's (J^T H J and H J J^T share them): the paper's
    NTK-GGN equivalence, on the Gram side."""
    K = gram_matrix(curvature)
    values, vectors = torch.linalg.eigh(K)
    root = vectors * values.clamp_min(0).sqrt() @ vectors.T
    weighted = root @ curvature.output_hessian @ root
    return torch.linalg.eigvalsh(0.5 * (weighted + weighted.T)).flip(0)
