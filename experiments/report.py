"""One report across runs: does a method keep plasticity here?

    python train.py report sweeps/permuted-mnist-small-cpu          # a sweep directory
    python train.py report runs/run_a runs/run_b runs/               # run directories (or folders of them)
    python train.py report SWEEP_DIR --out DIR

Reads run directories only (config.json, metrics.jsonl, events.jsonl, diagnostics/step_*.npz;
never W&B), so it can be rerun while a sweep is still going: a run counts for the tasks it has
finished. It writes REPORT_DIR (default SWEEP_DIR/report, or ./report) with report.md,
report.json (every number in it) and these figures:

    learning_curves.png  RL: each method's return per PPO iteration over env steps, the task
                         boundaries drawn
    performance.png      the per-task metric per method (supervised: online accuracy per task;
                         RL: mean return per task phase, the mean of its learning curve over 10
                         equal spans of steps, and return over env steps), the mean over
                         seeds with its 95 % bootstrap band
    eps_rank.png         Hessian epsilon-rank at the init and end of each task per method, a log
                         panel per network and epsilon, in the exact convention (the figure says so);
                         past four methods a panel per network and method at the smallest epsilon
    eps_rank_paper.png   the same in the paper's convention (diagnostics/curvature.py)
    features.png         feature effective rank and dead units over tasks per method
    metric_vs_eps_rank.png  the per-task metric against the epsilon-rank at that task's init, over
                         every (method, seed, task) point, with the pooled least-squares line

A method is a group of runs whose configs differ only in the seed and in flags that do not
change what is learned (where runs go, W&B, checkpoints, threads); it is named by its
--regularizer ("bp" for none) plus any setting that tells two such groups apart. So the report
over runs started by hand is the report over the same runs made by a sweep.

The statistics (each tested against hand-computed answers in tests/test_report.py):
- bands and CIs: 95 % percentile bootstrap over runs; with few runs (n^n resamples at most
  20,000, i.e. up to 5 seeds) every resample is enumerated, so the interval is exact, else
  2,000 seeded draws;
- IQM: the interquartile mean (25 % trimmed each side, as scipy's trim_mean and rliable) of the
  runs x last-tasks scores, with a stratified bootstrap CI (runs resampled within each task);
- beats RESET (the paper's criterion for "maintains plasticity"): the bootstrap CI of the
  difference of last-task means (method - reset) lies above 0 (yes), below 0 (no), or spans it
  (tie); shown only when RESET runs are among the runs;
- RL, the return averaged over the whole run (C-CHAIN's average performance): per run the mean
  of its PPO iterations' returns; mean ± standard error over runs and the bootstrap CI, beside
  the numbers a named sweep's [published] table gives (difference within twice the standard
  error of the difference, or not);
- cost: a finished run's wall time from its events (run_directory.RunFiles.wall_seconds), the
  median per method, and process-hours, a run sharing a --seeds process counting a K-th; the
  same share of its processes' CPU time (RunFiles.cpu_seconds), per run (median) and as
  CPU-hours, which waiting for a shared core or a SIGSTOP does not inflate (over the runs
  whose records have CPU times, saying how many);
- R^2: the squared Pearson correlation of the per-task metric with the epsilon-rank at that
  task's init, pooled and per method, for each epsilon; task 0 (the fresh initialisation,
  the same for every method) is left out, as in the paper's epsilon-rank analysis. Within
  task: the same after each task's mean of both is subtracted (the runs compared only with
  other runs at the same task), so a trend all runs share over time does not count.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, MaxNLocator

from diagnostics.curvature import epsilon_rank, paper_density, paper_epsilon_rank
from diagnostics.plasticity import pearson, spearman
from diagnostics.plot import EPS_RANK_COLLAPSED, RITZ_KEY, eps_rank_scale
from run_directory import read_run_files
from validation import ConfigError

CONFIDENCE = 0.95
EXACT_LIMIT = 20_000  # enumerate every bootstrap resample up to this many
DRAWS = 2_000
EDGE_TASKS = 10  # "first and last 10 tasks"
# Config fields that do not change what a run learns: never part of a method's name.
NOT_THE_METHOD = {
    "seed", "exp_name", "runs_dir", "resume", "track", "wandb_project_name", "wandb_entity",
    "wandb_group", "wandb_tags", "checkpoint_every", "keep_checkpoints", "torch_threads", "cuda",
    "capture_video", "video_every", "log_every", "preset",
}  # fmt: skip
METHOD_ORDER = ["bp", "l2", "l2-init", "erank", "l2-er", "cbp", "cbp-l2", "shrink-perturb", "reset"]
CONVENTIONS = {
    "exact": "exact convention: the density's mass outside [-eps, eps]",
    "paper": "paper's convention: its grid trapezoid (lop-jax), bridging [-eps, eps]",
}


# --- statistics ---------------------------------------------------------------------------------


def bootstrap_interval(
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    strata: list[np.ndarray],
    confidence: float = CONFIDENCE,
    draws: int = DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of `statistic` over `strata` (each resampled with
    replacement on its own: one stratum is the plain bootstrap over runs, several a stratified
    one). `statistic` takes one (resamples, n_i) array per stratum and returns one value per
    resample. Exact (every resample, equally likely) when there are at most EXACT_LIMIT."""
    strata = [np.asarray(s, dtype=np.float64) for s in strata]
    if any(len(s) == 0 for s in strata):
        return math.nan, math.nan
    total = math.prod(len(s) ** len(s) for s in strata)
    if total <= EXACT_LIMIT:
        per_stratum = [
            np.array(list(itertools.product(range(len(s)), repeat=len(s)))) for s in strata
        ]
        combos = np.array(list(itertools.product(*[range(len(p)) for p in per_stratum])))
        indices = [per_stratum[i][combos[:, i]] for i in range(len(strata))]
    else:
        rng = np.random.default_rng(seed)
        indices = [rng.integers(0, len(s), size=(draws, len(s))) for s in strata]
    values = np.asarray(statistic([s[i] for s, i in zip(strata, indices, strict=True)]))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha], method="inverted_cdf")
    return float(low), float(high)


def mean_of(resampled: list[np.ndarray]) -> np.ndarray:
    return resampled[0].mean(axis=1)


def interquartile_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of the middle half: int(n / 4) values cut from each end (scipy trim_mean 0.25)."""
    ordered = np.sort(values, axis=axis)
    n = ordered.shape[axis]
    cut = int(0.25 * n)
    return np.take(ordered, range(cut, n - cut), axis=axis).mean(axis=axis)


def iqm_of(resampled: list[np.ndarray]) -> np.ndarray:
    return interquartile_mean(np.concatenate(resampled, axis=1), axis=1)


def difference_of_means(resampled: list[np.ndarray]) -> np.ndarray:
    return resampled[0].mean(axis=1) - resampled[1].mean(axis=1)


def r_squared(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(R^2 of the least-squares line, Pearson's r); NaN with under 3 points or a constant."""
    r = pearson(x, y)
    return r * r, r


