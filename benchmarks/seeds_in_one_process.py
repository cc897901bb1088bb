"""Whole runs: K seeds of the reproduce setting in one process (`train.py supervised --seeds`)
against the same K cells through the local launcher (`train.py sweep ... --workers 2`), in one
run of this script, alternating, as a user would start them.

    python benchmarks/seeds_in_one_process.py                  # 3 seeds, 5 tasks, 2 rounds
    python benchmarks/seeds_in_one_process.py --seeds 1 2 3 4 5 6 --num-tasks 10

The setting is `make reproduce`'s (the paper code's small permuted MNIST: 784-256x3-10, online
SGD, 4,000 examples a task; its diagnostics every 10 tasks, here at the start and the end),
cut to --num-tasks tasks. The launcher runs two cells at a time on the machine's two cores; the
batched process uses one core, so the table gives both wall time and cells per core-hour.
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


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command[1:4])} ... failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main(args: Args) -> None:
    base = ["--preset", "permuted-mnist-small", "--torch-threads", "1", "--num-tasks",
            str(args.num_tasks), "--regularizer", args.regularizer, "--checkpoint-every", "0"]  # fmt: skip
    seeds = [str(seed) for seed in args.seeds]
    times: dict[str, list[float]] = {"launcher": [], "one process": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            sweep = [sys.executable, "train.py", "sweep", "supervised", *base, "--grid",
                     f"seed={','.join(seeds)}", "--workers", str(args.workers),
                     "--sweep-dir", f"{scratch}/sweep"]  # fmt: skip
            times["launcher"].append(timed(sweep))
            batched = [sys.executable, "train.py", "supervised", *base, "--seeds", *seeds,
                       "--runs-dir", f"{scratch}/runs"]  # fmt: skip
            times["one process"].append(timed(batched))
    k = len(seeds)
    print(f"permuted MNIST 784-256x3-10, {args.num_tasks} tasks x 4,000 examples, "
          f"--regularizer {args.regularizer}, {k} seeds, median of {args.rounds} rounds\n")  # fmt: skip
    print("| way | cores | wall s | cells per hour | cells per core-hour | core-hour ratio |")
    print("|---|---|---|---|---|---|")
    cores = {"launcher": min(args.workers, k), "one process": 1}
    reference = None
    for way, walls in times.items():
        wall = sorted(walls)[len(walls) // 2]
        per_core_hour = k * 3600 / wall / cores[way]
        reference = reference or per_core_hour
        print(f"| {way} | {cores[way]} | {wall:.1f} | {k * 3600 / wall:,.0f} | "
              f"{per_core_hour:,.0f} | {per_core_hour / reference:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
