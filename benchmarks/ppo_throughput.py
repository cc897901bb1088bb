"""Env steps per second of our PPO against CleanRL's, in one process, as a table of ratios.

Both run CleanRL's `ppo_continuous_action` defaults on HalfCheetah-v5: 1 env, 64x64 tanh,
rollout 2048, 10 epochs, 32 minibatches, lr 3e-4 annealed, CPU, no shift, no regularizer, one
torch thread each (the reference is no faster with two here, only noisier). The reference is
`cleanrl_ppo_reference.py`, a faithful gymnasium-1.x port of CleanRL's script. SPS is each
implementation's own measure: env steps / seconds since its training loop started.
Runs alternate (reference first) so that machine noise falls on both alike.

    python benchmarks/ppo_throughput.py                        # throughput, ~3 minutes
    python benchmarks/ppo_throughput.py --learning --total-timesteps 100000 --seeds 1 2 3 --repeats 1

Reference point (the issue): CleanRL's script runs at about 1,350 SPS on a 2-core machine of
this kind; the target is at least 1.5x that, with the same learning.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cleanrl_ppo_reference import run_cleanrl_ppo  # noqa: E402

from agents import ppo  # noqa: E402


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """the environment both implementations train on"""
    total_timesteps: int = 8 * 2048
    """env steps per run"""
    repeats: int = 3
    """runs of each implementation per seed, alternating"""
    seeds: tuple[int, ...] = (1,)
    """seeds to run"""
    learning: bool = False
    """also report the returns reached (use a longer --total-timesteps and several seeds)"""


def run_ours(env_id: str, total_timesteps: int, seed: int, runs_dir: str) -> dict:
    args = ppo.Args(
        env_id=env_id, total_timesteps=total_timesteps, seed=seed, anneal_lr=True, cuda=False,
        torch_threads=1, checkpoint_every=0, runs_dir=runs_dir,
    )  # fmt: skip
    run_dir = ppo.train(args)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sps = [m["charts/SPS"] for m in metrics if "charts/SPS" in m][-1]
    episodes = [
        (m["step"], m["charts/episodic_return"]) for m in metrics if "charts/episodic_return" in m
    ]
    return {"sps": sps, "episodes": episodes}


def mean_last_returns(episodes: list, count: int = 10) -> float:
    returns = [episode[1] for episode in episodes]
    return float(np.mean(returns[-count:])) if returns else float("nan")


def main(args: Args) -> None:
    results: dict[str, list[dict]] = {"CleanRL (reference)": [], "ours": []}
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in args.seeds:
            for _ in range(args.repeats):
                reference = run_cleanrl_ppo(
                    args.env_id, args.total_timesteps, seed, torch_threads=1
                )
                results["CleanRL (reference)"].append({"seed": seed, **reference})
                results["ours"].append(
                    {"seed": seed, **run_ours(args.env_id, args.total_timesteps, seed, runs_dir)}
                )

    ratios = [
        o["sps"] / r["sps"]
        for o, r in zip(results["ours"], results["CleanRL (reference)"], strict=True)
    ]
    print(f"\nmachine: {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 torch thread each")
    print(
        f"{args.env_id}, {args.total_timesteps} steps per run, {len(args.seeds)} seed(s) x {args.repeats} run(s)\n"
    )
    print(
        "| implementation | SPS median (min-max) | ratio to CleanRL (median of pairs) | mean return, last 10 episodes |"
    )
    print("|---|---|---|---|")
    for name, runs in results.items():
        sps = [run["sps"] for run in runs]
        ratio = (
            "1.00"
            if name.startswith("CleanRL")
            else f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )
        final = [mean_last_returns(run["episodes"]) for run in runs]
        print(
            f"| {name} | {np.median(sps):.0f} ({min(sps):.0f}-{max(sps):.0f}) | {ratio} | {np.mean(final):.0f} +- {np.std(final):.0f} |"
        )

    if args.learning:
        # Returns at equal env steps: mean episodic return of the episodes ending in each quarter.
        quarters = np.linspace(0, args.total_timesteps, 5)
        print(
            "\n| implementation | " + " | ".join(f"steps <= {q:.0f}" for q in quarters[1:]) + " |"
        )
        print("|---|" + "---|" * 4)
        for name, runs in results.items():
            cells = []
            for low, high in zip(quarters[:-1], quarters[1:], strict=True):
                per_seed = [
                    np.mean(
                        [ret for step, ret, *_ in run["episodes"] if low < step <= high] or [np.nan]
                    )
                    for run in runs
                ]
                cells.append(f"{np.nanmean(per_seed):.0f} +- {np.nanstd(per_seed):.0f}")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(tyro.cli(Args))
