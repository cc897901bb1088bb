"""Time and accuracy of our Hessian top-k and SLQ density against PyHessian and curvlinops.

    python benchmarks/hessian.py            # every table, ~10 minutes on 2 cores
    python benchmarks/hessian.py --quick    # smoke run, ~1.5 minutes: 1 repeat, no PyHessian on
                                            # MNIST, a float64 Lanczos reference instead of dense

Every method sees the same model, batch and loss in float32 on the CPU, with 1 torch thread for the
PPO networks (what a PPO run uses: a second thread only adds overhead at this size, measured) and
2 for the MNIST network:
ours (`diagnostics.curvature`: a `LossClosure`, `HessianOperator`, `extreme_eigenvalues`,
`spectrum`), PyHessian 0.1 (`hessian(model, criterion, data)`: power iteration with deflation for
top-k, Lanczos with reorthogonalisation for the density) and curvlinops 3.0.1
(`HessianLinearOperator`, which reruns the forward and backward pass for every product: top-k by
`scipy.sparse.linalg.eigsh(which="LA")`, density by its Papyan-2020 Lanczos without
reorthogonalisation). Timed repeats alternate the methods so machine noise falls on all alike;
seconds are medians over `--repeats` (they include building each method's operator from the model
and batch). "time / ours" is a method's median seconds over ours': above 1, ours is faster. HVPs
counts the Hessian-vector products a method used, which does not depend on the machine.

Cases (the paper's setups, arXiv 2509.22335):
1. PPO critic, 1x256 ReLU (17 -> 256 -> 1, 4,865 parameters) on 2048 real HalfCheetah-v5
   observations from a random-action rollout (fixed seed), loss 0.5 * mean((V(s) - R)^2) with R the
   rollout's discounted returns (gamma 0.99). Observations are standardised (clipped at 10) and the
   returns divided by their std, as the agent's normalisers would leave them.
2. PPO actor, 1x256 ReLU Gaussian policy (17 -> 256 -> 6 means, 6 log-stds) on the same
   observations, loss = the clipped surrogate (clip 0.2) minus 0.01 x entropy, exactly as
   `agents/ppo.py` writes it: actions drawn from the policy, old log-probabilities from a slightly
   perturbed copy (so ratios differ from 1 and some are clipped), advantages = standardised returns.
   PyHessian and curvlinops see a model returning (means, log-stds) and a criterion that closes over
   actions, advantages and old log-probabilities and ignores its targets.
3. The paper's Permuted-MNIST network: MLP 784 -> 1000 -> 1000 -> 1000 -> 10 ReLU, Kaiming-uniform,
   cross-entropy on 2,000 28x28 inputs (sklearn's digits upsampled if sklearn is installed, else
   uniform random images with random labels: the output says which), float32, 2,797,010 parameters.

Tables:
- "top-k" (cases 1, 2): seconds, HVPs, and the max relative error of the k eigenvalues against the
  reference (the dense float64 Hessian's eigvalsh; under --quick a float64 Lanczos run to residuals
  below 1e-9). Ours and curvlinops find the k largest eigenvalues; PyHessian's power iteration finds
  the k largest in magnitude, so it is compared with those.
- "density" (cases 1, 2): one SLQ probe of order 100. Ours includes the 10,000-point density grid
  (`Spectrum.density`), curvlinops its own 10,000-point grid plus its eigsh estimate of the spectral
  boundaries; PyHessian returns Ritz values and weights only. The largest and smallest Ritz values
  are compared with ours and the dense extremes.
- "moments": sum_i w_i theta_i^k of each method's SLQ quadrature against tr(H^k)/n of the dense
  spectrum, k = 1..4. One probe is a noisy estimator: these are printed, not asserted.
- "checkpoint" (case 3): one Hessian checkpoint of the paper = Lanczos order 100 + density on a
  10,000-point grid, ours split into the two, PyHessian's density(iter=100, n_v=1) once, and the
  paper's JAX reference from the project's issue (146 s Lanczos + 33 s density on 2 CPU cores, of
  which the HVPs are about 36 s). "same start" runs ours from the Rademacher vector PyHessian draws
  (same torch seed) and compares the 5 largest and 5 smallest Ritz values.
- "where our time goes": one instrumented run of our top-k (case 1) and of our Lanczos (case 3):
  building the operator (forward + differentiable gradient), the HVPs, the convergence checks
  (eigendecompositions of the tridiagonal), and the rest (reorthogonalisation and vector updates).

PyHessian 0.1 calls `torch.eig`, removed from torch 2; its density runs here with a stand-in that
returns `torch.linalg.eigh` of the (symmetric) tridiagonal in `torch.eig`'s format.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from curvlinops import HessianLinearOperator
from curvlinops.papyan2020traces.spectrum import LanczosApproximateSpectrumCached
from pyhessian import hessian as PyHessian
from scipy.sparse.linalg import eigsh
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # diagnostics_overhead

from diagnostics_overhead import diagnostics_overhead_table  # noqa: E402

from agents.networks import MLP, Critic, GaussianActor  # noqa: E402
from diagnostics import curvature  # noqa: E402
from diagnostics.curvature import (  # noqa: E402
    HessianOperator,
    LossClosure,
    extreme_eigenvalues,
    lanczos,
    spectrum,
)

PPO_THREADS, MNIST_THREADS = 1, 2
LOG_2PI = math.log(2 * math.pi)
JAX_LANCZOS_S, JAX_DENSITY_S, JAX_HVP_S = 146.0, 33.0, 36.0
# The module (the package's `hessian` attribute is the class, which shadows it).
PYHESSIAN_MODULE = sys.modules["pyhessian.hessian"]


@dataclass
class Args:
    quick: bool = False
    """smoke run: 1 repeat, no PyHessian on MNIST, float64 Lanczos reference instead of dense"""
    repeats: int = 3
    """timed runs of each method (alternating); the median is reported"""
    cases: tuple[str, ...] = ("critic", "actor", "mnist")
    """which cases to run"""
    seed: int = 0
    """seed of the rollout, the networks and the probes"""
    batch: int = 2048
    """observations in the PPO batch (cases 1, 2)"""
    top_k: int = 20
    """eigenvalues in the top-k table"""
    tols: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    """our extreme_eigenvalues tolerances (the top-k's residual bounds and their change between
    checks <= tol * max|theta|); the first is the headline, the others show what more accuracy
    costs"""
    order: int = 100
    """Lanczos order of the density (the paper's 100)"""
    grid_points: int = 10_000
    """points of the density grid (the paper's 10,000)"""
    mnist_samples: int = 2000
    """inputs in the MNIST-network batch (case 3)"""
    pyhessian_mnist: bool = True
    """run PyHessian's density on the MNIST network once (skipped under --quick)"""
    overhead: bool = True
    """also measure the diagnostics' share of a PPO run's wall time (benchmarks/diagnostics_overhead.py)"""


# --- The problems: a model, a batch, and a loss of the model's outputs ----------------------


@dataclass
class Problem:
    """A model (inputs -> outputs), its batch, and a loss of the outputs that closes over
    everything else (targets, actions, advantages): the one definition all three methods see."""

    name: str
    model: nn.Module
    inputs: Tensor
    frozen: dict[str, Tensor]
    loss: Callable[[Tensor, dict[str, Tensor]], Tensor]
    notes: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to(self, dtype: torch.dtype) -> Problem:
        """A copy in another dtype (the same float32 values, cast): for the float64 reference."""
        return Problem(
            self.name,
            copy.deepcopy(self.model).to(dtype),
            self.inputs.to(dtype),
            {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.frozen.items()},
            self.loss,
            self.notes,
        )

    def closure(self) -> LossClosure:
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        return LossClosure(
            params,
            lambda p: torch.func.functional_call(self.model, p, (self.inputs,)),
            lambda outputs: self.loss(outputs, self.frozen),
        )

    def criterion(self, outputs: Tensor, _targets: Tensor) -> Tensor:
        """criterion(outputs, targets) for PyHessian: the targets are ignored."""
        return self.loss(outputs, self.frozen)

    def dummy_targets(self) -> Tensor:
        return torch.zeros(len(self.inputs), dtype=self.inputs.dtype)


class ClosureLoss(nn.Module):
    """The problem's loss as the nn.Module curvlinops wants: it reads `reduction` ("mean": with a
    single batch the normalisation factor is 1) and calls it as loss(outputs, targets)."""

    reduction = "mean"

    def __init__(self, problem: Problem):
        super().__init__()
        self.problem = problem

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.problem.criterion(outputs, targets)


class CriticValues(nn.Module):
    def __init__(self, critic: Critic):
        super().__init__()
        self.critic = critic

    def forward(self, obs: Tensor) -> Tensor:
        return self.critic(obs)[0]


class ActorOutputs(nn.Module):
    """(means, log-stds expanded to the batch), as agents/ppo.py's actor closure outputs."""

    def __init__(self, actor: GaussianActor):
        super().__init__()
        self.actor = actor

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.actor(obs)[0]
        return torch.cat([mean, self.actor.log_std.expand_as(mean)], -1)


class Logits(nn.Module):
    def __init__(self, net: MLP):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[0]


def halfcheetah_batch(size: int, seed: int, gamma: float = 0.99) -> tuple[Tensor, Tensor]:
    """Observations of a random-action HalfCheetah-v5 rollout and their discounted returns,
    normalised as the agent's running normalisers would leave them."""
    env = gym.make("HalfCheetah-v5")
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards, ends = [], [], []
    for _ in range(size):
        observations.append(obs)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        rewards.append(reward)
        ends.append(terminated or truncated)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    returns = np.zeros(size)
    running = 0.0
    for t in reversed(range(size)):
        running = rewards[t] + gamma * running * (1.0 - ends[t])
        returns[t] = running
    observations = np.asarray(observations)
    observations = (observations - observations.mean(0)) / (observations.std(0) + 1e-8)
    observations = np.clip(observations, -10, 10)
    return (
        torch.tensor(observations, dtype=torch.float32),
        torch.tensor(returns / returns.std(), dtype=torch.float32),
    )


def critic_loss(values: Tensor, frozen: dict[str, Tensor]) -> Tensor:
    return 0.5 * ((values - frozen["returns"]) ** 2).mean()


def critic_problem(obs: Tensor, returns: Tensor, seed: int) -> Problem:
    torch.manual_seed(seed)
    critic = Critic(obs.shape[1], (256,), "relu")
    return Problem("PPO critic 1x256", CriticValues(critic), obs, {"returns": returns}, critic_loss)


def actor_loss(outputs: Tensor, frozen: dict[str, Tensor]) -> Tensor:
    """agents/ppo.py's actor loss: clipped surrogate (clip 0.2) minus 0.01 x entropy."""
    act_dim = outputs.shape[1] // 2
    mean, log_std = outputs[:, :act_dim], outputs[:, act_dim:]
    logprob = -0.5 * ((frozen["actions"] - mean) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI
    ratio = (logprob.sum(-1) - frozen["old_logprobs"]).exp()
    advantages = frozen["advantages"]
    clipped = torch.clamp(ratio, 0.8, 1.2)
    pg_loss = torch.max(-advantages * ratio, -advantages * clipped).mean()
    entropy = (0.5 + 0.5 * LOG_2PI + log_std).sum(-1).mean()
    return pg_loss - 0.01 * entropy


def actor_problem(obs: Tensor, returns: Tensor, seed: int) -> Problem:
    torch.manual_seed(seed)
    actor = GaussianActor(obs.shape[1], 6, (256,), "relu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean = actor(obs)[0]
        actions = mean + actor.log_std.exp() * torch.randn(mean.shape, generator=generator)
        # The policy that collected the data: every weight moved by 10% of itself, and the
        # log-stds by N(0, 0.1^2), so that ratios differ from 1 and some are clipped.
        old = copy.deepcopy(actor)
        for p in old.mean.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=generator))
        old.log_std.add_(0.1 * torch.randn(old.log_std.shape, generator=generator))
        old_outputs = ActorOutputs(old)(obs)
        old_mean, old_log_std = old_outputs[:, :6], old_outputs[:, 6:]
        old_logprobs = (
            -0.5 * ((actions - old_mean) / old_log_std.exp()) ** 2 - old_log_std - 0.5 * LOG_2PI
        ).sum(-1)
    frozen = {
        "actions": actions,
        "old_logprobs": old_logprobs,
        "advantages": (returns - returns.mean()) / returns.std(),
    }
    problem = Problem("PPO actor 1x256", ActorOutputs(actor), obs, frozen, actor_loss)
    with torch.no_grad():
        outputs = problem.model(obs)
        logprob = (
            -0.5 * ((actions - outputs[:, :6]) / outputs[:, 6:].exp()) ** 2
            - outputs[:, 6:]
            - 0.5 * LOG_2PI
        ).sum(-1)
        ratio = (logprob - old_logprobs).exp()
    clipped = float(((ratio < 0.8) | (ratio > 1.2)).float().mean())
    problem.notes.append(
        f"ratios in [{float(ratio.min()):.2f}, {float(ratio.max()):.2f}], "
        f"{100 * clipped:.0f}% outside [0.8, 1.2]"
    )
    return problem


def mnist_problem(samples: int, seed: int) -> Problem:
    generator = torch.Generator().manual_seed(seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        load_digits = None
    if load_digits is not None:
        digits = load_digits()
        index = torch.arange(samples) % len(digits.target)
        images = torch.tensor(digits.images, dtype=torch.float32)[index, None] / 16.0
        inputs = F.interpolate(images, size=(28, 28), mode="bilinear").reshape(samples, 784)
        labels = torch.tensor(digits.target)[index]
        source = f"sklearn digits upsampled to 28x28 ({len(digits.target)} distinct, cycled)"
    else:
        inputs = torch.rand((samples, 784), generator=generator)
        labels = torch.randint(0, 10, (samples,), generator=generator)
        source = "uniform random 28x28 images, random labels (sklearn is not installed)"
    torch.manual_seed(seed)
    net = MLP(784, (1000, 1000, 1000), 10, "relu", init="kaiming-uniform")
    problem = Problem(
        "Permuted-MNIST MLP 3x1000",
        Logits(net),
        inputs,
        {"labels": labels},
        lambda logits, frozen: F.cross_entropy(logits, frozen["labels"]),
    )
    problem.notes.append(f"inputs: {source}")
    return problem


# --- The methods ---------------------------------------------------------------------------


class CountedOperator:
    """Our operator with its products counted and timed (spectrum() needs dim, dtype, device)."""

    def __init__(self, operator: HessianOperator):
        self.operator = operator
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device
        self.calls = 0
        self.seconds = 0.0

    def matvec(self, vector: Tensor) -> Tensor:
        started = time.perf_counter()
        product = self.operator.matvec(vector)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return product


def rademacher_like_pyhessian(params: list[Tensor], seed: int) -> Tensor:
    """The start vector PyHessian's density draws after torch.manual_seed(seed), flattened."""
    torch.manual_seed(seed)
    signs = [torch.randint_like(p, high=2) for p in params]
    return torch.cat([(2 * s - 1).reshape(-1) for s in signs])


@dataclass
class TopK:
    values: np.ndarray
    """as the method returned them"""
    hvps: int


@dataclass
class Quadrature:
    ritz_values: np.ndarray
    ritz_weights: np.ndarray
    hvps: int
    seconds_split: dict[str, float] = field(default_factory=dict)


def ours_top_k(problem: Problem, k: int, tol: float, seed: int) -> TopK:
    operator = CountedOperator(HessianOperator(problem.closure()))
    start = curvature.rademacher(
        operator.dim, torch.Generator().manual_seed(seed), operator.dtype, operator.device
    )
    top, _bottom, _ = extreme_eigenvalues(operator.matvec, start, k, tol=tol, which="top")
    return TopK(top, operator.calls)


@contextlib.contextmanager
def counting_pyhessian_products() -> Iterator[list[int]]:
    """Count PyHessian's Hessian-vector products (its module-level hessian_vector_product)."""
    original = PYHESSIAN_MODULE.hessian_vector_product
    count = [0]

    def counted(gradients, params, vector):
        count[0] += 1
        return original(gradients, params, vector)

    PYHESSIAN_MODULE.hessian_vector_product = counted
    try:
        yield count
    finally:
        PYHESSIAN_MODULE.hessian_vector_product = original


@contextlib.contextmanager
def torch_eig_for_pyhessian() -> Iterator[None]:
    """PyHessian 0.1's density calls torch.eig(T, eigenvectors=True), removed from torch 2. T is
    the symmetric Lanczos tridiagonal, so eigh gives the same pairs; torch.eig returned the
    eigenvalues as (n, 2) real and imaginary parts."""
    original = torch.eig

    def eig(matrix: Tensor, eigenvectors: bool = False) -> tuple[Tensor, Tensor]:
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    torch.eig = eig
    try:
        yield
    finally:
        torch.eig = original


def pyhessian_object(problem: Problem) -> PyHessian:
    for p in problem.model.parameters():
        p.grad = None  # PyHessian reads .grad after its backward: stale ones would add up
    return PyHessian(
        problem.model, problem.criterion, data=(problem.inputs, problem.dummy_targets()), cuda=False
    )


def release_pyhessian(problem: Problem) -> None:
    """PyHessian leaves a differentiable .grad on every parameter (a reference cycle)."""
    for p in problem.model.parameters():
        p.grad = None


def pyhessian_top_k(problem: Problem, k: int, seed: int) -> TopK:
    torch.manual_seed(seed)  # its power iterations start from torch.randn
    with counting_pyhessian_products() as count:
        values, _ = pyhessian_object(problem).eigenvalues(maxIter=100, tol=1e-3, top_n=k)
    release_pyhessian(problem)
    return TopK(np.asarray(values), count[0])


def curvlinops_operator(problem: Problem) -> HessianLinearOperator:
    # check_deterministic=False: its safeguard costs extra products and our batch is fixed.
    return HessianLinearOperator(
        problem.model,
        ClosureLoss(problem),
        [p for p in problem.model.parameters()],
        [(problem.inputs, problem.dummy_targets())],
        check_deterministic=False,
    )


def count_curvlinops_products(operator: HessianLinearOperator) -> list[int]:
    """Count columns multiplied by the operator (both `A @ v` and its SciPy export use _matmat)."""
    original = operator._matmat
    count = [0]

    def counted(matrix: list[Tensor]) -> list[Tensor]:
        count[0] += matrix[0].shape[-1]
        return original(matrix)

    operator._matmat = counted
    return count


def curvlinops_top_k(problem: Problem, k: int, tol: float) -> TopK:
    operator = curvlinops_operator(problem)
    count = count_curvlinops_products(operator)
    values = eigsh(operator.to_scipy(), k=k, which="LA", tol=tol, return_eigenvectors=False)
    return TopK(np.sort(values)[::-1], count[0])


def ours_density(problem: Problem, order: int, grid_points: int, seed: int) -> Quadrature:
    started = time.perf_counter()
    operator = CountedOperator(HessianOperator(problem.closure()))
    built = time.perf_counter()
    result = spectrum(operator, order, 1, 20, torch.Generator().manual_seed(seed))
    lanczos_done = time.perf_counter()
    result.density(grid_points)
    finished = time.perf_counter()
    split = {
        "build": built - started,
        "hvp": operator.seconds,
        "lanczos rest": lanczos_done - built - operator.seconds,
        "lanczos": lanczos_done - started,
        "density": finished - lanczos_done,
    }
    finite = np.isfinite(result.ritz_values[0])
    return Quadrature(
        result.ritz_values[0][finite], result.ritz_weights[0][finite], operator.calls, split
    )


def pyhessian_density(problem: Problem, order: int, seed: int) -> Quadrature:
    with counting_pyhessian_products() as count, torch_eig_for_pyhessian():
        hessian = pyhessian_object(problem)
        torch.manual_seed(seed)  # its Rademacher start: see rademacher_like_pyhessian
        values, weights = hessian.density(iter=order, n_v=1)
    release_pyhessian(problem)
    return Quadrature(np.asarray(values[0]), np.asarray(weights[0]), count[0])


def curvlinops_density(problem: Problem, order: int, grid_points: int, seed: int) -> Quadrature:
    operator = curvlinops_operator(problem)
    count = count_curvlinops_products(operator)
    torch.manual_seed(seed)  # its Lanczos starts from torch.randn
    cached = LanczosApproximateSpectrumCached(operator, ncv=order)
    cached.approximate_spectrum(num_repeats=1, num_points=grid_points)
    values, vectors = cached._lanczos_iters[0]  # the Ritz pairs it used (no public accessor)
    return Quadrature(values.numpy(), (vectors[0] ** 2).numpy(), count[0])


# --- References ------------------------------------------------------------------------------


@dataclass
class Reference:
    kind: str
    top: np.ndarray
    """the k largest, descending"""
    top_magnitude: np.ndarray
    """the k largest in magnitude, sorted by magnitude"""
    largest: float
    smallest: float
    moments: np.ndarray | None
    """tr(H^k)/n for k = 1..4 (dense only)"""
    seconds: float


def dense_reference(problem: Problem, k: int) -> Reference:
    """eigvalsh of the dense float64 Hessian, built one HVP per column (faster on the CPU than
    vmap or batched-gradient variants, and within the machine's memory)."""
    started = time.perf_counter()
    operator = HessianOperator(problem.to(torch.float64).closure())
    identity = torch.eye(operator.dim, dtype=torch.float64)
    hessian = torch.stack([operator.matvec(column) for column in identity])
    eigenvalues = torch.linalg.eigvalsh(0.5 * (hessian + hessian.T)).numpy()
    by_magnitude = eigenvalues[np.argsort(-np.abs(eigenvalues))]
    moments = np.array([np.mean(eigenvalues**power) for power in range(1, 5)])
    return Reference(
        "dense float64 Hessian, eigvalsh",
        eigenvalues[::-1][:k].copy(),
        by_magnitude[:k].copy(),
        float(eigenvalues[-1]),
        float(eigenvalues[0]),
        moments,
        time.perf_counter() - started,
    )


def lanczos_reference(problem: Problem, k: int, seed: int) -> Reference:
    """--quick: float64 Lanczos with full reorthogonalisation until the 2k wanted residual bounds
    are below 1e-9 * max|theta| (no moments: they need the whole spectrum). The k largest in
    magnitude are taken from the k largest and k smallest."""
    started = time.perf_counter()
    operator = HessianOperator(problem.to(torch.float64).closure())
    start = curvature.rademacher(
        operator.dim, torch.Generator().manual_seed(seed + 1000), torch.float64, "cpu"
    )
    top, bottom, _ = extreme_eigenvalues(
        operator.matvec, start, k, tol=1e-9, max_order=operator.dim
    )
    both = np.r_[top, bottom]
    return Reference(
        "float64 Lanczos to residuals < 1e-9 (--quick)",
        top,
        both[np.argsort(-np.abs(both))][:k],
        float(top[0]),
        float(bottom[0]),
        None,
        time.perf_counter() - started,
    )


# --- Timing and printing -----------------------------------------------------------------


def alternate(methods: dict[str, Callable[[int], object]], repeats: int) -> dict[str, list]:
    """Run every method `repeats` times, alternating (repeat r calls each method with r), and
    return per method its list of (seconds, result)."""
    runs: dict[str, list] = {name: [] for name in methods}
    for repeat in range(repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            result = method(repeat)
            runs[name].append((time.perf_counter() - started, result))
    return runs


def median_seconds(runs: list) -> float:
    return float(np.median([seconds for seconds, _ in runs]))


def max_relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    count = min(len(values), len(reference))
    if count < len(reference):
        return math.inf
    return float(np.max(np.abs(values[:count] - reference) / np.abs(reference)))


def relative_difference(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-30)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Plain text, the first column left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *others = zip(cells, widths, strict=True)
        return "  ".join([first[0].ljust(first[1])] + [c.rjust(w) for c, w in others])

    print(f"\n{title}")
    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def fmt_error(error: float) -> str:
    return f"{error:.1e}"


# --- Cases -----------------------------------------------------------------------------------


def ppo_case(problem: Problem, args: Args, repeats: int) -> None:
    k = args.top_k
    print(f"\n=== {problem.name}: {problem.num_params:,} parameters, batch {len(problem.inputs)}")
    for note in problem.notes:
        print(f"    {note}")
    if args.quick:
        reference = lanczos_reference(problem, k, args.seed)
    else:
        reference = dense_reference(problem, k)
    print(
        f"    reference: {reference.kind} ({reference.seconds:.0f} s); "
        f"eigenvalues in [{reference.smallest:.4g}, {reference.largest:.4g}]"
    )

    # --- Top-k.

    def ours(tol: float) -> Callable[[int], TopK]:
        return lambda repeat: ours_top_k(problem, k, tol, args.seed + repeat)

    methods = {f"ours, extreme_eigenvalues tol={tol:g}": ours(tol) for tol in args.tols}
    methods["PyHessian eigenvalues(maxIter=100, tol=1e-3)"] = lambda r: pyhessian_top_k(
        problem, k, args.seed + r
    )
    methods["curvlinops + eigsh(which=LA), tol=0 (default)"] = lambda r: curvlinops_top_k(
        problem, k, 0
    )
    methods["curvlinops + eigsh(which=LA), tol=1e-2"] = lambda r: curvlinops_top_k(problem, k, 1e-2)
    runs = alternate(methods, repeats)
    ours_seconds = median_seconds(next(iter(runs.values())))
    rows = []
    for name, method_runs in runs.items():
        tops = [np.sort(result.values)[::-1] for _, result in method_runs]
        errors = [max_relative_error(top, reference.top) for top in tops]
        first = [relative_difference(top[0], reference.top[0]) for top in tops]
        seconds = median_seconds(method_runs)
        rows.append(
            [
                name,
                fmt_seconds(seconds),
                f"{seconds / ours_seconds:.2f}",
                f"{np.median([result.hvps for _, result in method_runs]):.0f}",
                fmt_error(float(np.median(errors))),
                fmt_error(float(np.max(errors))),
                fmt_error(float(np.median(first))),
            ]
        )
    print_table(
        f"top-{k} ({problem.name}; median of {repeats}; errors vs the reference's {k} largest)",
        [
            "method",
            "seconds",
            "time / ours",
            "HVPs",
            f"max rel.err top-{k} (median)",
            "(worst run)",
            "rel.err λ1",
        ],
        rows,
    )
    pyhessian_runs = runs["PyHessian eigenvalues(maxIter=100, tol=1e-3)"]
    by_magnitude = [
        max_relative_error(
            result.values[np.argsort(-np.abs(result.values))], reference.top_magnitude
        )
        for _, result in pyhessian_runs
    ]
    print(
        f"    PyHessian's power iteration targets the {k} largest |λ|: against those, its max "
        f"rel.err is {fmt_error(float(np.median(by_magnitude)))} (median); it returned "
        f"{np.median([np.sum(result.values < 0) for _, result in pyhessian_runs]):.0f} negative "
        f"values, the reference's {k} largest |λ| hold {np.sum(reference.top_magnitude < 0)}"
    )

    # --- Density.
    methods = {
        f"ours, spectrum(order={args.order}) + density({args.grid_points})": lambda r: ours_density(
            problem, args.order, args.grid_points, args.seed + r
        ),
        f"PyHessian density(iter={args.order}, n_v=1)": lambda r: pyhessian_density(
            problem, args.order, args.seed + r
        ),
        f"curvlinops LanczosApproximateSpectrumCached(ncv={args.order})": lambda r: (
            curvlinops_density(problem, args.order, args.grid_points, args.seed + r)
        ),
    }
    runs = alternate(methods, repeats)
    ours_runs = next(iter(runs.values()))
    ours_seconds = median_seconds(ours_runs)
    ours_last = ours_runs[-1][1]
    ours_max, ours_min = ours_last.ritz_values.max(), ours_last.ritz_values.min()
    rows = []
    moment_rows = {name: [] for name in runs}
    for name, method_runs in runs.items():
        seconds = median_seconds(method_runs)
        last = method_runs[-1][1]
        largest, smallest = float(last.ritz_values.max()), float(last.ritz_values.min())
        rows.append(
            [
                name,
                fmt_seconds(seconds),
                f"{seconds / ours_seconds:.2f}",
                f"{np.median([result.hvps for _, result in method_runs]):.0f}",
                f"{largest:.5g}",
                f"{smallest:.5g}",
                fmt_error(relative_difference(largest, ours_max)),
                fmt_error(relative_difference(smallest, ours_min)),
                fmt_error(relative_difference(largest, reference.largest)),
                fmt_error(relative_difference(smallest, reference.smallest)),
            ]
        )
        for _, result in method_runs:
            moment_rows[name].append(
                [
                    float(np.sum(result.ritz_weights * result.ritz_values**power))
                    for power in range(1, 5)
                ]
            )
    rows.append(
        [reference.kind, "", "", "", f"{reference.largest:.5g}", f"{reference.smallest:.5g}"]
        + [""] * 4
    )
    print_table(
        f"density, 1 probe of order {args.order} ({problem.name}; median of {repeats}; "
        "Ritz values of the last run)",
        [
            "method",
            "seconds",
            "time / ours",
            "HVPs",
            "largest Ritz",
            "smallest Ritz",
            "vs ours: max",
            "min",
            "vs reference: max",
            "min",
        ],
        rows,
    )
    same_start = torch.equal(
        curvature.rademacher(
            problem.num_params, torch.Generator().manual_seed(args.seed), torch.float32, "cpu"
        ),
        rademacher_like_pyhessian(list(problem.model.parameters()), args.seed),
    )
    print(
        "    ours and PyHessian start from the same Rademacher vector (same seed: the same torch "
        "stream), so their Ritz values differ by float32 rounding only"
        if same_start
        else "    ours and PyHessian start from different Rademacher vectors"
    )
    if reference.moments is None:
        print("\nmoments: need the dense spectrum (not under --quick)")
        return
    table = [["tr(H^k)/n, dense"] + [f"{m:.4g}" for m in reference.moments]]
    for name, per_run in moment_rows.items():
        per_run = np.array(per_run)
        table.append(
            [name.split(",")[0].split(" density")[0].split(" Lanczos")[0]]
            + [
                f"{np.median(per_run[:, i]):.4g} ({np.median(per_run[:, i] / m):.2f}x)"
                for i, m in enumerate(reference.moments)
            ]
        )
    print_table(
        f"moments sum_i w_i theta_i^k of one probe vs tr(H^k)/n ({problem.name}; median over "
        f"{repeats} probes, and its ratio to the dense value)",
        ["method", "k=1", "k=2", "k=3", "k=4"],
        table,
    )


def mnist_case(args: Args, repeats: int) -> None:
    problem = mnist_problem(args.mnist_samples, args.seed)
    print(f"\n=== {problem.name}: {problem.num_params:,} parameters, batch {len(problem.inputs)}")
    for note in problem.notes:
        print(f"    {note}")
    ours_runs = [
        ours_density(problem, args.order, args.grid_points, args.seed + r) for r in range(repeats)
    ]
    split = {
        key: float(np.median([r.seconds_split[key] for r in ours_runs]))
        for key in ours_runs[0].seconds_split
    }
    ours_lanczos, ours_total = split["lanczos"], split["lanczos"] + split["density"]

    def row(name: str, lanczos_s: float, hvps: str, density: float | None) -> list[str]:
        total = lanczos_s + (density or 0.0)
        return [
            name,
            fmt_seconds(lanczos_s),
            hvps,
            "-" if density is None else fmt_seconds(density),
            fmt_seconds(total),
            f"{lanczos_s / ours_lanczos:.2f}",
            f"{total / ours_total:.2f}",
        ]

    rows = [
        row(
            f"ours, spectrum(order={args.order}) + density({args.grid_points})",
            ours_lanczos,
            fmt_seconds(split["hvp"]),
            split["density"],
        ),
        row(
            "paper's JAX (reported, 2 CPU cores)",
            JAX_LANCZOS_S,
            f"~{JAX_HVP_S:.0f}",
            JAX_DENSITY_S,
        ),
    ]
    pyhessian_result = None
    if args.pyhessian_mnist and not args.quick:
        started = time.perf_counter()
        pyhessian_result = pyhessian_density(problem, args.order, args.seed)
        seconds = time.perf_counter() - started
        rows.append(row(f"PyHessian density(iter={args.order}, n_v=1), once", seconds, "-", None))
    print_table(
        f"one Hessian checkpoint ({problem.name}; ours median of {repeats}; PyHessian returns Ritz "
        "values and weights, no grid)",
        [
            "method",
            "Lanczos s",
            "of which HVPs s",
            "density s",
            "total s",
            "Lanczos / ours",
            "total / ours",
        ],
        rows,
    )
    build, hvps = split["build"], split["hvp"]
    rest = split["lanczos"] - build - hvps
    print_table(
        f"where our time goes: Lanczos order {args.order} ({problem.name}; median of {repeats})",
        ["part", "seconds", "share"],
        [
            ["build (forward + differentiable gradient)", fmt_seconds(build),
             f"{build / split['lanczos']:.0%}"],
            [f"HVPs ({hvps / args.order:.3f} s each)", fmt_seconds(hvps),
             f"{hvps / split['lanczos']:.0%}"],
            ["rest (reorthogonalisation, vector updates, tridiagonal eigh)", fmt_seconds(rest),
             f"{rest / split['lanczos']:.0%}"],
        ],
    )  # fmt: skip
    if pyhessian_result is None:
        print("\nsame start: skipped (PyHessian not run on this case)")
        return
    operator = HessianOperator(problem.closure())
    start = rademacher_like_pyhessian(list(problem.model.parameters()), args.seed)
    ours = lanczos(operator.matvec, start, args.order).ritz_values
    theirs = np.sort(pyhessian_result.ritz_values)
    rows = []
    for label, mine, other in (
        ("5 largest", ours[::-1][:5], theirs[::-1][:5]),
        ("5 smallest", ours[:5], theirs[:5]),
    ):
        rows.append(
            [
                label,
                " ".join(f"{v:.5g}" for v in mine),
                " ".join(f"{v:.5g}" for v in other),
                fmt_error(float(np.max(np.abs(mine - other) / np.abs(mine)))),
            ]
        )
    print_table(
        "same start: ours from the Rademacher vector PyHessian drew (same torch seed)",
        ["Ritz values", "ours", "PyHessian", "max rel.diff"],
        rows,
    )


def profile_ours(problem: Problem, args: Args) -> None:
    """One instrumented run of our top-k: where the time goes."""
    checks = {"calls": 0, "seconds": 0.0}
    original = curvature.tridiagonal_eigen

    def timed_eigen(*a):
        started = time.perf_counter()
        result = original(*a)
        checks["calls"] += 1
        checks["seconds"] += time.perf_counter() - started
        return result

    started = time.perf_counter()
    operator = CountedOperator(HessianOperator(problem.closure()))
    built = time.perf_counter()
    start = curvature.rademacher(
        operator.dim, torch.Generator().manual_seed(args.seed), operator.dtype, operator.device
    )
    curvature.tridiagonal_eigen = timed_eigen
    try:
        extreme_eigenvalues(operator.matvec, start, args.top_k, tol=args.tols[0], which="top")
    finally:
        curvature.tridiagonal_eigen = original
    total = time.perf_counter() - started
    rest = total - (built - started) - operator.seconds - checks["seconds"]
    print_table(
        f"where our time goes: top-{args.top_k}, tol={args.tols[0]:g} ({problem.name}; one run, "
        f"{total:.3f} s)",
        ["part", "seconds", "share", "count"],
        [
            ["build (forward + differentiable gradient)", fmt_seconds(built - started),
             f"{(built - started) / total:.0%}", "1"],
            ["HVPs", fmt_seconds(operator.seconds), f"{operator.seconds / total:.0%}",
             f"{operator.calls} ({1e3 * operator.seconds / operator.calls:.2f} ms each)"],
            ["convergence checks (tridiagonal eigh)", fmt_seconds(checks["seconds"]),
             f"{checks['seconds'] / total:.0%}", str(checks["calls"])],
            ["rest (reorthogonalisation, vector updates)", fmt_seconds(rest),
             f"{rest / total:.0%}", ""],
        ],
    )  # fmt: skip


def main(args: Args) -> None:
    torch.set_num_threads(PPO_THREADS)
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    repeats = 1 if args.quick else args.repeats
    print(
        f"torch {torch.__version__}, {PPO_THREADS} thread(s) for PPO, {MNIST_THREADS} for MNIST; float32; "
        f"{repeats} repeat(s){' (--quick)' if args.quick else ''}"
    )
    if {"critic", "actor"} & set(args.cases):
        obs, returns = halfcheetah_batch(args.batch, args.seed)
        print(f"HalfCheetah-v5 random rollout: {len(obs)} observations, seed {args.seed}")
        if "critic" in args.cases:
            critic = critic_problem(obs, returns, args.seed)
            ppo_case(critic, args, repeats)
            profile_ours(critic, args)
        if "actor" in args.cases:
            ppo_case(actor_problem(obs, returns, args.seed), args, repeats)
    if "mnist" in args.cases:
        torch.set_num_threads(MNIST_THREADS)
        mnist_case(args, repeats)
    if args.overhead:
        print()
        diagnostics_overhead_table()


if __name__ == "__main__":
    main(tyro.cli(Args))