# --- reading runs ---------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the report needs from one run directory."""

    path: Path
    config: dict
    kind: str  # "supervised" or "rl"
    planned_tasks: int
    task_metric: dict[int, float]  # task (or phase) -> online accuracy (or mean return)
    finished: bool
    command: str
    code: dict
    returns: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # RL: (steps, returns)
    # RL: (steps, mean return of each rollout's episodes), one point per PPO iteration
    rollouts: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
    shifts: list[int] = field(default_factory=list)  # the steps of its shifts
    # (net, phase, task, eps) -> (exact, paper) Hessian epsilon-rank, in percent
    eps_ranks: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    # (net, phase, task) -> (feature effective rank, share of dead units)
    features: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    method: str = ""
    wall_seconds: float = math.nan  # run_directory.RunFiles.wall_seconds
    cpu_seconds: float = math.nan  # run_directory.RunFiles.cpu_seconds
    seeds_in_process: int = 1

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def run_mean(self) -> float:
        """RL: the return averaged over the whole run, C-CHAIN's "average performance": the mean
        of its rollouts' mean returns (one per PPO iteration), or without them the mean of its
        phases' means; NaN until the run has finished."""
        if not self.finished:
            return math.nan
        if len(self.rollouts[1]):
            return float(self.rollouts[1].mean())
        return float(np.mean(list(self.task_metric.values()))) if self.task_metric else math.nan


def find_run_dirs(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """The run directories named: a sweep directory's cells, a run directory, or a folder of run
    directories. Returns them and the manifest of each sweep among the paths."""
    found, manifests = [], []
    for path in paths:
        if (path / "manifest.json").exists():
            manifests.append(json.loads((path / "manifest.json").read_text()))
            found += sorted(p.parent for p in (path / "cells").glob("*/*/config.json"))
        elif (path / "config.json").exists():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.glob("*/config.json"))
        else:
            raise ConfigError(f"no run directory or sweep directory at {path}")
    if not found:
        raise ConfigError(f"no run directories under {', '.join(map(str, paths))}")
    return found, manifests


def published_numbers(manifests: list[dict]) -> dict | None:
    """The [published] tables of the sweeps reported together, as one: a method's numbers from
    whichever sweep gives them (sweeps of one experiment split in two, e.g. seeds 1-3 and 4-6,
    give the same), refused where two sweeps give one method different numbers."""
    tables = [m["published"] for m in manifests if m.get("published")]
    if not tables:
        return None
    methods: dict[str, list[float]] = {}
    for table in tables:
        for method, numbers in table.get("methods", {}).items():
            if methods.setdefault(method, numbers) != numbers:
                raise ConfigError(f"these sweeps publish different numbers for {method} "
                                  f"({methods[method]} and {numbers}); report them apart")  # fmt: skip
    sources = list(dict.fromkeys(table.get("source", "") for table in tables))
    return {"source": " ".join(source for source in sources if source), "methods": methods}


def planned_phases(config: dict) -> int:
    total = int(config.get("total_timesteps", 0))
    if config.get("shift_at"):
        return 1 + sum(0 < s < total for s in config["shift_at"])
    every = int(config.get("shift_every", 0))
    return 1 + (len(range(every, total, every)) if every > 0 and config.get("shift") else 0)


PHASE_BINS = 10


