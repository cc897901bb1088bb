"""Plots of one run directory: what the diagnostics measured at each task boundary, as PNG files.

    python -m diagnostics.plot runs/HalfCheetah-v5__ppo__l2-er__1__1795512888 [--out DIR] [--dpi 120]

Reads what the trainer wrote into the run directory (metrics.jsonl, events.jsonl and
diagnostics/step_*.npz) and writes these figures, skipping any whose data is absent:

    spectra_{net}_{kind}.png  Hessian/GGN spectral density at every boundary, init and end side by
                              side, and each task's init against the first task's (log ratio)
    tail_mass_{net}_{kind}.png  the spectrum's mass beyond |lambda| > t against t (the epsilon-rank
                              at every epsilon), one curve per boundary: a collapse moves it down
    eps_rank.png              Hessian/GGN epsilon-rank at the init and end of each task, a log panel
                              per network and epsilon, under the return (exact convention)
    eps_rank_paper.png        the same in the paper's convention (see diagnostics/curvature.py)
    features_over_tasks.png   feature effective rank and dead-unit share per layer over tasks
    kfac_{net}.png            eigenvalues of each layer's KFAC factors A and G at every boundary
    features_{net}.png        singular values of each layer's features, and the Gram eigenvalues
    periodic.png              the diag/ measures logged every N updates, a panel per measure
    plasticity_correlations.{csv,md}
                              with the plasticity probe on: how well each measure taken at a
                              boundary predicts the probe's loss drop there (Spearman, Pearson)

The default output folder is RUN_DIR/plots; `plot_run` is what the trainer calls at run end.
Figures are built with matplotlib's object API (Figure.savefig renders PNGs with Agg), so no GUI
backend is ever picked and no pyplot state is left behind in the trainer's process.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.scale import SymmetricalLogTransform
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from diagnostics.curvature import (
    epsilon_rank,
    paper_density,
    paper_epsilon_rank,
    smoothed_density,
)
from diagnostics.plasticity import pearson, spearman
from run_directory import read_run_files

PERFORMANCE_KEYS = ("charts/episodic_return", "charts/online_accuracy")
PHASES = ("init", "end")
RITZ_KEY = re.compile(r"^(init|end)/([^/]+)/(hessian|ggn)/ritz_values$")
SHIFT_LINE = {"color": "0.5", "linestyle": ":", "linewidth": 0.9}
MAX_SHIFT_LINES = 20
# The density colour scale spans this many decades below its peak: an outlier eigenvalue's Ritz
# weight is about 1/(number of parameters), tiny next to the spike at 0 but worth seeing.
DENSITY_DECADES = 6


class RunDirError(Exception):
    """The run directory is missing or holds nothing to plot."""


@dataclass
class Run:
    name: str
    metrics: list[dict]
    metric_keys: set[str]
    shift_steps: list[int]
    boundaries: list[dict[str, np.ndarray]]
    """One dict per diagnostics/step_*.npz, in step order."""
    step_unit: str = "env step"
    """What a step counts: env steps (RL) or examples seen (the supervised stream)."""

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; strings such as "nan" become floats."""
        rows = [row for row in self.metrics if key in row]
        steps = np.array([row["step"] for row in rows], dtype=np.int64)
        return steps, np.array([as_float(row[key]) for row in rows], dtype=np.float64)


def as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_run(run_dir: Path) -> Run:
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}")
    files = read_run_files(run_dir)
    return Run(
        name=run_dir.resolve().name,
        metrics=files.metrics,
        metric_keys={key for row in files.metrics for key in row},
        shift_steps=files.shift_steps,
        boundaries=list(files.boundaries()),
        step_unit="example" if files.is_supervised else "env step",
    )


def boundary_label(boundary: dict[str, np.ndarray], phase: str) -> str:
    task = int(boundary.get(f"task_{phase}", -1))
    return f"{int(boundary['step']):,}" + (f"  task {task}" if task >= 0 else "")


