"""Env steps and gradient updates per second of our SAC against CleanRL's own script.

What it measures: our SAC (`agents/sac.py`) and the reference, CleanRL's
`sac_continuous_action.py` from the cleanrl 1.2.0 wheel (benchmarks/cleanrl_wheel.py: the
gymnasium-1.x edits, each printed, and Stable-Baselines3's replay buffer from its own wheel),
both in CleanRL's default configuration: Hopper-v5, 1 env, 256x256 ReLU actor and twin Q
networks, batch 256, buffer 1M, gamma 0.99, tau 0.005, learning starts at 5,000 steps, policy lr
3e-4, Q lr 1e-3, policy frequency 2, target network frequency 1, automatic entropy tuning; on the
CPU with one torch thread each by default (--torch-threads sets both). Ours runs with no shift,
no regularizer (or the ones asked for) and no diagnostics.

The rates are those of the learning phase, after learning_starts (where the time goes; the
random phase before it runs at thousands of steps/s): env steps/s and gradient updates/s (one
critic update per env step in both, with two actor updates every second step). CleanRL's are
timed between its first and last SPS lines after learning starts (every 100 steps; one edit
adds their step and seconds); ours are read from the `charts/interval_SPS` and
`charts/updates_per_second` it logs every 1,000 steps (the intervals after learning_starts).
The wall time of each whole call, set-up and random phase included, is reported as well. Runs
alternate, the reference first, so that machine noise falls on both alike; the ratio is the
median of the per-pair ratios. With --learning, the returns reached are compared too.

    python benchmarks/sac_throughput.py                       # throughput, ~3 minutes
    python benchmarks/sac_throughput.py --learning --learning-steps 45000 --seeds 1 2 --repeats 1
"""

from __future__ import annotations

import json
import os
import re
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

from cleanrl_wheel import SAC_CONTINUOUS_EDITS, prepared_script, run_script, sb3_path  # noqa: E402
from learning_tables import median_range, print_learning_table  # noqa: E402

from agents import sac  # noqa: E402

REFERENCE = "CleanRL (reference)"


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """the environment both implementations train on"""
    learning_starts: int = 5000
    """random-action steps before the first update (CleanRL's default)"""
    learning_steps: int = 2000
    """env steps measured after learning starts (a multiple of 1,000)"""
    repeats: int = 3
    """runs of each implementation per seed, alternating (reference first)"""
    seeds: tuple[int, ...] = (1,)
    """seeds to run (several for --learning)"""
    regularizers: tuple[str, ...] = ("none",)
    """our SAC once per regularizer named here (e.g. none l2-er), each a row of the table"""
    learning: bool = False
    """also compare learning: returns at equal env steps and the last 10 returns, over seeds"""
    torch_threads: int = 1
    """torch threads of both implementations (the same for both)"""


# the SPS lines of the edited script: "SPS: 152 at 1300 8.5249" (its step and seconds)
TIMED = re.compile(r"^SPS: \d+ at (\d+) ([0-9.]+)")


