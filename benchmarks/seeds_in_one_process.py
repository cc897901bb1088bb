"""Whole runs: K seeds of one configuration three ways, in one run of this script, alternating,
as a user would start them: the local launcher one process a cell (`train.py sweep ...
--no-group-seeds --workers 2`: what grouping replaces), the local launcher as it runs them by
default (seeds grouped into `--seeds` processes, a group cut in parts where a worker would idle:
6 seeds on 2 workers are two processes of 3), and all K seeds in one process
(`train.py supervised|ppo --seeds`) with --threads torch threads.

    python benchmarks/seeds_in_one_process.py                  # supervised: 3 seeds, 5 tasks
    python benchmarks/seeds_in_one_process.py --seeds 1 2 3 4 5 6 --num-tasks 10
    python benchmarks/seeds_in_one_process.py --learner ppo --seeds 1 2 3 4 5 6   # CartPole

supervised: `make reproduce`'s setting (the paper code's small permuted MNIST: 784-256x3-10,
online SGD, 4,000 examples a task; its diagnostics every 10 tasks, here at the start and the
end), cut to --num-tasks tasks. ppo: the continual-cartpole preset (C-CHAIN's setting, 3 x 256
networks, minibatches of 32) cut to --num-tasks tasks of 10 iterations, diagnostics off (they
are per seed in every way), or with --hidden-sizes another width. The table gives both wall
time (cells per hour) and cells per core-hour.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2, 3)
    """the seeds (cells) each way trains"""
    num_tasks: int = 5
    """tasks per run (the reproduce setting has 81)"""
    regularizer: str = "none"
    """the method (the reproduce sweep's BP: none)"""
    rounds: int = 2
    """how many times each way runs, alternating"""
    workers: int = 2
    """the launcher's workers (the machine's cores)"""
    update: str = "auto"
    """supervised: --update (fused, autograd, auto: fused where it applies)"""
    learner: str = "supervised"
    """supervised (permuted MNIST) or ppo (continual CartPole)"""
    threads: int = 1
    """torch threads of the batched process (each launcher cell has one)"""
    hidden_sizes: tuple[int, ...] = ()
    """ppo: the networks' widths instead of the preset's 3 x 256"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command[1:4])} ... failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main(args: Args) -> None:
    if args.learner == "ppo":
        steps = args.num_tasks * 8_000  # tasks of 10 iterations of 800 steps
        base = ["--preset", "continual-cartpole", "--total-timesteps", str(steps),
                "--shift-every", "8000", "--diagnostics", "none", "--checkpoint-every", "0",
                "--regularizer", args.regularizer]  # fmt: skip
        if args.hidden_sizes:
            base += ["--hidden-sizes", *map(str, args.hidden_sizes)]
        title = (f"continual CartPole (PPO, {'x'.join(map(str, args.hidden_sizes or (256,) * 3))}"
                 f" networks), {args.num_tasks} tasks x 8,000 steps, diagnostics off")  # fmt: skip
    else:
        base = ["--preset", "permuted-mnist-small", "--num-tasks", str(args.num_tasks),
                "--regularizer", args.regularizer, "--checkpoint-every", "0",
                "--update", args.update]  # fmt: skip
        title = (f"permuted MNIST 784-256x3-10, {args.num_tasks} tasks x 4,000 examples, "
                 f"--update {args.update}")  # fmt: skip
    seeds = [str(seed) for seed in args.seeds]
    k = len(seeds)
    launcher, grouped, one = "launcher, a process a cell", "launcher, seeds grouped", "one process"
    times: dict[str, list[float]] = {launcher: [], grouped: [], one: []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            sweep = [sys.executable, "train.py", "sweep", args.learner, *base, "--torch-threads",
                     "1", "--grid", f"seed={','.join(seeds)}", "--workers", str(args.workers)]  # fmt: skip
            times[launcher].append(
                timed([*sweep, "--no-group-seeds", "--sweep-dir", f"{scratch}/cells"])
            )
            times[grouped].append(timed([*sweep, "--sweep-dir", f"{scratch}/grouped"]))
            batched = [sys.executable, "train.py", args.learner, *base, "--torch-threads",
                       str(args.threads), "--seeds", *seeds, "--runs-dir", f"{scratch}/runs"]  # fmt: skip
            times[one].append(timed(batched))
    print(f"{title}, --regularizer {args.regularizer}, {k} seeds, median of {args.rounds} rounds\n")
    print("| way | cores | wall s | cells per hour | ratio | cells per core-hour | ratio |")
    print("|---|---|---|---|---|---|---|")
    cores = {launcher: min(args.workers, k), grouped: min(args.workers, k), one: args.threads}
    reference = None
    for way, walls in times.items():
        wall = sorted(walls)[len(walls) // 2]
        per_hour = k * 3600 / wall
        reference = reference or (per_hour, per_hour / cores[way])
        print(f"| {way} | {cores[way]} | {wall:.1f} | {per_hour:,.0f} | "
              f"{per_hour / reference[0]:.2f}x | {per_hour / cores[way]:,.0f} | "
              f"{per_hour / cores[way] / reference[1]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
