"""The diagnostics hook a learner calls at task boundaries and every N updates.

A learner (PPO, SAC, the supervised stream) owns one `Diagnostics` object and calls:

    diagnostics.boundary(step, {"end": probe_old, "init": probe_new}, task_end, task_init)
        at the run's start (init only), at every shift (the end of the old task, on its last
        data, and the init of the new one, on its first data before any update) and at the
        run's end (end only);
    diagnostics.periodic(step, probe)   when diagnostics.due(updates) says so.

A `Probe` is what the learner hands over at one point: a function building the loss closures
(one per network, see curvature.LossClosure) on the first n samples of its batch, and one
giving the hidden features on those samples. The hook never sees an agent.

Each boundary writes scalars into the run's metrics (and W&B) as
`shift/{phase}/{net}/{kind}/{measure}` and one `diagnostics/step_{step:010d}.npz` with the
full spectra. Epsilon-ranks come in two conventions (diagnostics/curvature.py): `eps_rank@E`
is the exact mass outside [-E, E], `paper_eps_rank@E` the paper's code's grid integral. A measure that fails (NaN, out of memory, anything) is logged as a
`diagnostic_skipped` event and the others go on. The training state is never touched:
closures differentiate copies of the parameters, the random probes come from the hook's own
generator, and the global random streams are restored after every call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from diagnostics import curvature, plasticity, representation
from validation import ConfigError, require_all

Measure = Literal[
    "none", "hessian", "ggn", "kfac", "gram", "features", "weights", "readiness", "probe"
]
ALL_MEASURES = ("hessian", "ggn", "kfac", "gram", "features", "weights", "readiness", "probe")


@dataclass
class DiagnosticsConfig:
    """Settings of the diagnostics (flags --diag.*)."""

    batch_size: int = 2048
    """samples in the curvature and feature batch at a boundary (the paper: 2,000)"""
    lanczos_order: int = 100
    """Lanczos steps per probe (the paper: 100)"""
    probes: int = 1
    """SLQ probe vectors per spectrum (the paper: 1); more give a smoother density and a
    trace with an error bar"""
    top_k: int = 20
    """how many of the largest and smallest eigenvalues to report"""
    epsilons: tuple[float, ...] = (0.02, 0.04, 0.08, 0.1)
    """thresholds of the epsilon-ranks (the paper's default 0.1; its analysis 0.02-0.08)"""
    grid_points: int = 10_000
    """points of the saved density grid (the paper: 10,000)"""
    gram_batch: int = 32
    """samples of the loss-weighted Gram (NTK) matrix; it has batch * outputs rows"""
    srank_delta: float = 0.01
    """delta of srank (Kumar et al. 2021)"""
    dormant_tau: float = 0.025
    """a unit is tau-dormant when its mean |activation| is at most tau times the layer's
    average (Sokar et al. 2023); 0 counts only units that never fire"""
    every: int = 0
    """also measure features, weights and gradient norms every this many learner updates
    (a PPO iteration, a SAC gradient step, an SGD step); 0 = only at boundaries"""
    joint: bool = False
    """also the spectrum of the joint loss of all networks (the paper's RL measurement)"""
    plot: bool = False
    """draw the run's plots into RUN_DIR/plots when it ends (always done with --track, for W&B)"""
    min_init_samples: int = 256
    """RL: if fewer post-shift samples than this are in the PPO rollout that holds the shift,
    the init measurement waits for the next rollout (and records that one update happened); an
    init measured on fewer (a shift or the run's end came first) is left out"""
    probe_steps: int = 100
    """plasticity probe: full-batch steps of the copied optimizer on the new task's batch"""


@dataclass
class DiagnosticsFlags:
    """Flags every learner shares for its diagnostics (a mixin of Args)."""

    # The plasticity probe is not a default: at --diag.probe-steps 100 it costs about half a
    # Lanczos spectrum per network (tens of seconds on the paper's 3 x 1000 net), and it needs
    # the learner's optimizers (Diagnostics.attach). Readiness costs one gradient.
    diagnostics: tuple[Measure, ...] = tuple(m for m in ALL_MEASURES if m != "probe")
    """measures taken at every task boundary: hessian, ggn (spectra, SLQ density, epsilon-ranks),
    kfac (per-layer factor spectra), gram (loss-weighted NTK and its GGN check), features (ranks,
    dormant and dead units), weights (norm, distance from init, gradient norm), readiness
    (gradient strength and reliability), probe (at a task's init: how far --diag.probe-steps
    steps of a copy of the learner and its optimizer lower the new task's loss); none = off"""
    diag: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


@dataclass
class Probe:
    """What a learner hands over at one measuring point (its data frozen inside)."""

    closures: Callable[[int], dict[str, curvature.LossClosure]]
    """n -> one loss closure per network (e.g. actor, critic) on the first n samples"""
    features: Callable[[int], dict[str, list[Tensor]]]
    """n -> each network's hidden features on the first n samples"""
    size: int
    """how many samples the probe holds"""
    note: dict[str, Any] = field(default_factory=dict)
    """anything worth recording with the measurement (e.g. updates since the shift)"""
    nets: dict[str, nn.Module] | None = None
    """the networks whose weights the closures measure, when not the attached ones (e.g. a
    snapshot taken at a shift and measured later); None = the networks given to `attach`"""
    optimizers: list[torch.optim.Optimizer] | None = None
    """the optimizers holding the closures' parameters (the plasticity probe trains copies of
    both), when not the attached ones; None = the optimizers given to `attach`"""


def check_flags(flags: DiagnosticsFlags) -> None:
    """Raise ConfigError naming the flag for settings that cannot run."""
    config = flags.diag
    if not flags.diagnostics:
        raise ConfigError(
            f"--diagnostics needs at least one measure ({', '.join(ALL_MEASURES)}) or none"
        )
    unknown = sorted(set(flags.diagnostics) - {"none", *ALL_MEASURES})
    if unknown:
        raise ConfigError(f"--diagnostics: unknown measure(s) {', '.join(unknown)}")
    if "none" in flags.diagnostics and len(flags.diagnostics) > 1:
        raise ConfigError("--diagnostics none cannot be combined with other measures")
    require_all(
        [
            (f"--diag.{name.replace('_', '-')}", getattr(config, name), ">= 1")
            for name in (
                "batch_size",
                "lanczos_order",
                "probes",
                "top_k",
                "grid_points",
                "gram_batch",
                "probe_steps",
            )
        ]  # fmt: skip
        + [
            ("--diag.every", config.every, ">= 0"),
            ("--diag.epsilons", config.epsilons, "> 0"),
            ("--diag.srank-delta", config.srank_delta, "in [0, 1)"),
            ("--diag.dormant-tau", config.dormant_tau, ">= 0"),
            ("--diag.min-init-samples", config.min_init_samples, ">= 1"),
        ]
    )
    if not config.epsilons:
        raise ConfigError("--diag.epsilons needs at least one threshold")


# Which measures read each --diag.* setting (the others are read by every measure).
SETTING_READERS: dict[str, tuple[str, ...]] = {
    "lanczos_order": ("hessian", "ggn"),
    "probes": ("hessian", "ggn"),
    "top_k": ("hessian", "ggn"),
    "grid_points": ("hessian", "ggn"),
    "joint": ("hessian", "ggn"),
    "epsilons": ("hessian", "ggn", "gram", "features"),
    "gram_batch": ("gram",),
    "srank_delta": ("features",),
    "dormant_tau": ("features",),
    "probe_steps": ("probe",),
}


def unused_flags(flags: DiagnosticsFlags) -> dict[str, str]:
    """{config field: why it has no effect}: --diag.* settings no selected measure reads."""
    measures = set(flags.diagnostics) - {"none"}
    if not measures:
        return {"diag": "--diagnostics none turns every measure off"}
    return {
        f"diag.{setting}": f"only --diagnostics {' / '.join(readers)} read it, and this run "
        f"measures {' '.join(sorted(measures))}"
        for setting, readers in SETTING_READERS.items()
        if not measures & set(readers)
    }


class Diagnostics:
    """Measures at task boundaries and on a cadence; writes metrics, events and .npz spectra."""

    def __init__(self, flags: DiagnosticsFlags, logger: Any, seed: int):
        check_flags(flags)
        self.measures = set(flags.diagnostics) - {"none"}
        self.config = flags.diag
        self.logger = logger
        self.seed = seed
        self.directory = Path(logger.run_dir) / "diagnostics"
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self.initial: dict[str, list[Tensor]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.measures)

    def attach(
        self, nets: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer] | None = None
    ) -> None:
        """Remember the networks and their initial parameters (for the distance from init), and
        the optimizers that train them (the plasticity probe trains copies of them)."""
        self.nets = nets
        self.optimizers = list(optimizers or [])
        self.initial = {
            name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()
        }

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint is loaded onto the CPU; the initial weights go where the networks are.
        self.initial = {
            name: [
                saved.to(p.device)
                for saved, p in zip(tensors, self.nets[name].parameters(), strict=True)
            ]
            if name in self.nets
            else tensors
            for name, tensors in state["initial"].items()
        }

    def due(self, updates: int) -> bool:
        """Whether the periodic measurement is due after `updates` learner updates."""
        return self.enabled and self.config.every > 0 and updates % self.config.every == 0

    # --- the two hooks ------------------------------------------------------------------------

    def boundary(
        self,
        step: int,
        probes: dict[str, Probe],
        task_end: int | None = None,
        task_init: int | None = None,
    ) -> dict[str, float]:
        """Measure at a task boundary: probes keyed by phase ("end", "init"). Returns the
        scalars it logged (also written to the metrics file and W&B)."""
        if not self.enabled or not probes:
            return {}
        scalars: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {
            "step": np.int64(step),
            "task_end": np.int64(-1 if task_end is None else task_end),
            "task_init": np.int64(-1 if task_init is None else task_init),
            "epsilons": np.array(self.config.epsilons, dtype=np.float64),
        }
        with torch.random.fork_rng(devices=[]):
            for phase, probe in probes.items():
                start = time.perf_counter()
                self._measure(step, phase, probe, scalars, arrays, curvature_too=True)
                scalars[f"shift/{phase}/seconds"] = time.perf_counter() - start
                for key, value in probe.note.items():
                    scalars[f"shift/{phase}/{key}"] = value
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:010d}.npz"
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        self.logger.scalars(step, scalars)
        return scalars

    def periodic(self, step: int, probe: Probe) -> dict[str, float]:
        """The cheap measures (features, weights, gradient norms) on the learner's current data."""
        if not self.enabled:
            return {}
        scalars: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            start = time.perf_counter()
            self._measure(step, "periodic", probe, scalars, {}, curvature_too=False)
            scalars["diag/seconds"] = time.perf_counter() - start
        self.logger.scalars(step, scalars)
        return scalars

    def finish(self, step: int) -> None:
        """At the end of a run: draw its plots (with --diag.plot or when tracking) and send them,
        and the plasticity correlation table when there is one, to W&B when tracking."""
        tracking = getattr(self.logger, "wandb", None) is not None
        if not self.enabled or not (self.config.plot or tracking):
            return

        def draw() -> None:
            from diagnostics.plot import TABLE_NAME, plot_run  # matplotlib only when plotting

            paths = plot_run(Path(self.logger.run_dir))
            self.logger.images(step, {f"plots/{path.stem}": path for path in paths})
            table = Path(self.logger.run_dir) / "plots" / f"{TABLE_NAME}.csv"
            if table.exists():  # with probe results: the probe-vs-predictors correlations
                self.logger.table(step, f"plots/{TABLE_NAME}", table)

        self._guarded(step, "plots", draw)

    # --- the measurements ---------------------------------------------------------------------

    def _guarded(self, step: int, what: str, function: Callable[[], None]) -> None:
        """Run one measure; a failure is logged and skipped, never raised into training."""
        try:
            function()
        except Exception as error:  # noqa: BLE001 - any failure of a diagnostic is skippable
            self.logger.event(
                step, "diagnostic_skipped", measure=what, error=f"{type(error).__name__}: {error}"
            )

    def _measure(
        self,
        step: int,
        phase: str,
        probe: Probe,
        scalars: dict[str, float],
        arrays: dict[str, np.ndarray],
        curvature_too: bool,
    ) -> None:
        config = self.config
        prefix = "diag" if phase == "periodic" else f"shift/{phase}"
        size = min(config.batch_size, probe.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        closures: dict[str, curvature.LossClosure] = {}

        self._guarded(step, f"{phase}/closures", lambda: closures.update(probe.closures(size)))
        if not curvature_too or not config.joint:
            closures.pop("joint", None)

        if "features" in self.measures:

            def features() -> None:
                with torch.no_grad():
                    by_net = probe.features(size)
                for net, feats in by_net.items():
                    measured, spectra = representation.feature_measures(
                        feats,
                        srank_delta=config.srank_delta,
                        epsilons=config.epsilons,
                        dormant_tau=config.dormant_tau,
                    )
                    for key, value in measured.items():
                        scalars[f"{prefix}/{net}/features/{key}"] = value
                    if curvature_too:
                        for layer, sigma in enumerate(spectra):
                            arrays[f"{phase}/{net}/features/layer{layer}/singular_values"] = sigma

            self._guarded(step, f"{phase}/features", features)

        if "weights" in self.measures:

            def weights() -> None:
                for net, module in (probe.nets or self.nets).items():
                    params = list(module.parameters())
                    scalars[f"{prefix}/{net}/weight_norm"] = representation.weight_norm(params)
                    if net in self.initial:
                        scalars[f"{prefix}/{net}/distance_from_init"] = (
                            representation.distance_from_init(params, self.initial[net])
                        )
                for net, closure in closures.items():
                    leaves = closure.leaves()
                    loss = closure.loss_fn(closure.output_fn(leaves))
                    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
                    scalars[f"{prefix}/{net}/loss"] = float(loss.detach())
                    scalars[f"{prefix}/{net}/grad_norm"] = float(norm)

            self._guarded(step, f"{phase}/weights", weights)

        if "readiness" in self.measures:  # one forward and backward pass: periodic too
            for net, closure in closures.items():

                def readiness(net: str = net, closure: curvature.LossClosure = closure) -> None:
                    measured = plasticity.optimization_readiness(closure).scalars()
                    for key, value in measured.items():
                        scalars[f"{prefix}/{net}/readiness/{key}"] = value

                self._guarded(step, f"{phase}/{net}/readiness", readiness)

        if "probe" in self.measures and phase == "init" and curvature_too:
            for net, closure in closures.items():

                def probe_training(
                    net: str = net, closure: curvature.LossClosure = closure
                ) -> None:
                    optimizers = self.optimizers if probe.optimizers is None else probe.optimizers
                    result = plasticity.plasticity_probe(closure, optimizers, config.probe_steps)
                    arrays[f"{phase}/{net}/probe/losses"] = result.losses
                    for key, value in result.scalars().items():
                        scalars[f"{prefix}/{net}/probe/{key}"] = value

                self._guarded(step, f"{phase}/{net}/probe", probe_training)

        if not curvature_too:
            return
        for net, closure in closures.items():
            for kind in ("hessian", "ggn"):
                if kind in self.measures:
                    self._guarded(
                        step,
                        f"{phase}/{net}/{kind}",
                        lambda net=net, closure=closure, kind=kind: self._spectrum(
                            phase, net, kind, closure, generator, scalars, arrays
                        ),
                    )
            if net == "joint":
                continue  # KFAC and the Gram matrix per network only
            if "kfac" in self.measures:
                self._guarded(
                    step,
                    f"{phase}/{net}/kfac",
                    lambda net=net, closure=closure: self._kfac(
                        phase, net, closure, scalars, arrays
                    ),
                )
            if "gram" in self.measures:
                self._guarded(
                    step,
                    f"{phase}/{net}/gram",
                    lambda net=net: self._gram(
                        phase, net, probe, min(config.gram_batch, size), generator, scalars, arrays
                    ),
                )

    def _spectrum(
        self,
        phase: str,
        net: str,
        kind: str,
        closure: curvature.LossClosure,
        generator: torch.Generator,
        scalars: dict[str, float],
        arrays: dict[str, np.ndarray],
    ) -> None:
        config = self.config
        operator = curvature.OPERATORS[kind](closure)
        result = curvature.spectrum(
            operator, config.lanczos_order, config.probes, config.top_k, generator
        )
        if not np.all(np.isfinite(result.ritz_values[np.isfinite(result.ritz_weights)])):
            raise FloatingPointError("non-finite Ritz values (the loss or its curvature is NaN)")
        key = f"{phase}/{net}/{kind}"
        grid, density = result.density(config.grid_points)
        # The paper's own density (its grid and smoothing), for its epsilon-rank convention.
        paper_grid, paper_density = curvature.paper_density(
            result.ritz_values, result.ritz_weights, config.grid_points
        )
        arrays.update(
            {
                f"{key}/ritz_values": result.ritz_values,
                f"{key}/ritz_weights": result.ritz_weights,
                f"{key}/top": result.top,
                f"{key}/bottom": result.bottom,
                # What re-integrating the spectrum later needs: our density on its grid with
                # its Gaussian width, and the span and width of the paper's grid and kernels.
                f"{key}/grid": grid,
                f"{key}/density": density,
                f"{key}/sigma": np.float64(result.sigma),
                f"{key}/paper_grid_span": np.array([paper_grid[0], paper_grid[-1]]),
                f"{key}/paper_sigma": np.float64(
                    math.sqrt(1e-5 * max(1.0, paper_grid[-1] - paper_grid[0]))
                ),
            }
        )
        prefix = f"shift/{key}"
        scalars[f"{prefix}/lambda_max"] = float(result.top[0])
        scalars[f"{prefix}/lambda_min"] = float(result.bottom[0])
        scalars[f"{prefix}/top_residual"] = result.top_residual
        scalars[f"{prefix}/trace"] = result.trace
        if config.probes > 1:
            scalars[f"{prefix}/trace_stderr"] = result.trace_stderr
        scalars[f"{prefix}/erank"] = result.effective_rank()
        for epsilon in config.epsilons:
            scalars[f"{prefix}/eps_rank@{epsilon:g}"] = result.epsilon_rank(epsilon)
            scalars[f"{prefix}/paper_eps_rank@{epsilon:g}"] = curvature.paper_epsilon_rank(
                paper_grid, paper_density, epsilon
            )

    def _kfac(
        self,
        phase: str,
        net: str,
        closure: curvature.LossClosure,
        scalars: dict[str, float],
        arrays: dict[str, np.ndarray],
    ) -> None:
        factors = curvature.kfac_factors(curvature.output_curvature(closure))
        for layer, (A, G) in enumerate(factors.values()):
            for name, factor in (("A", A), ("G", G)):
                values = torch.linalg.eigvalsh(factor.double()).flip(0).cpu().numpy()
                arrays[f"{phase}/{net}/kfac/layer{layer}/{name}"] = values
                prefix = f"shift/{phase}/{net}/kfac/layer{layer}/{name}"
                scalars[f"{prefix}_lambda_max"] = float(values[0])
                scalars[f"{prefix}_erank"] = _erank_of_eigenvalues(values)
        arrays[f"{phase}/{net}/kfac/names"] = np.array(list(factors))

    def _gram(
        self,
        phase: str,
        net: str,
        probe: Probe,
        size: int,
        generator: torch.Generator,
        scalars: dict[str, float],
        arrays: dict[str, np.ndarray],
    ) -> None:
        closure = probe.closures(size)[net]
        values = curvature.loss_weighted_gram_eigenvalues(
            curvature.output_curvature(closure, with_gram=True)
        )
        values = values.double().cpu().numpy()
        arrays[f"{phase}/{net}/gram/eigenvalues"] = values
        prefix = f"shift/{phase}/{net}/gram"
        for epsilon in self.config.epsilons:
            scalars[f"{prefix}/eps_rank@{epsilon:g}"] = int((np.abs(values) > epsilon).sum())
        # The equivalence check: the GGN on the same small batch has the same nonzero
        # eigenvalues; compare the largest few (Lanczos run to convergence).
        operator = curvature.GGNOperator(closure)
        k = int(min(5, (np.abs(values) > 1e-8 * max(np.abs(values).max(), 1e-30)).sum()))
        if k == 0:
            return
        start = curvature.rademacher(operator.dim, generator, operator.dtype, operator.device)
        top, _, _ = curvature.extreme_eigenvalues(
            operator.matvec, start, k, tol=1e-5, max_order=150
        )
        # Lanczos may stop early (its Krylov space exhausted on a low-rank GGN): compare what
        # it found, which is then exact.
        k = min(k, len(top))
        gap = np.abs(top[:k] - values[:k]) / np.abs(values[:k]).max()
        scalars[f"{prefix}/ggn_gap"] = float(gap.max())


def _erank_of_eigenvalues(values: np.ndarray) -> float:
    """Roy & Vetterli's effective rank of a PSD factor's eigenvalues (negatives from round-off
    are dropped)."""
    positive = values[values > 0]
    if positive.size == 0:
        return 0.0
    p = positive / positive.sum()
    return float(np.exp(-(p * np.log(p)).sum()))