def run_reference(script: Path, args: Args, seed: int) -> dict:
    """CleanRL's SAC script in a process of its own, with SB3 (its replay buffer) on its path;
    its rate after learning starts from the steps and seconds of its SPS lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.torch_threads), "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(sb3_path())}  # fmt: skip
    argv = ["--env-id", args.env_id, "--total-timesteps", str(args.learning_starts + args.learning_steps),
            "--learning-starts", str(args.learning_starts), "--seed", str(seed), "--cuda", "False"]  # fmt: skip
    run = run_script(script, argv, env)
    timed = [(int(m.group(1)), float(m.group(2))) for m in map(TIMED.match, run["lines"]) if m]
    (first_step, first_s), (last_step, last_s) = timed[0], timed[-1]
    sps = (last_step - first_step) / (last_s - first_s)
    # its global_step counts from 0: an episode printed at step s ended at env step s + 1
    episodes = [(step + 1, ret) for step, ret in run["episodes"]]
    return {"sps": sps, "ups": sps, "wall_s": run["wall_s"], "episodes": episodes}


def run_ours(args: Args, seed: int, regularizer: str, runs_dir: str) -> dict:
    """Our SAC in CleanRL's default configuration; rates and episodes read from metrics.jsonl."""
    config = sac.Args(
        env_id=args.env_id, total_timesteps=args.learning_starts + args.learning_steps, seed=seed,
        num_envs=1, hidden_sizes=(256, 256), activation="relu", init="torch-default",
        buffer_size=1_000_000, gamma=0.99, tau=0.005, batch_size=256,
        learning_starts=args.learning_starts, policy_lr=3e-4, q_lr=1e-3, alpha_lr=1e-3,
        policy_frequency=2, target_network_frequency=1, autotune=True, updates_per_step=1,
        shift=(), regularizer=regularizer, diagnostics=("none",), log_every=1000,
        cuda=False, torch_threads=args.torch_threads, track=False, checkpoint_every=0, runs_dir=runs_dir,
    )  # fmt: skip
    started = time.perf_counter()
    run_dir = sac.train(config)
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    intervals = [
        m for m in metrics if "charts/interval_SPS" in m and m["step"] > args.learning_starts
    ]
    # Every interval is 1,000 steps (and as many updates): total / time = harmonic mean.
    sps = len(intervals) / sum(1 / m["charts/interval_SPS"] for m in intervals)
    ups = len(intervals) / sum(1 / m["charts/updates_per_second"] for m in intervals)
    episodes = [
        (m["step"], m["charts/episodic_return"]) for m in metrics if "charts/episodic_return" in m
    ]
    return {"sps": sps, "ups": ups, "wall_s": wall, "episodes": episodes}


def main(args: Args) -> None:
    if args.learning_steps % 1000 or args.learning_steps < 1000:
        raise SystemExit("error: --learning-steps must be a positive multiple of 1000")
    names = [REFERENCE, *(f"ours ({reg})" for reg in args.regularizers)]
    results: dict[str, list[dict]] = {name: [] for name in names}
    total_runs = len(names) * len(args.seeds) * args.repeats
    with tempfile.TemporaryDirectory() as runs_dir:
        script = prepared_script("sac_continuous_action.py", SAC_CONTINUOUS_EDITS, Path(runs_dir))
        for seed in args.seeds:
            for _ in range(args.repeats):
                for name in names:
                    if name == REFERENCE:
                        run = run_reference(script, args, seed)
                    else:
                        run = run_ours(args, seed, name[len("ours (") : -1], runs_dir)
                    results[name].append({"seed": seed, **run})
                    done = sum(len(runs) for runs in results.values())
                    print(
                        f"[{done}/{total_runs}] {name}, seed {seed}: {run['sps']:.1f} env steps/s, "
                        f"{run['ups']:.1f} updates/s after learning starts, "
                        f"{run['wall_s']:.1f} s wall",
                        file=sys.stderr,
                        flush=True,
                    )

    print(
        f"\nmachine: nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"{args.torch_threads} torch thread(s) each, load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"{args.env_id}, CleanRL's SAC defaults, {args.learning_starts} random steps then "
        f"{args.learning_steps} measured steps per run, seeds {list(args.seeds)}, "
        f"{args.repeats} alternating run(s) per seed\n"
    )
    print(
        "| implementation | env steps/s after learning starts, median (min-max) "
        "| gradient updates/s | ratio to CleanRL (median of pairs) | wall s per run incl. set-up |"
    )
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        ratios = [
            run["sps"] / reference["sps"]
            for run, reference in zip(runs, results[REFERENCE], strict=True)
        ]
        ratio = "1.00" if name == REFERENCE else median_range(ratios, digits=2)
        print(
            f"| {name} | {median_range([run['sps'] for run in runs], 1)} "
            f"| {np.median([run['ups'] for run in runs]):.1f} | {ratio} "
            f"| {np.median([run['wall_s'] for run in runs]):.1f} |"
        )

    if not args.learning:
        return

    # --- Learning table: per seed (repeats averaged), then mean +- std over seeds.
    print_learning_table(results, args.seeds, args.learning_starts + args.learning_steps, {})


if __name__ == "__main__":
    main(tyro.cli(Args))