def natural_order(text: str) -> list:
    """Sort key that puts layer10 after layer2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def step_axis(ax, run: Run) -> None:
    """An env-step x axis (200k, 1M) with the task shifts as dotted vertical lines (with more
    than MAX_SHIFT_LINES shifts, lines would hide the data: then none)."""
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if len(run.shift_steps) <= MAX_SHIFT_LINES:
        for step in run.shift_steps:
            ax.axvline(step, **SHIFT_LINE)


# --- 1. spectral density at every boundary ------------------------------------------------------


def symlog_ticks(extent: np.ndarray, linthresh: float) -> list[float]:
    """0 and the powers of ten within the extent and beyond the linear region (matplotlib's
    default also ticks decades inside the linear region, whose labels crowd into 0's)."""
    ticks = [0.0]
    for sign in (-1.0, 1.0):
        reach = float(np.max(sign * extent, initial=0.0))
        if reach >= linthresh:
            powers = range(math.ceil(math.log10(linthresh)), math.floor(math.log10(reach)) + 1)
            ticks += [sign * 10.0**power for power in powers]
    return sorted(ticks)


def plot_spectra(run: Run, net: str, kind: str) -> Figure | None:
    """Heat map per phase: eigenvalue on a symlog axis (x), boundary (y), log density (colour).

    A linear axis cannot show both the spike at 0 and outliers at 1e3. So the Ritz values are
    mapped through the axis's own symlog transform, smoothed there with sigma = 1% of the common
    range, and the density is per unit of what the eye sees. The transform's linear region is
    1e-3 of the largest |eigenvalue|, which keeps [-0.6, 88] and [-91, 1178] equally readable.
    """
    rows = {  # phase -> [(boundary, ritz values, ritz weights)]
        phase: [
            (b, b[f"{phase}/{net}/{kind}/ritz_values"], b[f"{phase}/{net}/{kind}/ritz_weights"])
            for b in run.boundaries
            if f"{phase}/{net}/{kind}/ritz_values" in b
        ]
        for phase in PHASES
    }
    finite = np.concatenate([v[np.isfinite(v)] for phase in PHASES for _, v, _ in rows[phase]])
    if not finite.size:
        return None
    linthresh = 1e-3 * (float(np.abs(finite).max()) or 1.0)
    transform = SymmetricalLogTransform(base=10, linthresh=linthresh, linscale=1.0)

    def to_axis(values: np.ndarray) -> np.ndarray:
        return transform.transform_non_affine(values.ravel()).reshape(values.shape)

    low, high = to_axis(finite).min(), to_axis(finite).max()
    pad = 0.05 * (high - low) or linthresh
    edges = np.linspace(low - pad, high + pad, 801)
    centres, sigma = 0.5 * (edges[1:] + edges[:-1]), 0.01 * (edges[-1] - edges[0])
    extent = transform.inverted().transform_non_affine(edges)
    densities = {
        phase: np.array(
            [smoothed_density(to_axis(v), w, centres, sigma) for _, v, w in rows[phase]]
        )
        for phase in PHASES
    }
    peak = max((d.max() for d in densities.values() if d.size), default=0.0) or 1.0
    norm = LogNorm(vmin=peak * 10.0**-DENSITY_DECADES, vmax=peak)

    phases = [phase for phase in PHASES if rows[phase]]
    height = max(3.2, 1.6 + 0.28 * max(len(rows[phase]) for phase in phases))
    relative = len(rows["init"]) > 1  # a third panel: each init against the run's first
    fig = Figure(figsize=(12 + 5 * relative, height), layout="constrained")
    axes = fig.subplots(1, len(phases) + relative, squeeze=False)[0]
    for ax, phase in zip(axes, phases, strict=False):
        mesh = ax.pcolormesh(
            extent,
            np.arange(len(rows[phase]) + 1),
            np.maximum(densities[phase], norm.vmin),
            norm=norm,
            cmap="magma",
        )
        ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
        ax.xaxis.set_major_locator(FixedLocator(symlog_ticks(extent, linthresh)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_yticks(
            np.arange(len(rows[phase])) + 0.5,
            [boundary_label(boundary, phase) for boundary, _, _ in rows[phase]],
            fontsize=8,
        )
        ax.invert_yaxis()  # time runs downwards, like a waterfall
        ax.set_xlabel("eigenvalue (symlog)")
        ax.set_title("init: start of a task" if phase == "init" else "end: end of a task", size=10)
    axes[0].set_ylabel(f"boundary: {run.step_unit}, task")
    fig.colorbar(mesh, ax=axes[: len(phases)].tolist(), label="density (log)")
    if relative:
        # Where a task starts with less curvature than the run's first task did (blue) or more
        # (red): a collapse toward 0 shows as blue away from 0, wherever the eye cannot tell a
        # factor of 3 on a six-decade colour scale.
        # Smoothed 4x wider than the heat maps: single Ritz values that move a little between
        # tasks would otherwise paint stripes; the shift of mass is what is of interest here.
        ax = axes[-1]
        smooth = np.array(
            [smoothed_density(to_axis(v), w, centres, 4 * sigma) for _, v, w in rows["init"]]
        )
        floor = smooth.max() * 10.0**-DENSITY_DECADES
        ratio = np.log10(np.maximum(smooth, floor) / np.maximum(smooth[0], floor))
        change = ax.pcolormesh(
            extent, np.arange(len(rows["init"]) + 1), ratio, cmap="RdBu_r", vmin=-1.5, vmax=1.5
        )
        ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
        ax.xaxis.set_major_locator(FixedLocator(symlog_ticks(extent, linthresh)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_yticks(
            np.arange(len(rows["init"])) + 0.5,
            [boundary_label(boundary, "init") for boundary, _, _ in rows["init"]],
            fontsize=8,
        )
        ax.invert_yaxis()
        ax.set_xlabel("eigenvalue (symlog)")
        ax.set_title("init against the first task's init", size=10)
        fig.colorbar(change, ax=ax, label="log10 density ratio (blue: less)")
    fig.suptitle(f"{net} {kind} spectral density (SLQ)   {run.name}")
    return fig


def plot_tail_mass(run: Run, net: str, kind: str) -> Figure | None:
    """The epsilon-rank as a function of epsilon: per boundary, the spectral mass beyond |lambda|
    > t against t, both on log axes, coloured by the boundary's step (init and end side by
    side). A collapse of the spectrum toward 0 moves a task's curve down: later tasks' curves
    lie below the first ones' where plasticity is lost, and on them where it is kept."""
    thresholds = np.logspace(-3, 1.5, 120)
    rows = {
        phase: [
            (int(b["step"]), b[f"{phase}/{net}/{kind}/ritz_values"],
             b[f"{phase}/{net}/{kind}/ritz_weights"])
            for b in run.boundaries if f"{phase}/{net}/{kind}/ritz_values" in b
        ]
        for phase in PHASES
    }  # fmt: skip
    phases = [phase for phase in PHASES if rows[phase]]
    if not phases:
        return None
    steps = [step for phase in phases for step, _, _ in rows[phase]]
    norm, cmap = Normalize(min(steps), max(max(steps), min(steps) + 1)), colormaps["viridis"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(phases), squeeze=False, sharey=True)[0]
    epsilons = run.boundaries[0].get("epsilons", np.array([0.1]))
    for ax, phase in zip(axes, phases, strict=True):
        for step, values, weights in rows[phase]:
            mass = np.array([epsilon_rank(values, weights, t) for t in thresholds])
            positive = mass > 0
            ax.plot(thresholds[positive], mass[positive], color=cmap(norm(step)), linewidth=1.3)
        for eps in epsilons:
            ax.axvline(float(eps), color="0.6", linestyle=":", linewidth=0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)  # below ~1/parameters the mass is single Ritz values' noise
        ax.set_xlabel("threshold t (dotted: the run's epsilons)")
        ax.set_title("init: start of a task" if phase == "init" else "end: end of a task", size=10)
    axes[0].set_ylabel("mass of the spectrum beyond |lambda| > t")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes.tolist(), label=f"boundary ({run.step_unit})")
    fig.suptitle(f"{net} {kind}: epsilon-rank at every epsilon (exact convention)   {run.name}")
    return fig


# --- 2. epsilon-rank beside return --------------------------------------------------------------

CONVENTIONS = {
    # metric prefix -> what the figure says it shows
    "eps_rank": "exact convention: the density's mass outside [-eps, eps]",
    "paper_eps_rank": "paper's convention: its grid trapezoid (lop-jax), bridging [-eps, eps]",
}


def performance_panel(ax, run: Run, performance: str) -> None:
    """The run's performance metric with a moving mean, on a step axis."""
    steps, values = run.series(performance)
    window = max(1, len(values) // 20)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    ax.plot(steps, values, color="C0", alpha=0.25, linewidth=0.8)
    ax.plot(steps[window - 1 :], smooth, color="C0", linewidth=1.6)
    ax.set_ylabel(performance.split("/")[-1].replace("_", " "))
    smoothing = f", moving mean of {window}" if window > 1 else ""
    ax.set_title(performance + smoothing, size=10)
    step_axis(ax, run)


def boundary_eps_ranks(run: Run, convention: str) -> dict[str, dict[tuple, list]]:
    """net -> (phase, kind, eps) -> [(step, rank)], integrated from each boundary's saved Ritz
    values and weights (so a run measured before a convention existed has it too)."""
    ranks: dict[str, dict[tuple, list]] = {}
    for boundary in run.boundaries:
        epsilons = boundary.get("epsilons", np.array([0.1]))
        for key in boundary:
            if not (match := RITZ_KEY.match(key)):
                continue
            phase, net, kind = match.groups()
            values, weights = boundary[key], boundary[f"{phase}/{net}/{kind}/ritz_weights"]
            if convention == "paper_eps_rank":
                grid, density = paper_density(values, weights)
            for eps in epsilons:
                rank = (
                    paper_epsilon_rank(grid, density, float(eps))
                    if convention == "paper_eps_rank"
                    else epsilon_rank(values, weights, float(eps))
                )
                line = ranks.setdefault(net, {}).setdefault((phase, kind, float(eps)), [])
                line.append((int(boundary["step"]), rank))
    return ranks


EPS_RANK_COLLAPSED = 1e-5  # a share of the spectrum: below it (0.001 %) a spectrum is collapsed


def eps_rank_scale(ax, lowest: float, collapsed: float = EPS_RANK_COLLAPSED) -> None:
    """A log y-axis for epsilon-ranks (they span decades, and a collapse is a fall by a
    factor). Where the panel holds a collapsed rank (below `collapsed`; a rank of 0 included)
    the axis is linear below `collapsed` and starts at 0, so that the collapse is drawn, not
    dropped as a log axis would drop it."""
    if lowest < collapsed:
        ax.set_yscale("symlog", linthresh=collapsed, linscale=0.5)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")


def plot_eps_rank(run: Run, convention: str = "eps_rank") -> Figure | None:
    """A panel per network and epsilon, each on a log axis (the ranks at 0.02 and at 0.1 differ
    by a decade or more, and a collapse is a fall by a factor; see `eps_rank_scale` for a rank
    of 0): the rank at the init of each task (filled, solid) and at its end (open, dashed),
    Hessian and GGN; the run's performance above them."""
    ranks = boundary_eps_ranks(run, convention)
    if not ranks:
        return None
    epsilons = sorted({eps for by_line in ranks.values() for _, _, eps in by_line})
    performance = next((key for key in PERFORMANCE_KEYS if key in run.metric_keys), None)
    nets = sorted(ranks)
    rows = len(nets) + (performance is not None)
    fig = Figure(figsize=(3.4 * len(epsilons) + 1.2, 1.4 + 2.5 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, len(epsilons))
    if performance is not None:
        performance_panel(fig.add_subplot(grid[0, :]), run, performance)
    axes = np.array(
        [[fig.add_subplot(grid[rows - len(nets) + i, j]) for j in range(len(epsilons))]
         for i in range(len(nets))]
    )  # fmt: skip
    colours = {("init", "hessian"): "C1", ("end", "hessian"): "C3", ("init", "ggn"): "C2",
               ("end", "ggn"): "C4"}  # fmt: skip
    for i, net in enumerate(nets):
        for j, eps in enumerate(epsilons):
            ax = axes[i, j]
            lowest = np.inf
            for (phase, kind, line_eps), points in sorted(ranks[net].items()):
                if line_eps != eps:
                    continue
                steps, values = np.array(sorted(points)).T
                lowest = min(lowest, float(values.min()))
                ax.plot(
                    steps,
                    values,
                    color=colours[phase, kind],
                    linestyle="-" if phase == "init" else "--",
                    marker="o" if phase == "init" else "s",
                    markersize=3.5 if phase == "init" else 5,
                    markerfacecolor=None if phase == "init" else "none",
                    linewidth=1.4,
                    label=f"{phase} {kind}",
                )
            eps_rank_scale(ax, lowest)
            step_axis(ax, run)
            ax.set_title(f"{net}, eps = {eps:g}", size=10)
            if j == 0:
                ax.set_ylabel("eps-rank (log)")
            if i == len(nets) - 1:
                ax.set_xlabel(run.step_unit)
        axes[i, 0].legend(fontsize=7, handlelength=3)
    fig.suptitle(
        f"Hessian epsilon-rank at task boundaries ({CONVENTIONS[convention]})\n{run.name}",
        size=10,
    )
    return fig


def plot_features_over_tasks(run: Run) -> Figure | None:
    """Per network: the effective rank of each hidden layer's features and its share of dead
    units (never active on the batch), at the init (solid) and end (dashed) of every task."""
    pattern = re.compile(r"^shift/(init|end)/([^/]+)/features/layer(\d+)/(erank|dead)$")
    series: dict[str, dict[tuple[str, int, str], str]] = {}  # net -> (phase, layer, measure)
    for key in run.metric_keys:
        if match := pattern.match(key):
            phase, net, layer, measure = match.groups()
            series.setdefault(net, {})[(phase, int(layer), measure)] = key
    if not series:
        return None
    nets = sorted(series)
    fig = Figure(figsize=(11, 1.2 + 2.6 * len(nets)), layout="constrained")
    axes = fig.subplots(len(nets), 2, squeeze=False)
    titles = {"erank": "feature effective rank", "dead": "dead units (share of the layer)"}
    for i, net in enumerate(nets):
        for j, measure in enumerate(("erank", "dead")):
            ax = axes[i, j]
            for (phase, layer, line_measure), key in sorted(series[net].items()):
                if line_measure != measure:
                    continue
                ax.plot(
                    *run.series(key),
                    color=f"C{layer}",
                    linestyle="-" if phase == "init" else "--",
                    marker="o" if phase == "init" else None,
                    markersize=3,
                    linewidth=1.3,
                    label=f"layer {layer} {phase}",
                )
            step_axis(ax, run)
            ax.set_title(f"{net}: {titles[measure]}", size=10)
            ax.set_xlabel(run.step_unit)
            if measure == "dead":
                ax.set_ylim(bottom=0)
        axes[i, 0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"hidden features at task boundaries   {run.name}", size=10)
    return fig


# --- 3. KFAC factor and feature spectra ---------------------------------------------------------


def plot_sorted_spectra(
    run: Run, net: str, what: str, suffix_pattern: str, columns: int
) -> Figure | None:
    """A panel per array named {phase}/{net}/{suffix}: its values sorted, log y, one line per
    boundary and phase (init solid, end dashed), coloured by the boundary's step."""
    pattern = re.compile(rf"^(init|end)/{re.escape(net)}/({suffix_pattern})$")
    suffixes = {m.group(2) for b in run.boundaries for key in b if (m := pattern.match(key))}
    if not suffixes:
        return None
    suffixes = sorted(suffixes, key=natural_order)
    steps = [int(b["step"]) for b in run.boundaries]
    norm, cmap = Normalize(min(steps), max(max(steps), min(steps) + 1)), colormaps["viridis"]
    rows = math.ceil(len(suffixes) / columns)
    fig = Figure(
        figsize=(3.6 * min(columns, len(suffixes)) + 1.2, 1.0 + 2.6 * rows), layout="constrained"
    )
    axes = fig.subplots(rows, min(columns, len(suffixes)), squeeze=False).ravel()
    for ax, suffix in zip(axes[: len(suffixes)], suffixes, strict=True):
        for boundary in run.boundaries:
            for phase, style in zip(PHASES, ("-", "--"), strict=True):
                values = boundary.get(f"{phase}/{net}/{suffix}")
                if values is None:
                    continue
                values = np.sort(values[np.isfinite(values)])[::-1]
                values = values[values > 0]  # a log axis cannot show zeros
                color = cmap(norm(int(boundary["step"])))
                ax.plot(np.arange(1, values.size + 1), values, style, color=color, linewidth=1.0)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(suffix, size=10)
        ax.set_xlabel("index")
    for ax in axes[len(suffixes) :]:
        ax.set_visible(False)
    styles = [Line2D([], [], color="0.3", linestyle=s) for s in ("-", "--")]
    axes[0].legend(styles, PHASES, fontsize=8)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes.tolist(), label="boundary step")
    fig.suptitle(f"{net} {what}   {run.name}")
    return fig


# --- 4. periodic measures -----------------------------------------------------------------------


def plot_periodic(run: Run) -> Figure | None:
    measures: dict[str, dict[str, str]] = {}  # measure -> net -> key
    for key in run.metric_keys:
        if key.startswith("diag/") and key.count("/") >= 2:
            _, net, measure = key.split("/", 2)
            measures.setdefault(measure, {})[net] = key
    if not measures:
        return None
    columns = min(3, len(measures))
    rows = math.ceil(len(measures) / columns)
    fig = Figure(figsize=(4.2 * columns, 1.0 + 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, measure in zip(axes[: len(measures)], sorted(measures, key=natural_order), strict=True):
        for net, key in sorted(measures[measure].items()):
            ax.plot(*run.series(key), label=net, linewidth=1.2)
        step_axis(ax, run)
        ax.set_title(measure, size=10)
        ax.set_xlabel(run.step_unit)
        ax.legend(fontsize=8)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    fig.suptitle(f"periodic diagnostics   {run.name}")
    return fig


# --- 5. what predicts the plasticity probe -----------------------------------------------------

PROBE_DROP_KEY = re.compile(r"^shift/init/([^/]+)/probe/drop$")
# The candidate predictors, after shift/{phase}/{net}/: measured at the same boundary as the
# probe (init: the new task's data before any update; end: the old task's last data).
PREDICTOR_KEY = re.compile(
    r"^shift/(init|end)/([^/]+)/("
    r"(?:hessian|ggn|gram)/eps_rank@[^/]+|features/(?:erank|dormant)|features/layer\d+/srank"
    r"|weight_norm|readiness/(?:score|strength|reliability)|probe/loss_before)$"
)
PROBE_TARGETS = ("drop", "relative_drop")
TABLE_NAME = "plasticity_correlations"


def correlation_table(metrics: list[dict]) -> list[dict]:
    """Per network with plasticity-probe results, one row per candidate predictor: the number
    of boundaries where both were measured and the Spearman and Pearson correlations, across
    those boundaries, of the predictor with the probe's loss drop and relative drop. Rows of
    a network are sorted by |Spearman| with the drop, strongest first (NaN: too few points or
    a constant predictor). The probe's own loss before training is a candidate too: a
    predictor worth having should beat it."""
    by_step: dict[int, dict] = {}
    for row in metrics:
        by_step.setdefault(int(row["step"]), {}).update(row)  # a later value at a step wins
    table = []
    nets = sorted(
        {m.group(1) for row in by_step.values() for k in row if (m := PROBE_DROP_KEY.match(k))}
    )
    for net in nets:
        probed = [
            row for _, row in sorted(by_step.items()) if f"shift/init/{net}/probe/drop" in row
        ]
        predictors = {
            (m.group(1), m.group(3)): key
            for row in probed
            for key in row
            if (m := PREDICTOR_KEY.match(key)) and m.group(2) == net
        }
        rows = []
        for (phase, measure), key in predictors.items():
            entry: dict = {"net": net, "predictor": f"{phase}/{measure}"}
            for target in PROBE_TARGETS:
                target_key = f"shift/init/{net}/probe/{target}"
                pairs = np.array(
                    [(as_float(row[key]), as_float(row.get(target_key))) for row in probed
                     if key in row],
                    dtype=np.float64,
                ).reshape(-1, 2)  # fmt: skip
                pairs = pairs[np.isfinite(pairs).all(1)]
                if target == "drop":
                    entry["n"] = len(pairs)
                entry[f"spearman_{target}"] = spearman(pairs[:, 0], pairs[:, 1])
                entry[f"pearson_{target}"] = pearson(pairs[:, 0], pairs[:, 1])
            rows.append(entry)
        table += sorted(rows, key=strongest_first)
    return table


def strongest_first(entry: dict) -> tuple:
    """Sort key: largest |Spearman| with the drop first, undefined ones last, then by name."""
    rho = entry["spearman_drop"]
    return (-abs(rho) if math.isfinite(rho) else math.inf, natural_order(entry["predictor"]))


def format_table(table: list[dict]) -> str:
    """The correlation table as markdown."""
    columns = ["net", "predictor", "n"] + [
        f"{c}_{t}" for t in PROBE_TARGETS for c in ("spearman", "pearson")
    ]
    headers = ["net", "predictor", "n", "Spearman drop", "Pearson drop"]
    headers += ["Spearman rel. drop", "Pearson rel. drop"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for entry in table:
        cells = [
            entry[c] if isinstance(entry[c], str | int) else f"{entry[c]:+.3f}" for c in columns
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_correlation_table(metrics: list[dict], out_dir: Path) -> Path | None:
    """Write plasticity_correlations.csv and .md into out_dir when the run has probe results;
    return the markdown file's path (None without probe results)."""
    table = correlation_table(metrics)
    if not table:
        return None
    columns = list(table[0])
    csv = [",".join(columns)] + [",".join(f"{entry[c]}" for c in columns) for entry in table]
    (out_dir / f"{TABLE_NAME}.csv").write_text("\n".join(csv) + "\n")
    path = out_dir / f"{TABLE_NAME}.md"
    path.write_text(format_table(table))
    return path


# --- the run --------------------------------------------------------------------------------------


def drop_unlabelled_minor_ticks(fig: Figure) -> None:
    """No minor ticks on a symlog axis, nor on a log axis with three or more labelled decades:
    there matplotlib labels none of them (LogFormatter labels minor ticks only where at most
    one whole decade is in view), yet builds and lays out a Tick artist for each (up to 8 a
    decade) at every draw, which was ~45 % of a run's plotting time (measured on a PPO run's 15
    figures). A log axis with fewer decades keeps them: they carry its labels."""
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted(limits)
            scale = axis.get_scale()
            whole_decades = (
                math.floor(math.log10(high)) - math.ceil(math.log10(low)) if low > 0 else 0
            )
            if scale == "symlog" or (scale == "log" and whole_decades > 1):
                axis.set_minor_locator(NullLocator())


def plot_run(run_dir: Path, out_dir: Path | None = None, dpi: int = 120) -> list[Path]:
    """Write every figure the run's data allows into out_dir (default RUN_DIR/plots).

    Returns the PNG paths written (with probe results, plasticity_correlations.csv and .md are
    written beside them). Raises RunDirError when the directory is missing or the run logged no
    diagnostics at all.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not run.boundaries and not any(k.startswith(("shift/", "diag/")) for k in run.metric_keys):
        raise RunDirError(
            f"{run_dir} has no diagnostics (no diagnostics/step_*.npz, no shift/ or diag/ "
            "metrics); was it trained with diagnostics switched on?"
        )
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)

    figures: dict[str, Figure | None] = {}
    for net, kind in sorted(
        {m.group(2, 3) for b in run.boundaries for key in b if (m := RITZ_KEY.match(key))}
    ):
        figures[f"spectra_{net}_{kind}"] = plot_spectra(run, net, kind)
        figures[f"tail_mass_{net}_{kind}"] = plot_tail_mass(run, net, kind)
    figures["eps_rank"] = plot_eps_rank(run, "eps_rank")
    figures["eps_rank_paper"] = plot_eps_rank(run, "paper_eps_rank")
    figures["features_over_tasks"] = plot_features_over_tasks(run)
    nets = sorted(
        {key.split("/")[1] for b in run.boundaries for key in b if key.startswith(PHASES)}
    )
    for net in nets:
        figures[f"kfac_{net}"] = plot_sorted_spectra(
            run, net, "KFAC factor eigenvalues", r"kfac/layer\d+/[AG]", columns=2
        )
        features = r"features/layer\d+/singular_values|gram/eigenvalues"
        figures[f"features_{net}"] = plot_sorted_spectra(
            run, net, "feature spectra", features, columns=4
        )
    figures["periodic"] = plot_periodic(run)

    written = []
    for name, fig in figures.items():
        if fig is not None:
            drop_unlabelled_minor_ticks(fig)
            written.append(out_dir / f"{name}.png")
            fig.savefig(written[-1], dpi=dpi)
    write_correlation_table(run.metrics, out_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        "python -m diagnostics.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, help="a run directory under runs/")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/plots)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution of the PNG files")
    args = parser.parse_args(argv)
    try:
        written = plot_run(args.run_dir, args.out, dpi=args.dpi)
    except RunDirError as error:
        raise SystemExit(f"error: {error}") from None
    for path in written:
        print(path)
    out_dir = args.out if args.out is not None else args.run_dir / "plots"
    table = correlation_table(load_run(args.run_dir).metrics)
    if table:  # written by plot_run; shown here too
        print(out_dir / f"{TABLE_NAME}.md")
        print(out_dir / f"{TABLE_NAME}.csv")
        print(format_table(table), end="")


if __name__ == "__main__":
    main()