def phase_means(
    steps: np.ndarray, returns: np.ndarray, shifts: list[int], total: int
) -> dict[int, float]:
    """Each phase's mean return as the mean of its learning curve: the phase cut into
    PHASE_BINS equal spans of env steps, each span the mean return of the episodes that ended
    in it, and the spans that saw an episode averaged. Averaging the episodes themselves would
    weigh a phase by episode count: where failing ends an episode (InvertedPendulum, Hopper)
    hundreds of short failures outweigh the long episodes the learner reached by the phase's
    end (measured: a phase that ends at the maximum return of 1,000 averages 59 per episode)."""
    edges = [0, *shifts, max([total, *(s + 1 for s in shifts), int(steps.max(initial=0)) + 1])]
    means: dict[int, float] = {}
    for phase, (start, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (steps >= start) & (steps < end)
        if not inside.any():
            continue
        span = np.minimum(((steps[inside] - start) * PHASE_BINS) // (end - start), PHASE_BINS - 1)
        means[phase] = float(np.mean([returns[inside][span == b].mean() for b in np.unique(span)]))
    return means


def logged(metrics: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one scalar over a run's metrics rows."""
    rows = [row for row in metrics if key in row]
    steps = np.array([row["step"] for row in rows], dtype=np.float64)
    return steps, np.array([float(row[key]) for row in rows])


def read_run(path: Path) -> RunRecord:
    files = read_run_files(path)
    if not files.config:  # its seed, method and tasks would be guesses: a silent wrong row
        raise ConfigError(
            f"{path / 'config.json'} cannot be read: a run's flags are its config.json; leave "
            "the run out of the report or restore the file"
        )
    metrics, origin = files.metrics, files.origin
    config = with_later_flags(files.config, origin.get("command", ""))
    kind = "supervised" if files.is_supervised else "rl"
    shifts, ended = files.shift_steps, files.finished
    if kind == "supervised":
        planned = int(config["num_tasks"])
        task_metric = {
            int(row["charts/task"]): float(row["charts/online_accuracy"])
            for row in metrics
            if "charts/online_accuracy" in row
        }
        returns = (np.zeros(0), np.zeros(0))
    else:
        planned = planned_phases(config)
        # A value logged at step S is about the transitions before it (the last one is S - 1):
        # an episode or a rollout that ends where a shift starts belongs to the old task.
        returns = logged(metrics, "charts/episodic_return")
        rollouts = logged(metrics, "charts/rollout_return")
        total = int(config.get("total_timesteps", 0))
        # a phase's mean: of its rollouts' returns where they are logged (PPO), else of the
        # learning curve of its episodes (0: up to the last one)
        curve = rollouts if len(rollouts[0]) else returns
        task_metric = phase_means(curve[0] - 1, curve[1], shifts, total)
        last_step = max([row["step"] for row in metrics], default=0)
        # the last rollout's steps may be logged before the total: within one batch is the end
        batch = int(config.get("num_steps", 1)) * int(config.get("num_envs", 1))
        if not ended and (len(shifts) + 1 < planned or last_step < total - batch):
            task_metric.pop(len(shifts), None)  # the phase still being run is not a phase's mean
    record = RunRecord(
        path=path,
        config=config,
        kind=kind,
        planned_tasks=planned,
        task_metric=task_metric,
        # runs from before the "finished" event: done when every task is
        finished=ended or len(task_metric) >= planned,
        command=origin.get("command", ""),
        code=origin.get("code", {}),
        returns=returns,
        shifts=shifts,
        wall_seconds=files.wall_seconds,
        cpu_seconds=files.cpu_seconds,
        seeds_in_process=files.seeds_in_process,
    )
    if kind == "rl":
        record.rollouts = rollouts
    # Boundaries: each diagnostics file is one shift (the end of one task, the init of the next)
    step_tasks: dict[int, dict[str, int]] = {}
    for boundary in files.boundaries():
        tasks = {phase: int(boundary.get(f"task_{phase}", -1)) for phase in ("init", "end")}
        step_tasks[int(boundary["step"])] = tasks
        epsilons = [float(e) for e in boundary.get("epsilons", [0.1])]
        for key in boundary:
            match = RITZ_KEY.match(key)
            if not match or match.group(3) != "hessian" or tasks[match.group(1)] < 0:
                continue
            phase, net, _ = match.groups()
            values, weights = boundary[key], boundary[f"{phase}/{net}/hessian/ritz_weights"]
            grid, density = paper_density(values, weights)
            for eps in epsilons:
                record.eps_ranks[net, phase, tasks[phase], eps] = (
                    100 * epsilon_rank(values, weights, eps),
                    100 * paper_epsilon_rank(grid, density, eps),
                )
    for row in metrics:
        tasks = step_tasks.get(row["step"])
        for key in row:
            parts = key.split("/")  # shift/{phase}/{net}/features/erank
            if (
                tasks is None
                or len(parts) != 5
                or parts[0] != "shift"
                or parts[3:] != ["features", "erank"]
            ):
                continue
            phase, net = parts[1], parts[2]
            dead = row.get(f"shift/{phase}/{net}/features/dead", math.nan)
            if tasks[phase] >= 0:
                record.features[net, phase, tasks[phase]] = (float(row[key]), float(dead))
    return record


def with_later_flags(config: dict, command: str) -> dict:
    """A run's config with the flags added to its learner since the run was made, at their
    defaults: a flag is added with the default that keeps what the code did before, so that
    is what the run did (a resume fills them in the same way: agents/checkpoints.check_mode).
    Without it a run from before a flag and a run after it would be two methods. The learner
    is the mode its command names (`train.py ppo ...`); a command naming none is left as it is."""
    from agents.cli import MODES
    from agents.records import jsonable

    words = command.split()
    modes = [b for a, b in itertools.pairwise(words) if a.endswith("train.py") and b in MODES]
    if not modes:
        return config

    def fill(saved: dict, default: dict) -> dict:
        filled = dict(saved)
        for key, value in default.items():
            if key not in filled:
                filled[key] = value
            elif isinstance(value, dict) and isinstance(filled[key], dict):
                filled[key] = fill(filled[key], value)
        return filled

    return fill(config, jsonable(importlib.import_module(MODES[modes[0]]).Args()))


def name_methods(runs: list[RunRecord]) -> None:
    """Each run's method: its --regularizer, plus the settings that tell apart groups of runs
    with the same regularizer (only fields that change what is learned; unused ones skipped)."""
    from regularizers import METHOD_FLAGS

    all_methods = {f for fields in METHOD_FLAGS.values() for f in fields}

    def learning_config(run: RunRecord) -> dict:
        used = set(METHOD_FLAGS.get(run.config.get("regularizer", "none"), ()))
        return {
            k: v
            for k, v in run.config.items()
            if k not in NOT_THE_METHOD and (k not in all_methods or k in used)
        }

    configs = [learning_config(run) for run in runs]
    keys = sorted({k for c in configs for k in c})
    differing = [
        k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
    ]
    for run, config in zip(runs, configs, strict=True):
        regularizer = config.get("regularizer", "none")
        run.method = "bp" if regularizer == "none" else regularizer
    for name in {run.method for run in runs}:
        group = [(run, c) for run, c in zip(runs, configs, strict=True) if run.method == name]
        apart = [
            k
            for k in differing
            if k != "regularizer"
            and len({json.dumps(c.get(k), sort_keys=True) for _, c in group}) > 1
        ]
        for run, config in group:
            if apart:
                run.method = (
                    f"{name} ({', '.join(f'{k}={json.dumps(config.get(k))}' for k in apart)})"
                )


def method_order(methods: set[str]) -> list[str]:
    def key(name: str) -> tuple:
        base = name.split(" ")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)

    return sorted(methods, key=key)


# --- the numbers ----------------------------------------------------------------------------------


def summarise(runs: list[RunRecord], published: dict | None = None) -> dict:
    """Every number of the report, as plain JSON; `published`: a sweep's [published] table."""
    methods = method_order({run.method for run in runs})
    planned = max(run.planned_tasks for run in runs)
    edge = max(1, min(EDGE_TASKS, planned // 4))
    first_tasks, last_tasks = list(range(edge)), list(range(planned - edge, planned))
    by_method = {
        m: sorted((r for r in runs if r.method == m), key=lambda r: r.seed) for m in methods
    }

    def edge_means(group: list[RunRecord], tasks: list[int]) -> np.ndarray:
        return np.array(
            [
                np.mean([r.task_metric[t] for t in tasks])
                for r in group
                if all(t in r.task_metric for t in tasks)
            ]
        )

    table, curves, costs = {}, {}, {}
    for method, group in by_method.items():
        first, last = edge_means(group, first_tasks), edge_means(group, last_tasks)
        both = [r for r in group if all(t in r.task_metric for t in first_tasks + last_tasks)]
        drops = np.array(
            [
                np.mean([r.task_metric[t] for t in first_tasks])
                - np.mean([r.task_metric[t] for t in last_tasks])
                for r in both
            ]
        )
        scores = [np.array([r.task_metric[t] for r in both]) for t in last_tasks]
        row = {
            "runs": len(group),
            "seeds": [r.seed for r in group],
            "first": stat(first),
            "last": stat(last),
            "drop": stat(drops),
            "whole_run": whole_run_stat(group, (published or {}).get("methods", {}).get(method)),
            "iqm_last": {
                "value": float(interquartile_mean(np.concatenate(scores))) if both else math.nan,
                "ci": list(bootstrap_interval(iqm_of, [s for s in scores]))
                if both
                else [math.nan] * 2,
                "n": len(both),
            },
        }
        timed = [r for r in group if r.finished and math.isfinite(r.wall_seconds)]
        # Runs whose record lacks CPU times (written before events carried them) are left out
        # of the CPU columns, which say how many runs they cover.
        cpu_shares = [r.cpu_seconds / r.seeds_in_process for r in timed
                      if math.isfinite(r.cpu_seconds)]  # fmt: skip
        costs[method] = {
            "runs": len(timed),
            "median_wall_s": float(np.median([r.wall_seconds for r in timed]))
            if timed
            else math.nan,
            "seeds_in_process": sorted({r.seeds_in_process for r in timed}),
            "process_hours": sum(r.wall_seconds / r.seeds_in_process for r in timed) / 3600,
            "cpu_runs": len(cpu_shares),
            "cpu_hours": sum(cpu_shares) / 3600 if cpu_shares else math.nan,
            # a run's share of its process's CPU time, the cost of one more run of it
            "median_cpu_s": float(np.median(cpu_shares)) if cpu_shares else math.nan,
        }
        table[method] = row
        curve = []
        for task in range(planned):
            values = np.array([r.task_metric[task] for r in group if task in r.task_metric])
            if len(values):
                curve.append(
                    [
                        task,
                        float(values.mean()),
                        *bootstrap_interval(mean_of, [values]),
                        len(values),
                    ]
                )
        curves[method] = curve
    resets = [m for m in methods if m.split(" ")[0] == "reset"]
    if len(resets) == 1:
        reset_last = edge_means(by_method[resets[0]], last_tasks)
        for method in methods:
            if method == resets[0]:
                continue
            own = edge_means(by_method[method], last_tasks)
            low, high = bootstrap_interval(difference_of_means, [own, reset_last])
            verdict = "yes" if low > 0 else "no" if high < 0 else "tie"
            table[method]["beats_reset"] = {"verdict": verdict if len(own) and len(reset_last) else "n/a",
                                            "difference": float(own.mean() - reset_last.mean()) if len(own) and len(reset_last) else math.nan,
                                            "ci": [low, high]}  # fmt: skip
    correlations = metric_vs_eps_rank(runs, methods)
    return {
        "kind": runs[0].kind,
        "metric": "online accuracy per task"
        if runs[0].kind == "supervised"
        else "mean return per task phase",
        "metric_note": ""
        if runs[0].kind == "supervised"
        else "A phase's mean return is the mean of its PPO iterations' returns (each the mean of "
        f"the iteration's episodes) where a run logs them, else of its learning curve over {PHASE_BINS} "
        "equal spans of env steps (each the mean of the episodes that ended in it), so a phase's "
        "many short failed episodes do not outweigh the long ones.",
        "planned_tasks": planned,
        "first_tasks": [first_tasks[0], first_tasks[-1]],
        "last_tasks": [last_tasks[0], last_tasks[-1]],
        "methods": methods,
        "table": table,
        "per_task": curves,
        "cost": costs,  # apart from "table": what the runs learnt does not depend on how fast
        "r_squared": correlations,
        "published_source": (published or {}).get("source"),
        "runs": [
            {
                "path": str(r.path),
                "method": r.method,
                "seed": r.seed,
                "finished": r.finished,
                "tasks_done": len(r.task_metric),
                "command": r.command,
                "code": r.code,
            }
            for m in methods
            for r in by_method[m]
        ],  # fmt: skip
    }


def whole_run_stat(group: list[RunRecord], published: list[float] | None) -> dict:
    """RL: the return averaged over each finished run (`RunRecord.run_mean`), its mean over
    runs with the standard error and the 95 % bootstrap CI; beside a published [mean, standard
    error], the difference and whether it is within two standard errors of the difference
    (sqrt(se_ours^2 + se_published^2): both means are estimates)."""
    values = np.array([r.run_mean for r in group if r.kind == "rl" and math.isfinite(r.run_mean)])
    entry = stat(values)
    entry["se"] = (
        float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    )
    if published is not None:
        mean, se = float(published[0]), float(published[1])
        difference = entry["mean"] - mean
        joint_se = math.sqrt(se**2 + entry["se"] ** 2) if math.isfinite(entry["se"]) else math.nan
        entry["published"] = {"mean": mean, "se": se, "difference": difference,
                              "within_2se": bool(abs(difference) <= 2 * joint_se)
                              if math.isfinite(joint_se) else None}  # fmt: skip
    return entry


def stat(values: np.ndarray) -> dict:
    """Mean, its 95 % bootstrap CI and the number of runs behind it."""
    if len(values) == 0:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    return {
        "mean": float(values.mean()),
        "ci": list(bootstrap_interval(mean_of, [values])),
        "n": len(values),
    }


def metric_points(runs: list[RunRecord], net: str, eps: float, convention: int):
    """(method, x = eps-rank at the task's init, y = the task's metric, task) for every
    (run, task) after the first: task 0 starts from the initialisation, where every method's
    network is the same fresh one (high rank, no earlier task to have lost plasticity to), so it
    is left out, as the paper's epsilon-rank analysis leaves it out."""
    points = []
    for run in runs:
        for (n, phase, task, e), ranks in run.eps_ranks.items():
            if n == net and phase == "init" and e == eps and task > 0 and task in run.task_metric:
                points.append((run.method, ranks[convention], run.task_metric[task], task))
    return points


def within_task_r_squared(x: np.ndarray, y: np.ndarray, tasks: np.ndarray) -> tuple[float, float]:
    """R^2 (and r) of the metric against the eps-rank after each task's mean of both is taken
    out: does a run with a higher eps-rank than the other runs at the same task's start learn
    that task better? The pooled R^2 also counts trends that every run shares over the tasks
    (in RL both the return and the rank can rise with training time alone), which this does
    not. Tasks that only one run reached say nothing here and are left out."""
    keep = np.array([np.sum(tasks == t) > 1 for t in tasks], dtype=bool)
    x, y, tasks = x[keep].astype(float), y[keep].astype(float), tasks[keep]  # copies
    for t in np.unique(tasks):
        mine = tasks == t
        x[mine] -= x[mine].mean()
        y[mine] -= y[mine].mean()
    return r_squared(x, y)


def metric_vs_eps_rank(runs: list[RunRecord], methods: list[str]) -> list[dict]:
    keys = sorted({(net, eps) for run in runs for net, _, _, eps in run.eps_ranks})
    rows = []
    for net, eps in keys:
        for index, convention in enumerate(CONVENTIONS):
            points = metric_points(runs, net, eps, index)
            x = np.array([p[1] for p in points], dtype=float)
            y = np.array([p[2] for p in points], dtype=float)
            pooled, r = r_squared(x, y)
            within, within_r = within_task_r_squared(x, y, np.array([p[3] for p in points]))
            row = {"net": net, "eps": eps, "convention": convention, "points": len(points),
                   "pooled": pooled, "pooled_r": r, "spearman": spearman(x, y),
                   "within_task": within, "within_task_r": within_r,
                   "per_method": {}}  # fmt: skip
            for method in methods:
                mine = np.array([p[0] == method for p in points], dtype=bool)
                row["per_method"][method] = (
                    r_squared(x[mine], y[mine])[0] if mine.any() else math.nan
                )
            rows.append(row)
    return rows


# --- figures --------------------------------------------------------------------------------------


def colour(methods: list[str], method: str) -> str:
    return f"C{methods.index(method) % 10}"


def band(ax, xs, mean, low, high, color, label, linestyle="-", marker=None) -> None:
    ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
    ax.plot(xs, mean, color=color, linewidth=1.6, label=label, linestyle=linestyle, marker=marker,
            markersize=3)  # fmt: skip


def binned_bands(binned: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin (a column of `binned`, one row per run, NaN where a run has no value): the mean
    over the runs that have one and its 95 % bootstrap interval; NaN where none has."""
    stats = [
        (np.nanmean(col), *bootstrap_interval(mean_of, [col[~np.isnan(col)]]))
        if (~np.isnan(col)).any() else (np.nan,) * 3
        for col in binned.T
    ]  # fmt: skip
    mean, low, high = np.array(stats).T
    return mean, low, high


def plot_performance(summary: dict, runs: list[RunRecord]) -> Figure:
    methods = summary["methods"]
    rl = summary["kind"] == "rl"
    fig = Figure(figsize=(11 if rl else 8, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if rl else 1, squeeze=False)[0]
    for method in methods:
        curve = np.array(summary["per_task"][method])
        if len(curve) == 0:
            continue
        n = int(curve[:, 4].max())
        band(axes[0], curve[:, 0], curve[:, 1], curve[:, 2], curve[:, 3], colour(methods, method),
             f"{method} (n={n})", marker="o" if rl else None)  # fmt: skip
    axes[0].set_xlabel("task phase" if rl else "task")
    axes[0].set_ylabel(summary["metric"])
    axes[0].set_title(f"{summary['metric']}: mean over seeds, 95 % bootstrap band", size=10)
    if axes[0].get_legend_handles_labels()[0]:  # a run that has logged nothing yet has no line
        axes[0].legend(fontsize=8)
    if rl and any(len(r.returns[0]) for r in runs):  # return over env steps, on one grid
        end = max(float(r.returns[0].max()) for r in runs if len(r.returns[0]))
        edges = np.linspace(0, end, 41)
        for method in methods:
            binned = []
            for r in (r for r in runs if r.method == method and len(r.returns[0])):
                which = np.digitize(r.returns[0], edges[1:-1])
                binned.append(
                    [
                        r.returns[1][which == b].mean() if (which == b).any() else np.nan
                        for b in range(40)
                    ]
                )
            centres = (edges[1:] + edges[:-1]) / 2
            mean, low, high = binned_bands(np.array(binned))
            band(axes[1], centres, mean, low, high, colour(methods, method), method)
        for shift in sorted({s for r in runs for s in r.shifts}):
            axes[1].axvline(shift, color="0.5", linestyle=":", linewidth=0.9)
        axes[1].xaxis.set_major_formatter(EngFormatter())
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1].set_xlabel("env step")
        axes[1].set_ylabel("episodic return")
        axes[1].set_title("return over steps (40 bins; dotted: shifts)", size=10)
    return fig


CURVE_POINTS_PER_TASK = 20


def binned_curve(
    runs: list[RunRecord], method: str, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The method's rollout returns averaged in the bins between `edges`, per run, then the
    mean over its runs with a 95 % bootstrap band: (mean, low, high, runs)."""
    mine = [r for r in runs if r.method == method]
    bins = len(edges) - 1
    binned = np.full((len(mine), bins), np.nan)
    for i, r in enumerate(mine):
        which = np.clip(np.digitize(r.rollouts[0] - 1, edges[1:-1]), 0, bins - 1)
        for b in np.unique(which):
            binned[i, b] = r.rollouts[1][which == b].mean()
    return (*binned_bands(binned), len(mine))


def plot_learning_curves(summary: dict, runs: list[RunRecord]) -> Figure | None:
    """RL with a return per PPO iteration: each method's learning curve (the rollouts' mean
    return, averaged in CURVE_POINTS_PER_TASK bins per task), mean over seeds with its 95 %
    bootstrap band, the task boundaries drawn. Up to three methods share one plot; more get a
    panel each (overlaid, eight curves hide each other), with reset's curve, where there is
    one, drawn in grey in every other panel as the plastic reference."""
    with_rollouts = [r for r in runs if len(r.rollouts[0])]
    if summary["kind"] != "rl" or not with_rollouts:
        return None
    methods = [m for m in summary["methods"] if any(r.method == m for r in with_rollouts)]
    # the planned end, so the bins line up with the task boundaries while runs are unfinished
    end = max(
        max(float(r.config.get("total_timesteps", 0)), float(r.rollouts[0].max()))
        for r in with_rollouts
    )
    bins = CURVE_POINTS_PER_TASK * summary["planned_tasks"]
    edges = np.linspace(0, end, bins + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    curves = {method: binned_curve(with_rollouts, method, edges) for method in methods}
    panels = len(methods) > 3
    columns = min(4, len(methods)) if panels else 1
    rows = math.ceil(len(methods) / columns) if panels else 1
    fig = Figure(figsize=(11, 4.2) if not panels else (3.2 * columns, 2.4 * rows + 0.6),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    resets = [m for m in methods if m.split(" ")[0] == "reset"]
    for i, method in enumerate(methods):
        ax = axes[i if panels else 0]
        mean, low, high, n = curves[method]
        if panels and resets and method != resets[0]:
            ax.plot(centres, curves[resets[0]][0], color="0.6", linewidth=1.0, label=resets[0])
        band(ax, centres, mean, low, high, colour(summary["methods"], method), f"{method} (n={n})")
        if panels:
            ax.set_title(f"{method} (n={n})", size=9)
    for ax in axes[len(methods) if panels else 1 :]:
        ax.set_visible(False)
    shifts = sorted({s for r in runs for s in r.shifts})
    for ax in axes[: len(methods) if panels else 1]:
        for shift in shifts:
            ax.axvline(shift, color="0.5", linestyle=":", linewidth=0.7)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(4))
    if panels:
        fig.supxlabel("env step (dotted: a new task)", size=9)
        fig.supylabel("return (mean of a PPO iteration's episodes)", size=9)
        grey = f"; grey: {resets[0]}" if resets else ""
        fig.suptitle(f"learning curves: mean over seeds with 95 % bootstrap band{grey}", size=10)
    else:
        axes[0].set_xlabel("env step (dotted: a new task)")
        axes[0].set_ylabel("return (mean of a PPO iteration's episodes)")
        axes[0].set_title("learning curves: mean over seeds with 95 % bootstrap band", size=10)
        axes[0].legend(fontsize=8, loc="best")
    return fig


def aggregate(runs: list[RunRecord], method: str, value: Callable[[RunRecord], dict[int, float]]):
    """(tasks, mean, low, high) over the method's runs of a per-task value."""
    per_run = [value(r) for r in runs if r.method == method]
    tasks = sorted({t for values in per_run for t in values})
    rows = []
    for task in tasks:
        values = np.array([v[task] for v in per_run if task in v and np.isfinite(v[task])])
        if len(values):
            rows.append((task, values.mean(), *bootstrap_interval(mean_of, [values])))
    return np.array(rows).T if rows else None


# Above this many methods, one panel's lines (two a method) cannot be told apart: the figure
# becomes a panel per (network, method) at one epsilon (plot_eps_ranks_by_method).
METHODS_IN_ONE_PANEL = 4


def plot_eps_ranks(summary: dict, runs: list[RunRecord], convention: str) -> Figure | None:
    index = list(CONVENTIONS).index(convention)
    keys = {(net, eps) for r in runs for net, _, _, eps in r.eps_ranks}
    if not keys:
        return None
    nets, epsilons = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
    methods = summary["methods"]
    if len(methods) > METHODS_IN_ONE_PANEL:
        return plot_eps_ranks_by_method(summary, runs, convention, nets, epsilons[0])
    fig = Figure(figsize=(3.3 * len(epsilons) + 1, 2.8 * len(nets) + 0.9), layout="constrained")
    axes = fig.subplots(len(nets), len(epsilons), squeeze=False)
    for i, net in enumerate(nets):
        for j, eps in enumerate(epsilons):
            ax = axes[i, j]
            lowest = np.inf
            for method in methods:
                for phase, style in (("init", "-"), ("end", "--")):
                    line = aggregate(runs, method, lambda r, phase=phase, net=net, eps=eps: {
                        t: v[index] for (n, p, t, e), v in r.eps_ranks.items()
                        if n == net and p == phase and e == eps
                    })  # fmt: skip
                    if line is not None:
                        lowest = min(lowest, float(np.nanmin(line[1:3])))
                        band(ax, *line, colour(methods, method),
                             f"{method} {phase}" if (i, j) == (0, 0) else None, style,
                             "o" if phase == "init" else None)  # fmt: skip
            # A collapsed spectrum's eps-rank (0) counts in the mean and is drawn.
            eps_rank_scale(ax, lowest, collapsed=100 * EPS_RANK_COLLAPSED)
            ax.set_title(f"{net}, eps = {eps:g}", size=10)
            ax.set_xlabel("task phase" if summary["kind"] == "rl" else "task")
            if j == 0:
                ax.set_ylabel("eps-rank, % (log)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Hessian epsilon-rank at each task's init (solid) and end (dashed), mean over seeds "
        f"with 95 % bootstrap band\n{CONVENTIONS[convention]}",
        size=10,
    )
    return fig


def plot_eps_ranks_by_method(
    summary: dict, runs: list[RunRecord], convention: str, nets: list[str], eps: float
) -> Figure:
    """`plot_eps_ranks` for many methods: a panel per (network, method) at the smallest
    epsilon (every epsilon is in report.md's table), four methods a row, each method's init
    and end with reset's init in grey behind it, as the learning curves are drawn."""
    index = list(CONVENTIONS).index(convention)
    methods = summary["methods"]
    resets = [m for m in methods if m.split(" ")[0] == "reset"]
    columns = min(4, len(methods))
    rows_per_net = math.ceil(len(methods) / columns)
    fig = Figure(figsize=(3.2 * columns + 0.4, (2.3 * rows_per_net + 0.3) * len(nets) + 0.6),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(rows_per_net * len(nets), columns, squeeze=False, sharex=True)

    def line(method: str, net: str, phase: str):
        return aggregate(runs, method, lambda r: {
            t: v[index] for (n, p, t, e), v in r.eps_ranks.items()
            if n == net and p == phase and e == eps
        })  # fmt: skip

    for i, net in enumerate(nets):
        panels = axes[i * rows_per_net : (i + 1) * rows_per_net].ravel()
        lowest = np.inf
        for ax, method in zip(panels, methods, strict=False):
            behind = line(resets[0], net, "init") if resets and method != resets[0] else None
            if behind is not None:
                ax.plot(behind[0], behind[1], color="0.6", linewidth=1.0, label=f"{resets[0]} init")
            for phase, style in (("init", "-"), ("end", "--")):
                drawn = line(method, net, phase)
                if drawn is not None:
                    lowest = min(lowest, float(np.nanmin(drawn[1:3])))
                    band(ax, *drawn, colour(methods, method), phase, style,
                         "o" if phase == "init" else None)  # fmt: skip
            ax.set_title(f"{net}: {method}", size=9)
        for ax in panels[len(methods) :]:
            ax.set_visible(False)
        shown = panels[: len(methods)]
        for ax in shown:
            eps_rank_scale(ax, lowest, collapsed=100 * EPS_RANK_COLLAPSED)
        # One scale for a network's panels, so that heights compare across methods.
        limits = np.array([ax.get_ylim() for ax in shown])
        for ax in shown:
            ax.set_ylim(limits[:, 0].min(), limits[:, 1].max())
        panels[0].set_ylabel(f"{net} eps-rank, % (log)")
    for ax in axes[-1]:
        ax.set_xlabel("task phase" if summary["kind"] == "rl" else "task")
    axes[0, 1 if len(methods) > 1 else 0].legend(fontsize=7)
    fig.suptitle(
        f"Hessian epsilon-rank (eps = {eps:g}) at each task's init (solid) and end (dashed), "
        f"mean over seeds with 95 % bootstrap band; grey: reset's init\n"
        f"{CONVENTIONS[convention]}; every eps in report.md's table",
        size=10,
    )
    return fig


def plot_features(summary: dict, runs: list[RunRecord]) -> Figure | None:
    nets = sorted({net for r in runs for net, _, _ in r.features})
    if not nets:
        return None
    methods = summary["methods"]
    fig = Figure(figsize=(10, 2.8 * len(nets) + 0.6), layout="constrained")
    axes = fig.subplots(len(nets), 2, squeeze=False)
    for i, net in enumerate(nets):
        for j, what in enumerate(("feature effective rank", "dead units (share)")):
            for method in methods:
                line = aggregate(runs, method, lambda r, j=j, net=net: {
                    t: v[j] for (n, p, t), v in r.features.items() if n == net and p == "end"
                })  # fmt: skip
                if line is not None:
                    band(axes[i, j], *line, colour(methods, method), method)
            axes[i, j].set_title(f"{net}: {what} at each task's end", size=10)
            axes[i, j].set_xlabel("task phase" if summary["kind"] == "rl" else "task")
    if axes[0, 0].get_legend_handles_labels()[0]:  # none before any run has ended a task
        axes[0, 0].legend(fontsize=8)
    return fig


def plot_metric_vs_eps_rank(summary: dict, runs: list[RunRecord]) -> Figure | None:
    rows = [r for r in summary["r_squared"] if r["convention"] == "exact"]
    if not rows:
        return None
    methods = summary["methods"]
    nets, epsilons = sorted({r["net"] for r in rows}), sorted({r["eps"] for r in rows})
    fig = Figure(figsize=(3.3 * len(epsilons) + 1, 3.1 * len(nets) + 0.7), layout="constrained")
    axes = fig.subplots(len(nets), len(epsilons), squeeze=False)
    for row in rows:
        ax = axes[nets.index(row["net"]), epsilons.index(row["eps"])]
        points = metric_points(runs, row["net"], row["eps"], 0)
        for method in methods:
            mine = np.array([(x, y) for m, x, y, _ in points if m == method])
            if len(mine):
                ax.scatter(
                    mine[:, 0],
                    mine[:, 1],
                    s=10,
                    color=colour(methods, method),
                    label=method,
                    alpha=0.7,
                )
        x = np.array([p[1] for p in points])
        y = np.array([p[2] for p in points])
        if len(points) >= 3 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 400)  # a line, drawn on a log axis too
            ax.plot(xs, slope * xs + intercept, color="k", linewidth=1,
                    label="least-squares line (the R^2's; it bends on a log axis)")  # fmt: skip
        # three short lines: one long line ran past the panel's edge (constrained layout does
        # not shrink titles)
        ax.set_title(f"{row['net']}, eps = {row['eps']:g}\n"
                     f"R^2 = {row['pooled']:.2f}, rho = {row['spearman']:+.2f}\n"
                     f"within task: R^2 = {row['within_task']:.2f} (r = {row['within_task_r']:+.2f})",
                     size=9)  # fmt: skip
        positive = x[x > 0]
        if len(positive) and x.max() > 100 * positive.min():
            # eps-ranks spanning decades (a collapsed spectrum sits at 0): log above the smallest
            linthresh = max(float(positive.min()), x.max() * 1e-4)
            ax.set_xscale("symlog", linthresh=linthresh, linscale=0.3)
            # Where 0 is drawn, the decades start one past the linear part: the first sits 0.3
            # of a decade from 0, where its label would overprint 0's.
            has_zero = bool(x.min() <= 0)
            first = math.ceil(math.log10(linthresh)) + int(has_zero)
            last = math.ceil(math.log10(x.max()))
            ax.xaxis.set_major_locator(
                FixedLocator([0.0] * has_zero + [10.0**k for k in range(first, last + 1)])
            )
        ax.set_xlabel("Hessian eps-rank at task init, % (exact)")
        ax.set_ylabel(summary["metric"])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels))
    fig.suptitle(
        "the task's metric against the Hessian epsilon-rank at its start, every (method, seed, task)",
        size=10,
    )
    return fig


# --- report.md ------------------------------------------------------------------------------------


def ci_text(entry: dict, digits: int = 3, runs: int | None = None) -> str:
    """mean [CI], with the number of runs behind it when not every run of the method counts."""
    if not entry["n"] or not math.isfinite(entry["mean"]):
        return "-"
    low, high = entry["ci"]
    some = f" (n={entry['n']})" if runs is not None and entry["n"] < runs else ""
    return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]{some}"


def whole_run_table(summary: dict, digits: int) -> list[str]:
    """report.md's table of the return averaged over each run, beside the published numbers."""
    published = summary.get("published_source")
    lines = ["", "## The return averaged over the whole run", "",
             "Per run, the mean of its PPO iterations' mean returns (C-CHAIN's average "
             "performance; a run without them: the mean of its phases); over the finished runs, "
             "mean ± standard error and the 95 % bootstrap CI."
             + (f" Published: {published} Within 2 s.e.: the difference is at most twice "
                "sqrt(s.e. ours^2 + s.e. published^2)." if published else ""),
             "",
             "| method | runs | mean ± s.e. | 95 % CI |"
             + (" published | difference | within 2 s.e. |" if published else ""),
             "|---|---|---|---|" + ("---|---|---|" if published else "")]  # fmt: skip
    for method in summary["methods"]:
        entry = summary["table"][method]["whole_run"]
        if not entry["n"]:
            continue
        se = f" ± {entry['se']:.{digits}f}" if math.isfinite(entry["se"]) else ""
        text = f"| {method} | {entry['n']} | {entry['mean']:.{digits}f}{se} | "
        text += f"[{entry['ci'][0]:.{digits}f}, {entry['ci'][1]:.{digits}f}] |"
        if published:
            ref = entry.get("published")
            text += (
                f" {ref['mean']:.{digits}f} ± {ref['se']:.{digits}f} | {ref['difference']:+.{digits}f} | "
                f"{'-' if ref['within_2se'] is None else 'yes' if ref['within_2se'] else 'no'} |"
                if ref else " - | - | - |"
            )  # fmt: skip
        lines.append(text)
    return lines


PER_TASK_COLUMNS = 12  # past this many tasks, performance.png shows them (a row would not fit)


def per_task_table(summary: dict, digits: int) -> list[str]:
    """report.md's table of each task's metric per method (mean over the runs that did it), for
    runs of up to PER_TASK_COLUMNS tasks."""
    tasks = summary["planned_tasks"]
    if tasks > PER_TASK_COLUMNS or tasks < 2:
        return []
    unit = "phase" if summary["kind"] == "rl" else "task"
    lines = ["", f"## Per {unit}", "",
             f"The {summary['metric']}, mean over runs (n: fewer runs than the method has).", "",
             "| method | runs | " + " | ".join(f"{unit} {t}" for t in range(tasks)) + " |",
             "|---|---|" + "---|" * tasks]  # fmt: skip
    for method in summary["methods"]:
        runs = summary["table"][method]["runs"]
        cells = {task: (mean, n) for task, mean, _, _, n in summary["per_task"][method]}
        texts = [
            "-" if t not in cells
            else f"{cells[t][0]:.{digits}f}" + (f" (n={cells[t][1]})" if cells[t][1] < runs else "")
            for t in range(tasks)
        ]  # fmt: skip
        lines.append(f"| {method} | {runs} | " + " | ".join(texts) + " |")
    return lines


def cost_table(summary: dict) -> list[str]:
    """report.md's table of what the finished runs cost, from their events."""
    costs = summary["cost"]
    if not any(cost["runs"] for cost in costs.values()):
        return []
    lines = ["", "## Cost", "",
             "A run's wall time, from its events: each start or resume to that process's last "
             "event (time a crash lost after a checkpoint is not in it). Runs that shared a "
             "process (--seeds) each show that process's time and count a share of it in the "
             "process-hours. A run's CPU time (its share of its process's) and the CPU-hours "
             "are not inflated by waiting for a shared core or by a stopped process (a process "
             "of one torch thread uses at most about one core). They cover the runs whose "
             "records have CPU times (\"k of n\" when some do not; -: none).",
             "",
             "| method | finished runs | wall time of a run (median) | CPU time of a run (median) | "
             "seeds per process | process-hours | CPU-hours |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, cost in costs.items():
        if not cost["runs"]:
            continue
        seeds = ", ".join(map(str, cost["seeds_in_process"]))
        covered, runs = cost["cpu_runs"], cost["runs"]
        part = f" ({covered} of {runs})" if covered < runs else ""
        cpu, cpu_run = "-", "-"
        if covered:  # the hours of only some runs are a lower bound of all of theirs
            cpu = (">= " if covered < runs else "") + f"{cost['cpu_hours']:.2f}{part}"
            cpu_run = f"{cost['median_cpu_s'] / 60:.1f} min{part}"
        lines.append(f"| {method} | {cost['runs']} | {cost['median_wall_s'] / 60:.1f} min | "
                     f"{cpu_run} | {seeds} | {cost['process_hours']:.2f} | {cpu} |")  # fmt: skip
    return lines


def markdown(summary: dict, figures: list[str], sources: list[str], manifests: list[dict]) -> str:
    first, last = summary["first_tasks"], summary["last_tasks"]
    unit = "phases" if summary["kind"] == "rl" else "tasks"
    digits = 1 if summary["kind"] == "rl" else 3

    def span(edge: list[int]) -> str:  # "phases 0-1", or "phase 4" for a span of one
        return f"{unit} {edge[0]}-{edge[1]}" if edge[0] != edge[1] else f"{unit[:-1]} {edge[0]}"

    lines = [
        "# Report",
        "",
        f"Sources: {', '.join(sources)}. {len(summary['runs'])} runs; metric: {summary['metric']}; "
        f"{summary['planned_tasks']} {unit} planned. Means over runs with 95 % bootstrap CIs "
        "(exact: every resample enumerated, up to 5 runs)."
        + (f" {summary['metric_note']}" if summary["metric_note"] else ""),
        "",
        f"| method | runs | {span(first)} | {span(last)} | drop | "
        f"IQM, {span(last)} (stratified bootstrap) |"
        + (" beats RESET |" if any("beats_reset" in r for r in summary["table"].values()) else ""),
        "|---|---|---|---|---|---|"
        + ("---|" if any("beats_reset" in r for r in summary["table"].values()) else ""),
    ]
    for method in summary["methods"]:
        row = summary["table"][method]
        iqm = row["iqm_last"]
        iqm_text = (
            f"{iqm['value']:.{digits}f} [{iqm['ci'][0]:.{digits}f}, {iqm['ci'][1]:.{digits}f}]"
            if iqm["n"] else "-"
        )  # fmt: skip
        reset = row.get("beats_reset")
        reset_text = ""
        if reset is not None and reset["verdict"] == "n/a":  # no finished last tasks to compare
            reset_text = " n/a |"
        elif reset is not None:
            reset_text = f" {reset['verdict']} ({reset['difference']:+.{digits}f} [{reset['ci'][0]:+.{digits}f}, {reset['ci'][1]:+.{digits}f}]) |"
        elif any("beats_reset" in r for r in summary["table"].values()):
            reset_text = " (reset) |"
        lines.append(
            f"| {method} | {row['runs']} | {ci_text(row['first'], digits, row['runs'])} | "
            f"{ci_text(row['last'], digits, row['runs'])} | {ci_text(row['drop'], digits, row['runs'])} | "
            f"{iqm_text} |{reset_text}"
        )
    if summary["kind"] == "rl":
        lines += whole_run_table(summary, digits)
    lines += per_task_table(summary, digits) + cost_table(summary)
    incomplete = [r for r in summary["runs"] if not r["finished"]]
    if incomplete:
        lines += [
            "",
            f"{len(incomplete)} runs have not finished; they count for the {unit} they have done.",
        ]
    lines += ["", "## The metric against the Hessian epsilon-rank at each task's init", "",
              "R^2 of the least-squares line over every (method, seed, task) point after task 0 (the "
              "paper: 0.711 on Continual ImageNet); r is its sign. Spearman's rho (the Pearson r of "
              "the ranks) says whether the metric rises with the epsilon-rank at all, where the "
              "relation is not a line (e.g. a threshold). Within task: R^2 (r) after each task's "
              "mean of both is taken out, so a trend every run shares over the tasks (the return "
              "and the rank both rising with training time) does not count; it asks whether a run "
              "that starts a task with a higher epsilon-rank than the others learns that task "
              "better. Per method: pooled R^2.", ""]  # fmt: skip
    methods = summary["methods"]
    lines += ["| net | eps | convention | points | pooled R^2 (r) | Spearman rho | "
              "within task R^2 (r) | " + " | ".join(methods) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(methods)]  # fmt: skip
    for row in summary["r_squared"]:
        per = " | ".join(f"{row['per_method'][m]:.2f}" for m in methods)
        lines.append(f"| {row['net']} | {row['eps']:g} | {row['convention']} | {row['points']} | "
                     f"{row['pooled']:.2f} ({row['pooled_r']:+.2f}) | "
                     f"{row.get('spearman', math.nan):+.2f} | "
                     f"{row.get('within_task', math.nan):.2f} "
                     f"({row.get('within_task_r', math.nan):+.2f}) | {per} |")  # fmt: skip
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "## Where every number comes from", ""]
    for manifest in manifests:
        code = manifest.get("code", {})
        lines += [f"Sweep: `{' '.join(manifest['command'])}` at commit {code.get('commit')}"
                  f"{' (uncommitted changes)' if code.get('dirty') else ''}.", ""]  # fmt: skip
    lines += ["| method | seed | run directory | finished | " + unit + " done | command | commit |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["runs"]:
        commit = (r["code"].get("commit") or "?")[:10] + (
            "+dirty" if r["code"].get("dirty") else ""
        )
        lines.append(f"| {r['method']} | {r['seed']} | {r['path']} | {'yes' if r['finished'] else 'no'} | "
                     f"{r['tasks_done']} | `{r['command'] or '?'}` | {commit} |")  # fmt: skip
    lines += ["", "Each run's full flags are its config.json."]
    return "\n".join(lines) + "\n"


def write_report(paths: list[Path], out: Path | None = None) -> Path:
    run_dirs, manifests = find_run_dirs(paths)
    runs = [read_run(path) for path in run_dirs]
    kinds = {run.kind for run in runs}
    if len(kinds) > 1:
        raise ConfigError("these runs mix supervised and RL runs; report each kind apart")
    name_methods(runs)
    summary = summarise(runs, published_numbers(manifests))
    if out is None:
        sweep = (paths[0] / "manifest.json").exists()
        out = (paths[0] / "report") if sweep else Path("report")
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "performance.png": plot_performance(summary, runs),
        "learning_curves.png": plot_learning_curves(summary, runs),
        "eps_rank.png": plot_eps_ranks(summary, runs, "exact"),
        "eps_rank_paper.png": plot_eps_ranks(summary, runs, "paper"),
        "features.png": plot_features(summary, runs),
        "metric_vs_eps_rank.png": plot_metric_vs_eps_rank(summary, runs),
    }
    written = []
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(out / name, dpi=110)
            written.append(name)
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(summary, written, [str(p) for p in paths], manifests))
    return out


def run(argv: list[str]) -> None:
    """train.py report ...: parse the paths, write the report, say where it is."""
    parser = argparse.ArgumentParser(prog="train.py report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", type=Path, help="a sweep directory, run directories, or folders of them"
    )
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the figures go")
    args = parser.parse_args(argv)
    out = write_report(args.paths, args.out)
    print(f"report: {out / 'report.md'}")
