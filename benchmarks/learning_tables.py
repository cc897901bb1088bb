"""What the throughput benchmarks print about runs: their speed and, at equal env steps, their
learning. A run is a dict with "seed", "sps" and "episodes" (a list of (step, return))."""

from __future__ import annotations

import numpy as np


def mean_last_returns(episodes: list[tuple[int, float]], count: int = 10) -> float:
    returns = [ret for _step, ret in episodes[-count:]]
    return float(np.mean(returns)) if returns else float("nan")


def mean_std(values: list[float]) -> str:
    values = [v for v in values if np.isfinite(v)]
    return f"{np.mean(values):.0f} +- {np.std(values):.0f}" if values else "-"


def median_range(values: list[float], digits: int = 0) -> str:
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_learning_table(
    results: dict[str, list[dict]], seeds: list[int], total_steps: int, speed: dict[str, str]
) -> None:
    """Per implementation: the mean return of the episodes ending in each quarter of the run
    and of the last 10 episodes, per seed (repeats averaged), then mean +- std over seeds;
    `speed` adds a last column (empty: none)."""
    quarters = np.linspace(0, total_steps, 5)
    print(
        "\nLearning at equal env steps: mean episodic return of the episodes ending in each "
        "quarter of the run, and of the last 10 episodes; mean +- std over seeds.\n"
    )
    columns = [f"steps <= {high:.0f}" for high in quarters[1:]] + ["last 10 episodes"]
    columns += ["SPS median"] if speed else []
    print("| implementation | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, runs in results.items():
        cells = []
        for low, high in zip(quarters[:-1], quarters[1:], strict=True):
            per_seed = []
            for seed in seeds:
                returns = [
                    ret
                    for run in runs
                    if run["seed"] == seed
                    for step, ret in run["episodes"]
                    if low < step <= high
                ]
                per_seed.append(float(np.mean(returns)) if returns else float("nan"))
            cells.append(mean_std(per_seed))
        last = [
            np.mean([mean_last_returns(run["episodes"]) for run in runs if run["seed"] == seed])
            for seed in seeds
        ]
        cells.append(mean_std(last))
        cells += [speed[name]] if speed else []
        print(f"| {name} | " + " | ".join(cells) + " |")
