"""Env steps per second of our PPO against CleanRL's, in one process, as a table of ratios.

What it measures: our PPO (`agents/ppo.py`) and the reference, CleanRL's own
`ppo_continuous_action.py` from the cleanrl 1.2.0 wheel with only the gymnasium-1.x edits of
`cleanrl_wheel.py` (printed with the table), in a process of its own; both in CleanRL's default
configuration: HalfCheetah-v5, 1 env, 64x64 tanh actor and critic, rollout 2048, 10 epochs, 32
minibatches, lr 3e-4 annealed to zero, gamma 0.99, lambda 0.95, clip 0.2, entropy 0, value 0.5,
max grad norm 0.5, observation and reward normalisation, on the CPU with one torch thread each
(OMP_NUM_THREADS=1 for the reference; it is no faster with two threads on a 2-core machine,
only noisier). Ours runs with
no shift and no regularizer. SPS is each implementation's own measure: env steps / seconds since
its training loop started (set-up excluded; CleanRL's is its last printed "SPS:", ours the last
"charts/SPS" of its metrics.jsonl);
the wall time of each whole call, set-up included, is reported as well. Runs alternate, the
reference first, so that machine noise falls on both alike; the ratio is the median of the
per-pair ratios. With --learning the returns reached are compared too: the mean of the last 10
episodic returns, and the mean episodic return of the episodes ending in each quarter of the run
(equal env-step checkpoints), each as mean +- std over seeds.

    python benchmarks/ppo_throughput.py                        # throughput, ~3 minutes
    python benchmarks/ppo_throughput.py --learning --total-timesteps 100000 --seeds 1 2 3 --repeats 1

Reference point (reported, not measured by this script): CleanRL's script runs at about 1,350
SPS on a 2-core machine of this kind; the target is ours at >= 1.5x that, with the same
learning.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cleanrl_wheel import PPO_CONTINUOUS_EDITS, prepared_script, run_script  # noqa: E402
from learning_tables import mean_last_returns, mean_std, median_range, print_learning_table  # noqa: E402

from agents import ppo  # noqa: E402

REFERENCE, OURS = "CleanRL (reference)", "ours"
TORCH_THREADS = 1


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """the environment both implementations train on"""
    total_timesteps: int = 8 * 2048
    """env steps per run (use e.g. 100000 or more with --learning)"""
    repeats: int = 3
    """runs of each implementation per seed, alternating (reference first)"""
    seeds: tuple[int, ...] = (1,)
    """seeds to run (several for --learning)"""
    learning: bool = False
    """also compare learning: returns at equal env steps and the last 10 returns, over seeds"""


def run_reference(script: Path, env_id: str, total_timesteps: int, seed: int) -> dict:
    """CleanRL's PPO script in a process of its own, on the CPU with one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": str(TORCH_THREADS), "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    argv = ["--env-id", env_id, "--total-timesteps", str(total_timesteps), "--seed", str(seed),
            "--cuda", "False"]  # fmt: skip
    return run_script(script, argv, env)


def run_ours(env_id: str, total_timesteps: int, seed: int, runs_dir: str) -> dict:
    """Our PPO in CleanRL's default configuration; SPS and episodes read from metrics.jsonl."""
    args = ppo.Args(
        env_id=env_id, total_timesteps=total_timesteps, seed=seed, num_envs=1,
        hidden_sizes=(64, 64), activation="tanh", init="orthogonal",
        learning_rate=3e-4, anneal_lr=True, num_steps=2048, update_epochs=10, num_minibatches=32,
        gamma=0.99, gae_lambda=0.95, clip_coef=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
        norm_obs=True, norm_reward=True, shift=(), regularizer="none",
        cuda=False, torch_threads=TORCH_THREADS, track=False, checkpoint_every=0, runs_dir=runs_dir,
    )  # fmt: skip
    started = time.perf_counter()
    run_dir = ppo.train(args)
    wall = time.perf_counter() - started
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    sps = [m["charts/SPS"] for m in metrics if "charts/SPS" in m][-1]
    episodes = [
        (m["step"], m["charts/episodic_return"]) for m in metrics if "charts/episodic_return" in m
    ]
    return {"sps": sps, "wall_s": wall, "episodes": episodes}


def main(args: Args) -> None:
    # --- Run: for each seed, reference then ours, `repeats` times.
    results: dict[str, list[dict]] = {REFERENCE: [], OURS: []}
    total_runs = 2 * len(args.seeds) * args.repeats
    with tempfile.TemporaryDirectory() as runs_dir:
        script = prepared_script("ppo_continuous_action.py", PPO_CONTINUOUS_EDITS, Path(runs_dir))
        for seed in args.seeds:
            for _ in range(args.repeats):
                for name in (REFERENCE, OURS):
                    if name == REFERENCE:
                        run = run_reference(script, args.env_id, args.total_timesteps, seed)
                    else:
                        run = run_ours(args.env_id, args.total_timesteps, seed, runs_dir)
                    results[name].append({"seed": seed, **run})
                    done = len(results[REFERENCE]) + len(results[OURS])
                    print(
                        f"[{done}/{total_runs}] {name}, seed {seed}: {run['sps']:.0f} SPS, "
                        f"{run['wall_s']:.1f} s wall",
                        file=sys.stderr,
                        flush=True,
                    )

    # --- Throughput table.
    ratios = [
        ours["sps"] / reference["sps"]
        for ours, reference in zip(results[OURS], results[REFERENCE], strict=True)
    ]
    print(
        f"\nmachine: nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"{TORCH_THREADS} torch thread(s) each"
    )
    print(
        f"{args.env_id}, {args.total_timesteps} steps per run, seeds {list(args.seeds)}, "
        f"{args.repeats} alternating run(s) per seed\n"
    )
    print(
        f"| implementation ({TORCH_THREADS} torch thread) | SPS median (min-max) "
        "| ratio to CleanRL (median of pairs) | wall s incl. set-up, median "
        "| final mean return (last 10 episodes) |"
    )
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        ratio = "1.00" if name == REFERENCE else median_range(ratios, digits=2)
        final = [mean_last_returns(run["episodes"]) for run in runs]
        print(
            f"| {name} | {median_range([run['sps'] for run in runs])} | {ratio} "
            f"| {np.median([run['wall_s'] for run in runs]):.1f} | {mean_std(final)} |"
        )

    if not args.learning:
        return

    # --- Learning table: per seed (repeats averaged), then mean +- std over seeds.
    speed = {
        name: f"{np.median([run['sps'] for run in runs]):.0f}" for name, runs in results.items()
    }
    speed[OURS] += f" ({np.median(ratios):.2f}x)"
    print_learning_table(results, args.seeds, args.total_timesteps, speed)


if __name__ == "__main__":
    main(tyro.cli(Args))
